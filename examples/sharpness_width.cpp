// Sharpness across widths under muP and NTK parameterization (Noci et al. 2024, "Why do
// learning rates transfer?"): with muP the sharpness trajectory is roughly the same at every
// width ("super consistency"), so the stable learning rate transfers; with the NTK
// parameterization it is not (training gets lazier as the width grows and sharpening fades).
//
// Setup: the first N Fashion-MNIST training images (default 512, inputs standardized), tanh
// MLP 784-w-w-10 at several widths, one-hot targets, loss 0.5 * mean_n sum_o (f - y)^2,
// full-batch gradient descent through optim::SGD with the parameterization's per-layer lr
// multipliers (kern::param + optim::param_groups). The sharpness recorded is the
// preconditioned one, lambda_max(D^1/2 H D^1/2) with D the lr multipliers, i.e. the quantity
// gradient descent compares with 2/lr. The lr of each parameterization is calibrated once at
// the base width: lr = 2 / (--edge-factor * initial sharpness), the same lr at every width.
//
//   sharpness_width [--widths 64,128,256,512,1024] [--base-width 128] [--steps 1000]   (~9 min, 1 thread)
//                   [--out run/sharpness_width]
//   -> run/sharpness_width/{mup,ntk}/w<width>.jsonl, sharpness_width.png (the experiment's
//      figure: muP and NTK side by side), {mup,ntk}/sharpness.png (+ loss, NTK change), summary.json; the last lines compare the spread of sharpness across widths.
#include <CLI/CLI.hpp>
#include "dynamics_common.hpp"
#include <kern/kern.hpp>
#include <kern/tools/coord_check.hpp>
#include <kern/optim/optim.hpp>
#include <kern/optim/param_groups.hpp>
#include <kern/param/param.hpp>
#include <kern/tools/hessian.hpp>
#include <kern/tools/tracker.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

namespace nn = kern::nn;
namespace param = kern::param;
namespace optim = kern::optim;
namespace tools = kern::tools;
namespace fs = std::filesystem;
using kern::Tensor;

namespace {

// What the sharpness axis shows: the lr multipliers rescale H (a shell-quoted argument).
const std::string kSharpnessLabel = "'preconditioned sharpness $\\lambda_{max}(D^{1/2} H D^{1/2})$'";

struct Config {
  std::vector<int64_t> widths = {64, 128, 256, 512, 1024};
  int64_t base_width = 128;
  int64_t steps = 1000;
  int64_t every = 50;
  int64_t samples = 512;
  int64_t ntk_probe = 64;
  int64_t lanczos_iters = 20;
  double edge_factor = 1.5;
  std::string out = "run/sharpness_width";
  std::string data_dir;
  uint64_t seed = 0;
  int threads = 2;
};

// A model of `width` in parameterization `name` (seeded: the same draw for the same width).
struct Built {
  std::shared_ptr<nn::Sequential> model;
  std::vector<optim::ParamGroup> groups;
  Tensor lr_scale;  // [P] lr multipliers
};
Built build(const std::string& name, int64_t width, const Config& cfg, double lr) {
  kern::manual_seed(cfg.seed + static_cast<uint64_t>(width));
  Built b;
  b.model = examples::tanh_mlp(width);
  param::apply(*b.model, examples::width_preset(name, width, cfg.base_width));
  b.groups = optim::param_groups(*b.model, {.family = optim::Family::SGD});
  b.lr_scale = tools::lr_multipliers(b.model->parameters(), b.groups);
  return b;
}

double initial_sharpness(const std::string& name, const Config& cfg, const kern::data::Batch& data) {
  Built b = build(name, cfg.base_width, cfg, 1.0);
  return examples::preconditioned_sharpness(*b.model, b.groups, data);
}

using examples::record_field;

struct Run {
  std::string param;
  int64_t width = 0;
  double lr = 0;
  std::vector<std::pair<int64_t, double>> sharpness;  // (step, preconditioned sharpness)
  double final_loss = NAN, ntk_change = NAN;
};

Run train(const std::string& name, int64_t width, double lr, const Config& cfg, const kern::data::Batch& data) {
  Built b = build(name, width, cfg, lr);
  optim::SGD opt(b.groups, {.lr = lr});
  const fs::path dir = fs::path(cfg.out) / name;
  tools::Tracker tracker((dir / fmt::format("w{}.jsonl", width)).string(),
                         {.every = cfg.every, .lr = lr, .label = fmt::format("{} w={}", name, width)});
  tracker.track(tools::norm_metrics(*b.model));
  tracker.track(tools::sharpness(*b.model, data, tools::half_mean_squared_error,
                                 {.iters = cfg.lanczos_iters, .tol = 1e-4, .lr_scale = b.lr_scale}));
  kern::data::Batch probe{data.x.narrow(0, 0, cfg.ntk_probe), data.y.narrow(0, 0, cfg.ntk_probe)};
  tracker.track(tools::ntk_metrics(*b.model, probe, {.eigenvalues = 10}), 2 * cfg.every);

  Run r{name, width, lr, {}, NAN, NAN};
  for (int64_t step = 0; step <= cfg.steps; ++step) {
    Tensor loss = tools::half_mean_squared_error((*b.model)(data.x), data.y);
    if (!std::isfinite(loss.item())) break;
    opt.zero_grad();
    loss.backward();
    if (tracker.step(loss)) {
      r.sharpness.emplace_back(step, record_field(tracker.last_line(), "sharpness"));
      const double c = record_field(tracker.last_line(), "ntk_rel_change");
      if (std::isfinite(c)) r.ntk_change = c;
      r.final_loss = loss.item();
    }
    if (step == cfg.steps) break;
    opt.step();
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Sharpness across widths under muP and NTK parameterization"};
  Config cfg;
  app.add_option("--widths", cfg.widths, "hidden widths")->delimiter(',');
  app.add_option("--base-width", cfg.base_width, "muP base width; lrs are calibrated at this width");
  app.add_option("--steps", cfg.steps, "gradient descent steps")->check(CLI::PositiveNumber);
  app.add_option("--every", cfg.every, "record every k steps (NTK metrics every 2k)")->check(CLI::PositiveNumber);
  app.add_option("--samples", cfg.samples, "first N training images")->check(CLI::Range(16, 60000));
  app.add_option("--lanczos-iters", cfg.lanczos_iters, "Hessian-vector products per sharpness measurement");
  app.add_option("--edge-factor", cfg.edge_factor, "lr = 2 / (factor * initial sharpness at the base width)");
  app.add_option("--out", cfg.out, "output directory");
  app.add_option("--data", cfg.data_dir, "Fashion-MNIST directory (default: Debian's)");
  app.add_option("--seed", cfg.seed, "seed");
  app.add_option("--threads", cfg.threads, "threads");
  CLI11_PARSE(app, argc, argv);

  try {
    kern::set_num_threads(cfg.threads);
    cfg.ntk_probe = std::min(cfg.ntk_probe, cfg.samples);
    auto train_set = kern::data::FashionMNIST::train(cfg.data_dir);
    auto b = train_set.batch(0, cfg.samples);
    Tensor x = b.x.reshape({cfg.samples, 784}).contiguous();
    {
      kern::NoGradGuard ng;
      x = (x - kern::mean(x)) / kern::std(x, {}, 0);
    }
    kern::data::Batch data{x, b.y.contiguous()};

    std::vector<Run> runs;
    std::vector<std::string> all_files;  // both parameterizations: one figure, one column each
    std::map<std::string, double> lrs;
    const auto t0 = std::chrono::steady_clock::now();
    for (std::string name : {"mup", "ntk"}) {
      fs::create_directories(fs::path(cfg.out) / name);
      const double s0 = initial_sharpness(name, cfg, data);
      const double lr = 2.0 / (cfg.edge_factor * s0);
      lrs[name] = lr;
      fmt::print("{}: initial (preconditioned) sharpness at width {} = {:.4g} -> lr = {:.4g} (2/lr = {:.4g})\n", name,
                 cfg.base_width, s0, lr, 2.0 / lr);
      std::fflush(stdout);
      std::vector<std::string> files;
      for (int64_t w : cfg.widths) {
        runs.push_back(train(name, w, lr, cfg, data));
        const auto& r = runs.back();
        fmt::print("  {} width {:>5}: sharpness {:.4g} -> {:.4g} (x lr/2: {:.3f} -> {:.3f}), final loss {:.4f}, NTK "
                   "change {:.3f}  ({:.0f} s)\n",
                   name, w, r.sharpness.front().second, r.sharpness.back().second, r.sharpness.front().second * lr / 2,
                   r.sharpness.back().second * lr / 2, r.final_loss, r.ntk_change,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        std::fflush(stdout);
        files.push_back((fs::path(cfg.out) / name / fmt::format("w{}.jsonl", w)).string());
      }
      const std::string script = (fs::path(tools::default_plot_script()).parent_path() / "plot_dynamics.py").string();
      std::string cmd = "/usr/bin/python3 " + script;
      for (auto& f : files) cmd += " " + f;
      cmd += " -o " + (fs::path(cfg.out) / name).string() + " --sharpness-label " + kSharpnessLabel + " > /dev/null";
      if (!fs::exists(script) || std::system(cmd.c_str()) != 0) fmt::print("plotting failed: {}\n", cmd);
      all_files.insert(all_files.end(), files.begin(), files.end());
    }
    {
      // The experiment's figure: muP and NTK side by side, shared y-axes.
      const std::string script = (fs::path(tools::default_plot_script()).parent_path() / "plot_dynamics.py").string();
      const std::string png = (fs::path(cfg.out) / "sharpness_width.png").string();
      std::string cmd = "/usr/bin/python3 " + script;
      for (auto& f : all_files) cmd += " " + f;
      cmd += " --figure " + png +
             " --sharpness-label " + kSharpnessLabel +
             " --title 'Tanh MLP on Fashion-MNIST, full-batch GD: sharpness across widths' > /dev/null";
      if (!fs::exists(script) || std::system(cmd.c_str()) != 0) fmt::print("plotting failed: {}\n", cmd);
      else fmt::print("wrote {}\n", png);
    }

    // Spread across widths of sharpness * lr / 2, averaged over the second half of training.
    std::ofstream summary(fs::path(cfg.out) / "summary.json");
    summary << "[\n";
    std::map<std::string, std::vector<double>> late;
    for (size_t i = 0; i < runs.size(); ++i) {
      const auto& r = runs[i];
      double sum = 0;
      int n = 0;
      for (auto& [step, s] : r.sharpness)
        if (step >= cfg.steps / 2 && std::isfinite(s)) sum += s * r.lr / 2, ++n;
      const double m = n ? sum / n : NAN;
      late[r.param].push_back(m);
      summary << fmt::format("  {{\"param\": \"{}\", \"width\": {}, \"lr\": {}, \"late_sharpness_x_lr_over_2\": {}, "
                             "\"ntk_rel_change\": {}, \"final_loss\": {}}}{}\n",
                             r.param, r.width, r.lr, std::isfinite(m) ? fmt::format("{}", m) : "null",
                             std::isfinite(r.ntk_change) ? fmt::format("{}", r.ntk_change) : "null",
                             std::isfinite(r.final_loss) ? fmt::format("{}", r.final_loss) : "null",
                             i + 1 < runs.size() ? "," : "");
    }
    summary << "]\n";
    for (auto& [name, v] : late) {
      const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
      fmt::print("{}: second-half sharpness * lr/2 across widths {}: [{}] -> max/min = {:.2f}\n", name,
                 fmt::join(cfg.widths, ","), fmt::join(v, ", "), *hi / *lo);
    }
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "sharpness_width: {}\n", e.what());
    return 1;
  }
}
