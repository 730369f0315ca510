// The zoo's name -> factory table. Families register from static initializers in libkern, so
// the table is built on first use (function-local static) to be independent of the order in
// which the translation units' statics run.
#include <kern/error.hpp>
#include <kern/models/registry.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>

namespace kern::models {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, ModelFactory> factories;
  std::map<std::string, ModelInfo> infos;
};

Registry& registry() {
  static Registry r;
  return r;
}

// fnmatch-style match with '*' only (timm's list_models filters the same way).
bool wildcard_match(const std::string& pattern, const std::string& s) {
  size_t p = 0, i = 0, star = std::string::npos, mark = 0;
  while (i < s.size()) {
    if (p < pattern.size() && pattern[p] == s[i]) {
      ++p, ++i;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++, mark = i;
    } else if (star != std::string::npos) {
      p = star + 1, i = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

// Edit distance, to suggest the names closest to a misspelt one.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

bool register_model(const std::string& name, ModelFactory factory, ModelInfo info) {
  KERN_CHECK(!name.empty() && factory, "register_model: empty name or factory");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  KERN_CHECK(r.factories.emplace(name, std::move(factory)).second, "register_model: '", name,
             "' is already registered");
  r.infos.emplace(name, info);
  return true;
}

int64_t scale_width(int64_t c, double width_mult) {
  KERN_CHECK(std::isfinite(width_mult) && width_mult > 0, "ModelOptions.width_mult must be a ",
             "finite number > 0, got ", width_mult);
  return std::max<int64_t>(1, std::llround(static_cast<double>(c) * width_mult));
}

bool has_model(const std::string& name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.factories.count(name) > 0;
}

std::vector<std::string> list_models(const std::string& pattern) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> out;
  for (const auto& [name, f] : r.factories)
    if (wildcard_match(pattern, name)) out.push_back(name);
  return out;  // std::map iterates sorted
}

ModelInfo model_info(const std::string& name) {
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.infos.find(name);
    if (it != r.infos.end()) return it->second;
  }
  create_model(name);  // throws with the closest names
  return {};
}

std::shared_ptr<nn::Module> create_model_at_width(const std::string& name, int64_t width,
                                                  ModelOptions options) {
  const ModelInfo info = model_info(name);
  KERN_CHECK(info.width > 0, "create_model_at_width: model '", name,
             "' has no width knob (it registered no width)");
  KERN_CHECK(width > 0, "create_model_at_width(", name, "): width must be > 0, got ", width);
  options.width_mult = static_cast<double>(width) / static_cast<double>(info.width);
  return create_model(name, options);
}

std::shared_ptr<nn::Module> create_model(const std::string& name, const ModelOptions& options) {
  ModelFactory factory;
  std::vector<std::pair<size_t, std::string>> nearest;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.factories.find(name);
    if (it != r.factories.end()) factory = it->second;
    else
      for (const auto& [n, f] : r.factories) nearest.emplace_back(edit_distance(name, n), n);
  }
  if (!factory) {
    std::sort(nearest.begin(), nearest.end());
    std::string hint;
    for (size_t k = 0; k < std::min<size_t>(3, nearest.size()); ++k)
      hint += (k ? ", " : "") + nearest[k].second;
    KERN_CHECK(false, "create_model: unknown model '", name, "'",
               hint.empty() ? std::string(" (no models are registered)") : "; closest: " + hint);
  }
  KERN_CHECK(options.num_classes >= 0, "create_model(", name, "): num_classes must be >= 0, got ",
             options.num_classes);
  KERN_CHECK(options.in_chans >= 1, "create_model(", name, "): in_chans must be >= 1, got ",
             options.in_chans);
  KERN_CHECK(options.drop_rate >= 0 && options.drop_rate < 1, "create_model(", name,
             "): drop_rate must be in [0, 1), got ", options.drop_rate);
  KERN_CHECK(options.drop_path_rate >= 0 && options.drop_path_rate < 1, "create_model(", name,
             "): drop_path_rate must be in [0, 1), got ", options.drop_path_rate);
  return factory(options);
}

}  // namespace kern::models
