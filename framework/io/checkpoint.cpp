// Checkpoint files on top of safetensors (see kern/io/checkpoint.hpp).
#include <kern/io/checkpoint.hpp>

#include <kern/autograd.hpp>
#include <kern/generator.hpp>

#include <algorithm>
#include <charconv>
#include <set>
#include <unordered_map>

namespace kern::io {

namespace {
constexpr const char* kFormat = "kern-checkpoint-1";
constexpr const char* kModel = "model.";
constexpr const char* kOptim = "optim.";

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// The records a file's metadata carries (nullopt: none); errors name the file and the field.
std::optional<param::Records> records_in(const std::map<std::string, std::string>& metadata, const std::string& path) {
  auto it = metadata.find(param::kMetadataKey);
  if (it == metadata.end()) return std::nullopt;
  return param::from_json(it->second, path + ": " + param::kMetadataKey);
}
}  // namespace

void write_checkpoint(const std::string& path, const Checkpoint& ck) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, t] : ck.model) tensors.emplace_back(kModel + name, t.detach());
  for (auto& [name, t] : ck.optimizer) tensors.emplace_back(kOptim + name, t.detach());
  std::map<std::string, std::string> meta;
  for (auto& [k, v] : ck.metadata) {
    KERN_CHECK(!starts_with(k, "kern."), "save_checkpoint: metadata key '", k, "' uses the reserved prefix 'kern.'");
    meta[k] = v;
  }
  meta["kern.format"] = kFormat;
  meta["kern.step"] = std::to_string(ck.step);
  if (!ck.rng_state.empty()) meta["kern.rng_state"] = ck.rng_state;
  if (ck.records) meta[param::kMetadataKey] = param::to_json(*ck.records);
  save_safetensors(path, tensors, meta);
}

Checkpoint read_checkpoint(const std::string& path) {
  SafetensorsFile f = load_safetensors(path);
  auto it = f.metadata.find("kern.format");
  KERN_CHECK(it != f.metadata.end(), "load_checkpoint: ", path,
             " is not a kern checkpoint (no kern.format in its metadata); for a plain state_dict use "
             "io::load_safetensors");
  KERN_CHECK(it->second == kFormat, "load_checkpoint: ", path, " has format '", it->second, "', expected '", kFormat,
             "'");
  Checkpoint ck;
  for (auto& [name, t] : f.tensors) {
    if (starts_with(name, kModel)) ck.model.emplace_back(name.substr(6), t);
    else if (starts_with(name, kOptim)) ck.optimizer.emplace_back(name.substr(6), t);
    else throw Error("load_checkpoint: " + path + ": unexpected tensor '" + name + "' (expected model.* or optim.*)");
  }
  auto step = f.metadata.find("kern.step");
  KERN_CHECK(step != f.metadata.end(), "load_checkpoint: ", path, ": missing kern.step");
  const std::string& text = step->second;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), ck.step);
  KERN_CHECK(ec == std::errc() && end == text.data() + text.size(), "load_checkpoint: ", path,
             ": kern.step '", text.substr(0, 40), "' is not an integer");
  KERN_CHECK(ck.step >= 0, "load_checkpoint: ", path, ": kern.step ", ck.step,
             " is negative (a step count starts at 0)");
  if (auto r = f.metadata.find("kern.rng_state"); r != f.metadata.end()) {
    ck.rng_state = r->second;
    try {
      checkpoint_detail::checkpoint_generator(ck);
    } catch (const Error& e) {
      throw Error(::kern::detail::concat("load_checkpoint: ", path, ": kern.rng_state: ", e.what()));
    }
  }
  ck.records = records_in(f.metadata, path);
  for (auto& [k, v] : f.metadata)
    if (!starts_with(k, "kern.")) ck.metadata[k] = v;
  return ck;
}

void check_records(const std::string& path, const std::optional<param::Records>& stored, const nn::Module& model,
                   RecordsPolicy policy) {
  if (policy == RecordsPolicy::Ignore) return;
  if (policy == RecordsPolicy::Apply) {
    std::set<std::string> names;
    for (const auto& [n, p] : model.named_parameters()) names.insert(n);
    if (stored)
      for (const auto& [n, r] : *stored)
        KERN_CHECK(names.count(n), "load: ", path, ": ", param::kMetadataKey, " has a record for '", n, "', which ",
                   model.name(), " does not have as a parameter");
    return;
  }
  const std::vector<std::string> diff = param::compare_behaviour(stored.value_or(param::Records{}), param::records(model));
  if (diff.empty()) return;
  std::string msg = ::kern::detail::concat(
      "load: ", path, ": the file's parameterization records (", param::kMetadataKey, ") differ from the model's in ",
      diff.size(), " parameter", diff.size() == 1 ? "" : "s",
      ": loading would change what the model computes or how it trains. Apply the same "
      "parameterization to the model first (param::apply), or load with RecordsPolicy::Apply to take the "
      "file's records (RecordsPolicy::Ignore to load the values only). Differences:");
  const size_t shown = std::min<size_t>(diff.size(), 8);
  for (size_t i = 0; i < shown; ++i) msg += "\n  " + diff[i];
  if (shown < diff.size()) msg += ::kern::detail::concat("\n  ... and ", diff.size() - shown, " more");
  throw Error(msg);
}

void commit_records(const std::optional<param::Records>& stored, nn::Module& model, RecordsPolicy policy) {
  if (policy != RecordsPolicy::Apply) return;
  if (stored) param::set_records(model, *stored);
  else param::clear(model);
}

void save_state_dict(const std::string& path, const nn::Module& model, const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, t] : model.state_dict()) tensors.emplace_back(name, t.detach());
  std::map<std::string, std::string> meta;
  for (auto& [k, v] : metadata) {
    KERN_CHECK(!starts_with(k, "kern."), "save_state_dict: metadata key '", k, "' uses the reserved prefix 'kern.'");
    meta[k] = v;
  }
  const param::Records recs = param::records(model);
  if (!recs.empty()) meta[param::kMetadataKey] = param::to_json(recs);
  save_safetensors(path, tensors, meta);
}

void load_state_dict(const std::string& path, nn::Module& model, RecordsPolicy policy) {
  try {
    SafetensorsFile f = load_safetensors(path);
    const std::optional<param::Records> stored = records_in(f.metadata, path);
    check_records(path, stored, model, policy);
    NamedTensors given(f.tensors.begin(), f.tensors.end());
    const NamedTensors state = checkpoint_detail::convert_to_targets(given, model.state_dict(), path);
    model.load_state_dict(state, true);  // validates every key and shape before it copies
    commit_records(stored, model, policy);
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find(path) != std::string::npos) throw;
    throw Error("load_state_dict: " + path + ": " + what);
  }
}

namespace checkpoint_detail {

NamedTensors convert_to_targets(const NamedTensors& given, const NamedTensors& targets,
                                const std::string& path) {
  std::unordered_map<std::string, DType> dtypes;
  for (const auto& [name, t] : targets)
    if (t.defined()) dtypes.emplace(name, t.dtype());
  NoGradGuard no_grad;
  NamedTensors out;
  out.reserve(given.size());
  for (const auto& [name, t] : given) {
    auto it = dtypes.find(name);
    if (it == dtypes.end() || !t.defined() || t.dtype() == it->second) {
      out.emplace_back(name, t);  // unknown keys and shapes are the model's to report
      continue;
    }
    try {
      out.emplace_back(name, t.to(it->second));
    } catch (const Error& e) {
      throw Error(::kern::detail::concat("load_checkpoint: ", path, ": tensor 'model.", name, "': ", e.what()));
    }
  }
  return out;
}

std::optional<Generator> checkpoint_generator(const Checkpoint& ck) {
  if (ck.rng_state.empty()) return std::nullopt;
  Generator g;
  g.set_state(ck.rng_state);
  return g;
}

}  // namespace checkpoint_detail

void capture_rng(Checkpoint& ck) { ck.rng_state = default_generator().state(); }

void restore_rng(const Checkpoint& ck) {
  if (auto g = checkpoint_detail::checkpoint_generator(ck)) default_generator() = *g;
}

}  // namespace kern::io
