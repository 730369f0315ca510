// Edge of stability (Cohen et al., ICLR 2021): under full-batch gradient descent the top
// Hessian eigenvalue ("sharpness") rises until it reaches 2/lr and then hovers there, while
// the loss keeps decreasing non-monotonically.
//
// Setup: the first N Fashion-MNIST training images (default 1000), inputs standardized,
// tanh MLP 784-200-200-10 with PyTorch's default init (the same init for every lr), one-hot
// targets, loss = 0.5 * mean_n sum_o (f - y)^2, full-batch GD at each lr. A Tracker records
// loss, accuracy, gradient and weight norms and the sharpness (Lanczos on the full batch,
// warm-started) every --every steps; tools/plot_dynamics.py renders the PNGs.
//
//   edge_of_stability --lrs 0.02 0.04 0.08 --steps 2000 --out run/eos   (about 6 min, 1 thread)
//   -> run/eos/lr0.02.jsonl, lr0.04.jsonl, lr0.08.jsonl, sharpness.png, loss.png, metrics.png,
//      run/eos/summary.json
// The last lines printed give, per lr, sharpness / (2/lr) over the second half of training.
#include <CLI/CLI.hpp>
#include "dynamics_common.hpp"
#include <kern/kern.hpp>
#include <kern/tools/hessian.hpp>
#include <kern/tools/tracker.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

namespace nn = kern::nn;
namespace tools = kern::tools;
namespace fs = std::filesystem;
using kern::Tensor;

namespace {

struct Config {
  std::vector<double> lrs = {0.02, 0.04, 0.08};
  int64_t steps = 2000;
  int64_t every = 20;
  int64_t samples = 1000;
  int64_t width = 200;
  int64_t lanczos_iters = 40;
  std::string standardize = "global";
  std::string dtype = "float32";
  std::string out = "run/eos";
  std::string data_dir;
  std::string plot_script;
  uint64_t seed = 0;
  int threads = 2;
};

// x [N, 784] standardized: "global" = (x - mean) / std over all pixels (the default; its
// sharpness at init, 37.5, matches the PyTorch reference's 36, per-pixel gives 22.8);
// "feature" = per pixel (constant pixels left at 0).
Tensor standardize(const Tensor& x, const std::string& how) {
  kern::NoGradGuard ng;
  if (how == "global") return (x - kern::mean(x)) / kern::std(x, {}, 0);
  KERN_CHECK(how == "feature", "--standardize must be global or feature, got ", how);
  Tensor mu = kern::mean(x, {0}, true), sd = kern::std(x, {0}, 0, true);
  return (x - mu) / kern::maximum(sd, kern::full(sd.shape(), 1e-8, sd.dtype()));
}

using examples::json_number;
using examples::record_field;

struct RunSummary {
  double lr = 0.0;
  double ratio_min = NAN, ratio_max = NAN, ratio_mean = NAN;
  double sharpness0 = NAN, final_loss = NAN, final_accuracy = NAN;
  bool diverged = false;
  double max_residual = 0.0;  // worst relative residual |H v - s v| / s of a sharpness measurement
  std::vector<std::pair<int64_t, double>> sharpness;
};

RunSummary train(const Config& cfg, double lr, const kern::data::Batch& data, kern::DType dt) {
  kern::manual_seed(cfg.seed);  // the same initial network for every lr
  auto model = std::make_shared<nn::Sequential>(nn::Linear(784, cfg.width), nn::Tanh(),
                                                nn::Linear(cfg.width, cfg.width), nn::Tanh(),
                                                nn::Linear(cfg.width, 10));
  model->to(dt);
  const std::string path = (fs::path(cfg.out) / fmt::format("lr{}.jsonl", lr)).string();
  tools::Tracker tracker(path, {.every = cfg.every, .lr = lr, .label = fmt::format("lr={} (2/lr={})", lr, 2.0 / lr)});
  tracker.track(tools::probe_metrics(*model, data, tools::half_mean_squared_error));
  tracker.track(tools::norm_metrics(*model));
  tracker.track(tools::sharpness(*model, data, tools::half_mean_squared_error,
                                 {.iters = cfg.lanczos_iters, .tol = 1e-4, .method = tools::EigenMethod::Lanczos}));

  RunSummary s;
  s.lr = lr;
  auto params = model->parameters();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t step = 0; step <= cfg.steps; ++step) {
    Tensor loss = tools::half_mean_squared_error((*model)(data.x), data.y);
    if (!std::isfinite(loss.item())) {
      s.diverged = true;
      fmt::print("lr {}: loss diverged at step {}\n", lr, step);
      break;
    }
    model->zero_grad();
    loss.backward();
    // Between backward and the update: every recorded value refers to the same parameters.
    if (tracker.step(loss)) {
      const double sh = record_field(tracker.last_line(), "sharpness");
      s.max_residual = std::max(s.max_residual, record_field(tracker.last_line(), "sharpness_residual"));
      s.sharpness.emplace_back(step, sh);
      if (step % (cfg.every * 10) == 0)
        fmt::print("lr {:<5} step {:>5}  loss {:.5f}  sharpness {:8.3f}  2/lr {:6.1f}  ({:.0f} s, tracker {:.0f} s)\n",
                   lr, step, loss.item(), sh, 2.0 / lr,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                   tracker.overhead_seconds());
      std::fflush(stdout);  // live progress when redirected to a log
    }
    if (step == cfg.steps) break;
    kern::NoGradGuard ng;
    for (auto& p : params) p.copy_(p - p.grad() * lr);
  }
  if (!s.sharpness.empty()) s.sharpness0 = s.sharpness.front().second;
  {
    kern::NoGradGuard ng;
    Tensor out = (*model)(data.x);
    s.final_loss = tools::half_mean_squared_error(out, data.y).item();
    s.final_accuracy = kern::sum(kern::eq(kern::argmax(out, 1), data.y)).item() / static_cast<double>(data.y.numel());
  }
  // sharpness / (2/lr) over the second half of training.
  double lo = INFINITY, hi = -INFINITY, sum = 0.0;
  int n = 0;
  for (auto& [step, sh] : s.sharpness)
    if (step >= cfg.steps / 2 && std::isfinite(sh)) {
      const double r = sh * lr / 2.0;
      lo = std::min(lo, r);
      hi = std::max(hi, r);
      sum += r;
      ++n;
    }
  if (n > 0) {
    s.ratio_min = lo;
    s.ratio_max = hi;
    s.ratio_mean = sum / n;
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Edge of stability: sharpness under full-batch gradient descent"};
  Config cfg;
  app.add_option("--lrs", cfg.lrs, "learning rates")->expected(1, 8);
  app.add_option("--steps", cfg.steps, "gradient descent steps")->check(CLI::PositiveNumber);
  app.add_option("--every", cfg.every, "record (and measure sharpness) every k steps")->check(CLI::PositiveNumber);
  app.add_option("--samples", cfg.samples, "first N training images")->check(CLI::Range(10, 60000));
  app.add_option("--width", cfg.width, "hidden width")->check(CLI::PositiveNumber);
  app.add_option("--lanczos-iters", cfg.lanczos_iters, "Hessian-vector products per sharpness measurement");
  app.add_option("--standardize", cfg.standardize, "global | feature");
  app.add_option("--dtype", cfg.dtype, "float32 | float64");
  app.add_option("--out", cfg.out, "output directory");
  app.add_option("--data", cfg.data_dir, "Fashion-MNIST directory (default: Debian's)");
  app.add_option("--plot-script", cfg.plot_script, "tools/plot_dynamics.py (default: next to this source)");
  app.add_option("--seed", cfg.seed, "initialization seed");
  app.add_option("--threads", cfg.threads, "threads");
  CLI11_PARSE(app, argc, argv);

  try {
    kern::set_num_threads(cfg.threads);
    const kern::DType dt = cfg.dtype == "float64" ? kern::DType::Float64 : kern::DType::Float32;
    KERN_CHECK(cfg.dtype == "float32" || cfg.dtype == "float64", "--dtype must be float32 or float64");
    fs::create_directories(cfg.out);
    auto train_set = kern::data::FashionMNIST::train(cfg.data_dir);
    auto b = train_set.batch(0, cfg.samples);
    kern::data::Batch data{standardize(b.x.reshape({cfg.samples, 784}).to(dt), cfg.standardize), b.y.contiguous()};
    fmt::print("{} images, inputs standardized ({}), MLP 784-{}-{}-10 tanh, {} params, {}\n", cfg.samples,
               cfg.standardize, cfg.width, cfg.width, 784 * cfg.width + cfg.width * cfg.width + 10 * cfg.width + 2 * cfg.width + 10,
               cfg.dtype);

    std::vector<RunSummary> runs;
    std::vector<std::string> files;
    for (double lr : cfg.lrs) {
      runs.push_back(train(cfg, lr, data, dt));
      files.push_back((fs::path(cfg.out) / fmt::format("lr{}.jsonl", lr)).string());
    }

    // Plots.
    std::string script = cfg.plot_script;
    if (script.empty()) script = (fs::path(__FILE__).parent_path().parent_path() / "tools" / "plot_dynamics.py").string();
    std::string cmd = "/usr/bin/python3 " + script;
    for (auto& f : files) cmd += " " + f;
    cmd += " -o " + cfg.out;
    if (fs::exists(script)) {
      if (std::system(cmd.c_str()) != 0) fmt::print("plotting failed: {}\n", cmd);
    } else {
      fmt::print("plot script not found ({}); run: python3 tools/plot_dynamics.py {}/*.jsonl\n", script, cfg.out);
    }

    // Summary.
    std::ofstream summary(fs::path(cfg.out) / "summary.json");
    summary << "[\n";
    bool any = false;
    for (size_t i = 0; i < runs.size(); ++i) {
      const auto& s = runs[i];
      const bool within = std::isfinite(s.ratio_min) && s.ratio_min >= 0.9 && s.ratio_max <= 1.1;
      any = any || within;
      fmt::print("lr {}: 2/lr = {:.1f}, sharpness at step 0 = {:.2f}, second half sharpness/(2/lr) in [{:.3f}, {:.3f}] "
                 "(mean {:.3f}) -> {}; final loss {:.5f}, train accuracy {:.3f}, worst Lanczos residual {:.1e}{}\n",
                 s.lr, 2.0 / s.lr, s.sharpness0, s.ratio_min, s.ratio_max, s.ratio_mean,
                 within ? "within +-10% of 2/lr" : "NOT within +-10%", s.final_loss, s.final_accuracy,
                 s.max_residual, s.diverged ? " (diverged)" : "");
      summary << fmt::format(
          "  {{\"lr\": {}, \"two_over_lr\": {}, \"sharpness_step0\": {}, \"ratio_min\": {}, \"ratio_max\": {}, "
          "\"ratio_mean\": {}, \"within_10pct\": {}, \"final_loss\": {}, \"final_accuracy\": {}, "
          "\"max_lanczos_residual\": {}}}{}\n",
          s.lr, 2.0 / s.lr, json_number(s.sharpness0), json_number(s.ratio_min), json_number(s.ratio_max), json_number(s.ratio_mean), within,
          json_number(s.final_loss), json_number(s.final_accuracy), json_number(s.max_residual), i + 1 < runs.size() ? "," : "");
    }
    summary << "]\n";
    fmt::print("edge of stability reached (sharpness within +-10% of 2/lr over the second half) for at least one lr: {}\n",
               any ? "yes" : "no");
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "edge_of_stability: {}\n", e.what());
    return 1;
  }
}
