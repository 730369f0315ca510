// Coordinate check: mean |x| of every module's output over widths and the first steps.
#include <kern/kern.hpp>
#include <kern/optim/adam.hpp>
#include <kern/optim/param_groups.hpp>
#include <kern/optim/sgd.hpp>
#include <kern/param/param.hpp>
#include <kern/tools/coord_check.hpp>

#include <dlfcn.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

namespace kern::tools {

namespace {

// Least-squares slope of ys against xs.
double ls_slope(const std::vector<double>& xs, const std::vector<double>& ys) {
  const double n = static_cast<double>(xs.size());
  double mx = 0, my = 0;
  for (size_t i = 0; i < xs.size(); ++i) mx += xs[i] / n, my += ys[i] / n;
  double sxy = 0, sxx = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) * (xs[i] - mx);
  }
  return sxx > 0 ? sxy / sxx : 0.0;
}

std::string display(const std::string& module) { return module.empty() ? "(model)" : module; }

}  // namespace

CoordCheckResult coord_check(const CoordCheckOptions& o) {
  KERN_CHECK(o.widths.size() >= 2, "coord_check: needs at least 2 widths, got ", o.widths.size());
  KERN_CHECK(std::is_sorted(o.widths.begin(), o.widths.end()) &&
                 std::adjacent_find(o.widths.begin(), o.widths.end()) == o.widths.end(),
             "coord_check: widths must be strictly increasing");
  KERN_CHECK(o.steps >= 1 && o.nseeds >= 1, "coord_check: steps (", o.steps, ") and nseeds (",
             o.nseeds, ") must be >= 1");
  KERN_CHECK(static_cast<bool>(o.make_model) && static_cast<bool>(o.make_optimizer),
             "coord_check: make_model and make_optimizer are required");
  KERN_CHECK(o.x.defined() && o.y.defined(), "coord_check: the fixed batch (x, y) is required");
  auto loss_fn = o.loss ? o.loss : [](const Tensor& out, const Tensor& y) {
    return cross_entropy(out, y);
  };
  auto keep = o.filter ? o.filter : [](const std::string& name) { return !name.empty(); };

  // (module, width, t) -> sum of l1 over seeds; module order from the first model.
  std::vector<std::string> order;
  std::map<std::string, std::string> types;
  std::map<std::tuple<std::string, int64_t, int>, double> sums;
  for (int s = 0; s < o.nseeds; ++s) {
    for (int64_t width : o.widths) {
      manual_seed(o.seed + static_cast<uint64_t>(s));
      std::shared_ptr<nn::Module> model = o.make_model(width);
      KERN_CHECK(model != nullptr, "coord_check: make_model(", width, ") returned null");
      model->train();
      std::unique_ptr<optim::Optimizer> opt = o.make_optimizer(*model);
      for (int t = 1; t <= o.steps; ++t) {
        std::vector<std::pair<std::shared_ptr<nn::Module>, nn::HookId>> hooks;
        for (auto& [name, m] : model->named_modules()) {
          if (!keep(name)) continue;
          if (!types.count(name)) {
            order.push_back(name);
            types[name] = m->name();
          }
          const std::string key = name;
          hooks.emplace_back(m, m->register_forward_hook([&sums, key, width, t](
                                                             nn::Module&, const Tensor&,
                                                             const Tensor& out) {
            NoGradGuard ng;
            sums[{key, width, t}] += mean(abs(out.detach())).item<double>();
          }));
        }
        Tensor loss = loss_fn((*model)(o.x), o.y);
        for (auto& [m, id] : hooks) m->remove_hook(id);
        opt->zero_grad();
        loss.backward();
        opt->step();
      }
    }
  }

  CoordCheckResult r;
  r.widths = o.widths;
  r.steps = o.steps;
  for (auto& name : order)
    for (int t = 1; t <= o.steps; ++t)
      for (int64_t w : o.widths) {
        auto it = sums.find({name, w, t});
        if (it == sums.end()) continue;  // module not called at this width
        r.stats.push_back({w, name, types[name], t, it->second / o.nseeds});
      }
  for (auto& name : order) {
    for (int t = 1; t <= o.steps; ++t) {
      std::vector<double> lx, ly, raw;
      for (int64_t w : o.widths) {
        auto it = sums.find({name, w, t});
        if (it == sums.end()) continue;
        raw.push_back(it->second / o.nseeds);
        lx.push_back(std::log(static_cast<double>(w)));
      }
      if (raw.size() < 2) continue;
      LayerVerdict v;
      v.module = name;
      v.type = types[name];
      v.t = t;
      v.zero = std::all_of(raw.begin(), raw.end(), [](double a) { return a == 0.0; });
      if (v.zero) {
        v.slope = 0.0;
        v.ratio = 1.0;
        v.pass = true;
      } else {
        for (double a : raw) ly.push_back(std::log(std::max(a, 1e-300)));
        v.slope = ls_slope(lx, ly);
        const double a = raw[raw.size() - 2], b = raw.back();
        v.ratio = a > 0 ? b / a : HUGE_VAL;
        v.pass = std::abs(v.slope) < o.max_slope && v.ratio > 1.0 / o.max_ratio &&
                 v.ratio < o.max_ratio;
      }
      r.verdicts.push_back(v);
    }
  }
  return r;
}

const LayerVerdict& CoordCheckResult::verdict(const std::string& module, int t) const {
  for (auto& v : verdicts)
    if (v.module == module && v.t == t) return v;
  KERN_CHECK(false, "coord_check: no verdict for module '", module, "' at t = ", t);
  return verdicts.front();
}

double CoordCheckResult::l1(const std::string& module, int64_t width, int t) const {
  for (auto& s : stats)
    if (s.module == module && s.width == width && s.t == t) return s.l1;
  KERN_CHECK(false, "coord_check: no record for module '", module, "' at width ", width,
             ", t = ", t);
  return 0.0;
}

std::vector<std::string> CoordCheckResult::modules() const {
  std::vector<std::string> out;
  for (auto& v : verdicts)
    if (std::find(out.begin(), out.end(), v.module) == out.end()) out.push_back(v.module);
  return out;
}

bool CoordCheckResult::pass() const {
  return std::all_of(verdicts.begin(), verdicts.end(), [](const LayerVerdict& v) { return v.pass; });
}

std::string CoordCheckResult::table() const {
  size_t w = 8;
  for (auto& v : verdicts) w = std::max(w, display(v.module).size() + v.type.size() + 3);
  std::string out = fmt::format("{:<{}} {:>2}", "module", w, "t");
  for (int64_t width : widths) out += fmt::format(" {:>10}", width);
  out += fmt::format(" {:>8} {:>7}  verdict\n", "slope", "ratio");
  for (auto& v : verdicts) {
    out += fmt::format("{:<{}} {:>2}", display(v.module) + " (" + v.type + ")", w, v.t);
    for (int64_t width : widths) {
      double val = NAN;
      for (auto& s : stats)
        if (s.module == v.module && s.t == v.t && s.width == width) val = s.l1;
      out += fmt::format(" {:>10.4g}", val);
    }
    out += fmt::format(" {:>8.3f} {:>7.3f}  {}\n", v.slope, v.ratio,
                       v.zero ? "ok (zero)" : v.pass ? "ok" : "FAIL");
  }
  return out;
}

void CoordCheckResult::write_jsonl(const std::string& path, const std::string& label,
                                   bool append) const {
  std::ofstream f(path, append ? std::ios::app : std::ios::trunc);
  KERN_CHECK(f.good(), "coord_check: cannot open '", path, "' for writing");
  using Json = nlohmann::ordered_json;
  for (auto& s : stats)
    f << Json{{"kind", "coord"}, {"label", label}, {"width", s.width}, {"module", display(s.module)},
              {"type", s.type}, {"t", s.t}, {"l1", s.l1}}.dump()
      << "\n";
  for (auto& v : verdicts)
    f << Json{{"kind", "verdict"}, {"label", label}, {"module", display(v.module)}, {"type", v.type},
              {"t", v.t}, {"slope", v.slope}, {"ratio", std::isfinite(v.ratio) ? v.ratio : -1.0},
              {"zero", v.zero}, {"pass", v.pass}}.dump()
      << "\n";
  KERN_CHECK(f.good(), "coord_check: writing '", path, "' failed");
}

std::function<std::shared_ptr<nn::Module>(int64_t)> parameterized(
    std::function<std::shared_ptr<nn::Module>(int64_t)> build, const std::string& scheme,
    int64_t base_width, bool zero_readout) {
  KERN_CHECK(static_cast<bool>(build), "coord_check: parameterized: empty model factory");
  KERN_CHECK(scheme == "mup" || scheme == "mup_table3" || scheme == "sp" || scheme == "ntk",
             "coord_check: unknown parameterization '", scheme,
             "'; expected mup, mup_table3, sp or ntk");
  KERN_CHECK(base_width > 0, "coord_check: base width must be > 0, got ", base_width);
  return [build, scheme, base_width, zero_readout](int64_t width) {
    std::shared_ptr<nn::Module> model = build(width);
    KERN_CHECK(model != nullptr, "coord_check: the model factory returned null for width ", width);
    param::Preset preset = param::Preset::standard();
    if (scheme == "ntk") {
      preset = param::Preset::ntk();
    } else if (scheme == "mup" || scheme == "mup_table3") {
      // The base model is built with its own random stream, so the model's init does not
      // depend on whether a base model was built first.
      // A delta model at twice the base width tells which dims grow (mup's delta), so the
      // base width itself gets the same roles.
      const std::string rng = default_generator().state();
      std::shared_ptr<nn::Module> base = build(base_width);
      std::shared_ptr<nn::Module> delta = build(2 * base_width);
      default_generator().set_state(rng);
      preset = scheme == "mup" ? param::Preset::mup(*base, *delta) : param::Preset::mup_table3(*base, *delta);
    }
    if (zero_readout) preset.zero_readout();
    param::apply(*model, preset);
    return model;
  };
}

bool blocks_and_output(const std::string& module) {
  const size_t dot = module.rfind('.');
  if (dot == std::string::npos) return true;  // the model itself and its top-level children
  const std::string last = module.substr(dot + 1);
  return std::all_of(last.begin(), last.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
}

std::function<std::unique_ptr<optim::Optimizer>(nn::Module&)> adam_with_records(double lr) {
  return [lr](nn::Module& m) -> std::unique_ptr<optim::Optimizer> {
    return std::make_unique<optim::Adam>(
        optim::param_groups(m, {.family = optim::Family::Adam}),
        optim::AdamOptions{.lr = lr});
  };
}

std::function<std::unique_ptr<optim::Optimizer>(nn::Module&)> sgd_with_records(double lr) {
  return [lr](nn::Module& m) -> std::unique_ptr<optim::Optimizer> {
    return std::make_unique<optim::SGD>(
        optim::param_groups(m, {.family = optim::Family::SGD}),
        optim::SGDOptions{.lr = lr});
  };
}

std::string default_plot_script() {
  // 1. $KERN_SCRIPT_DIR; 2. installed: share/kern/ relative to this library
  // (<prefix>/lib/libkern_tools.so -> <prefix>/share/kern/); 3. the build tree: the source
  // tree's tools/, an absolute path from CMake (__FILE__ can be relative, e.g. under ccache
  // with base_dir or Ninja compiling ../tools/coord_check.cpp).
  const std::string name = "plot_coord_check.py";
  if (const char* dir = std::getenv("KERN_SCRIPT_DIR"); dir && *dir) return (std::filesystem::path(dir) / name).string();
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&default_plot_script), &info) != 0 && info.dli_fname) {
    const auto installed = std::filesystem::path(info.dli_fname).parent_path() / KERN_LIB_TO_SCRIPTS / name;
    std::error_code ec;
    if (std::filesystem::exists(installed, ec)) return installed.lexically_normal().string();
  }
  return (std::filesystem::path(KERN_TOOLS_SOURCE_DIR) / name).string();
}

namespace {
std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}
}  // namespace

bool plot_coord_check(const std::string& jsonl, const std::string& png, const std::string& title,
                      const std::string& script) {
  const std::string s = script.empty() ? default_plot_script() : script;
  if (!std::filesystem::exists(s)) {
    fmt::print(stderr, "plot_coord_check: script {} not found; JSON lines are in {}\n", s, jsonl);
    return false;
  }
  std::string cmd = "/usr/bin/python3 " + shell_quote(s) + " " + shell_quote(jsonl) + " -o " +
                    shell_quote(png);
  if (!title.empty()) cmd += " --title " + shell_quote(title);
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    fmt::print(stderr, "plot_coord_check: '{}' failed ({}); JSON lines are in {}\n", cmd, rc, jsonl);
    return false;
  }
  return true;
}

}  // namespace kern::tools
