// Sharpness across depths with and without depth-muP (Noci et al. 2024, "Super consistency of
// neural network landscapes and learning rate transfer").
//
// Claim: when residual branches are scaled by 1/sqrt(L) (depth-muP, Bordelon et al. / Yang et
// al. TP6), the sharpness of the loss landscape along the training trajectory is the same at
// every depth L ("super consistency"), which is why the learning rate transfers across depth;
// without the depth scaling it is not: deeper stacks are sharper and the curves separate.
//
// Setup: a residual tanh MLP, input Linear(784, w), L blocks h <- h + m * fc2(tanh(fc1(h)))
// (fc1, fc2: Linear(w, w)), readout Linear(w, 10), width w = 128 (muP with base width w), on
// the first N Fashion-MNIST training images (inputs standardized), one-hot targets, loss
// 0.5 * mean_n sum_o (f - y)^2, full-batch gradient descent through optim::SGD with the
// records' lr multipliers. depth-muP: m = sqrt(base_depth / L) on every fc2 (the layer that
// ends a branch; kern::param::Preset::depth_mup); none: m = 1. The lr is calibrated once, at
// the base depth, as 2 / (--edge-factor * initial sharpness) and used at every depth. The
// sharpness recorded every k steps is lambda_max(D^1/2 H D^1/2) (D: the lr multipliers),
// reported as sharpness * lr / 2 (1 = the edge of stability).
//
// Verdict: over the second half of training, the mean of sharpness * lr / 2 per depth spans at
// most 1.2x across depths under depth-muP, and more without depth scaling.
//
//   sharpness_depth [--depths 2,4,8,16] [--width 128] [--steps 600] [--every 30]
//                   [--samples 512] [--out run/sharpness_depth]
//   -> <out>/{depth_mup,none}/L<depth>.jsonl, <out>/sharpness_depth.png, summary lines.
#include <CLI/CLI.hpp>
#include "dynamics_common.hpp"
#include <kern/kern.hpp>
#include <kern/optim/optim.hpp>
#include <kern/optim/param_groups.hpp>
#include <kern/param/param.hpp>
#include <kern/tools/coord_check.hpp>
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

/// One residual block: x + fc2(tanh(fc1(x))).   x: [N, w] -> [N, w]
struct ResBlock : nn::Module {
  explicit ResBlock(int64_t w) {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(w, w));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(w, w));
  }
  Tensor forward(const Tensor& x) override { return x + (*fc2)(kern::tanh((*fc1)(x))); }
  std::string name() const override { return "ResBlock"; }
  std::shared_ptr<nn::Linear> fc1, fc2;
};

/// input -> tanh -> L blocks -> readout.   x: [N, 784] -> [N, 10]
struct ResMLP : nn::Module {
  ResMLP(int64_t w, int64_t depth) {
    input = register_module("input", std::make_shared<nn::Linear>(784, w));
    blocks = register_module("blocks", std::make_shared<nn::Sequential>());
    for (int64_t l = 0; l < depth; ++l) blocks->push_back(std::make_shared<ResBlock>(w));
    readout = register_module("readout", std::make_shared<nn::Linear>(w, 10));
  }
  Tensor forward(const Tensor& x) override { return (*readout)((*blocks)(kern::tanh((*input)(x)))); }
  std::string name() const override { return "ResMLP"; }
  std::shared_ptr<nn::Linear> input, readout;
  std::shared_ptr<nn::Sequential> blocks;
};

struct Config {
  std::vector<int64_t> depths = {2, 4, 8, 16};
  int64_t base_depth = 0;  // 0: the smallest depth
  int64_t width = 128;
  int64_t steps = 600;
  int64_t every = 30;
  int64_t samples = 512;
  int64_t lanczos_iters = 20;
  double edge_factor = 3.0;
  std::string out = "run/sharpness_depth";
  std::string data_dir;
  uint64_t seed = 0;
  int threads = 2;
};

struct Built {
  std::shared_ptr<ResMLP> model;
  std::vector<optim::ParamGroup> groups;
  Tensor lr_scale;
};

// The model of `depth` with depth scaling `name` ("depth_mup" or "none"), seeded per depth.
Built build(const std::string& name, int64_t depth, const Config& cfg) {
  kern::manual_seed(cfg.seed + static_cast<uint64_t>(depth));
  Built b;
  b.model = std::make_shared<ResMLP>(cfg.width, depth);
  param::Preset p = param::Preset::mup(cfg.width, cfg.width);
  if (name == "depth_mup") p = param::Preset::depth_mup(p, depth, cfg.base_depth, {"blocks.*.fc2"}, {"blocks.*"});
  param::apply(*b.model, p);
  b.groups = optim::param_groups(*b.model, {.family = optim::Family::SGD});
  b.lr_scale = tools::lr_multipliers(b.model->parameters(), b.groups);
  return b;
}

struct Run {
  std::string param;
  int64_t depth = 0;
  std::vector<std::pair<int64_t, double>> sharpness;  // (step, preconditioned sharpness)
  double final_loss = NAN;
};

Run train(const std::string& name, int64_t depth, double lr, const Config& cfg, const kern::data::Batch& data) {
  Built b = build(name, depth, cfg);
  optim::SGD opt(b.groups, {.lr = lr});
  const fs::path file = fs::path(cfg.out) / name / fmt::format("L{}.jsonl", depth);
  tools::Tracker tracker(file.string(), {.every = cfg.every, .lr = lr, .label = fmt::format("{} L={}", name, depth)});
  tracker.track(tools::sharpness(*b.model, data, tools::half_mean_squared_error,
                                 {.iters = cfg.lanczos_iters, .tol = 1e-4, .lr_scale = b.lr_scale}));
  Run r{name, depth, {}, NAN};
  for (int64_t step = 0; step <= cfg.steps; ++step) {
    Tensor loss = tools::half_mean_squared_error((*b.model)(data.x), data.y);
    if (!std::isfinite(loss.item())) break;
    opt.zero_grad();
    loss.backward();
    if (tracker.step(loss)) {
      r.sharpness.emplace_back(step, examples::record_field(tracker.last_line(), "sharpness"));
      r.final_loss = loss.item();
    }
    if (step == cfg.steps) break;
    opt.step();
  }
  return r;
}

// Mean of sharpness * lr / 2 over the second half of training (NaN if the run diverged early).
double late_mean(const Run& r, double lr, int64_t steps) {
  double sum = 0;
  int n = 0;
  for (auto& [step, s] : r.sharpness)
    if (step >= steps / 2 && std::isfinite(s)) sum += s * lr / 2, ++n;
  return n ? sum / n : NAN;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Sharpness across depths with and without depth-muP (residual tanh MLP, full-batch GD)"};
  Config cfg;
  app.add_option("--depths", cfg.depths, "numbers of residual blocks L")->delimiter(',');
  app.add_option("--base-depth", cfg.base_depth, "depth-muP base depth; the lr is calibrated there (default: smallest)");
  app.add_option("--width", cfg.width, "hidden width")->check(CLI::PositiveNumber);
  app.add_option("--steps", cfg.steps, "gradient descent steps")->check(CLI::PositiveNumber);
  app.add_option("--every", cfg.every, "record the sharpness every k steps")->check(CLI::PositiveNumber);
  app.add_option("--samples", cfg.samples, "first N training images")->check(CLI::Range(16, 60000));
  app.add_option("--lanczos-iters", cfg.lanczos_iters, "Hessian-vector products per sharpness measurement");
  app.add_option("--edge-factor", cfg.edge_factor, "lr = 2 / (factor * initial sharpness at the base depth)")
      ->check(CLI::PositiveNumber);
  app.add_option("--out", cfg.out, "output directory");
  app.add_option("--data", cfg.data_dir, "Fashion-MNIST directory (default: Debian's)");
  app.add_option("--seed", cfg.seed, "seed");
  app.add_option("--threads", cfg.threads, "threads")->check(CLI::Range(1, 256));
  CLI11_PARSE(app, argc, argv);

  try {
    kern::set_num_threads(cfg.threads);
    std::sort(cfg.depths.begin(), cfg.depths.end());
    KERN_CHECK(cfg.depths.size() >= 2 && cfg.depths.front() >= 1, "--depths: give 2+ depths >= 1");
    if (cfg.base_depth <= 0) cfg.base_depth = cfg.depths.front();
    auto train_set = kern::data::FashionMNIST::train(cfg.data_dir);
    auto batch = train_set.batch(0, cfg.samples);
    Tensor x = batch.x.reshape({cfg.samples, 784}).contiguous();
    {
      kern::NoGradGuard ng;
      x = (x - kern::mean(x)) / kern::std(x, {}, 0);
    }
    const kern::data::Batch data{x, batch.y.contiguous()};

    // One lr for everything: calibrated at the base depth (where both variants coincide).
    Built base = build("none", cfg.base_depth, cfg);
    const double s0 = examples::preconditioned_sharpness(*base.model, base.groups, data);
    const double lr = 2.0 / (cfg.edge_factor * s0);
    fmt::print("residual tanh MLP width {}, {} images, full-batch GD; initial sharpness at the base depth {} = {:.4g} "
               "-> lr = {:.4g} (2/lr = {:.4g})\n",
               cfg.width, cfg.samples, cfg.base_depth, s0, lr, 2.0 / lr);
    std::fflush(stdout);

    const auto t0 = std::chrono::steady_clock::now();
    std::map<std::string, std::vector<double>> late;
    std::vector<std::string> files;
    for (std::string name : {"depth_mup", "none"}) {
      fs::create_directories(fs::path(cfg.out) / name);
      for (int64_t depth : cfg.depths) {
        const Run r = train(name, depth, lr, cfg, data);
        late[name].push_back(late_mean(r, lr, cfg.steps));
        files.push_back((fs::path(cfg.out) / name / fmt::format("L{}.jsonl", depth)).string());
        fmt::print("  {:>9} L = {:>2}: sharpness * lr/2 {:.3f} at step 0 -> {:.3f} (second-half mean {:.3f}), final "
                   "loss {:.4f}  ({:.0f} s)\n",
                   name, depth, r.sharpness.empty() ? NAN : r.sharpness.front().second * lr / 2,
                   r.sharpness.empty() ? NAN : r.sharpness.back().second * lr / 2, late[name].back(), r.final_loss,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        std::fflush(stdout);
      }
    }
    std::map<std::string, double> spread;
    for (auto& [name, v] : late) {
      const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
      spread[name] = std::isfinite(*lo) && std::isfinite(*hi) && *lo > 0 ? *hi / *lo : INFINITY;
      fmt::print("{:>9}: second-half sharpness * lr/2 at depths {}: [{:.3f}] -> max/min = {:.2f}\n", name,
                 fmt::join(cfg.depths, ","), fmt::join(v, ", "), spread[name]);
    }
    const bool consistent = spread["depth_mup"] <= 1.2, separates = spread["none"] > 1.2;
    fmt::print("verdict: depth-muP spread {:.2f} ({}), no depth scaling {:.2f} ({}): super consistency {}\n",
               spread["depth_mup"], consistent ? "<= 1.2" : "> 1.2", spread["none"],
               separates ? "> 1.2" : "<= 1.2", consistent && separates ? "REPRODUCED" : "NOT reproduced");

    const std::string script = (fs::path(kern::tools::default_plot_script()).parent_path() / "plot_depth.py").string();
    std::string cmd = "/usr/bin/python3 '" + script + "' -o '" + (fs::path(cfg.out) / "sharpness_depth.png").string() +
                      "' --lr " + fmt::format("{}", lr);
    for (auto& f : files) cmd += " '" + f + "'";
    if (!fs::exists(script) || std::system(cmd.c_str()) != 0) fmt::print("plotting failed: {}\n", cmd);
    else fmt::print("wrote {}\n", (fs::path(cfg.out) / "sharpness_depth.png").string());
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "sharpness_depth: {}\n", e.what());
    return 1;
  }
}
