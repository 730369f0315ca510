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
//   -> run/eos/lr0.02.jsonl, lr0.04.jsonl, lr0.08.jsonl, eos.png (the experiment's figure:
//      sharpness and 2/lr, their ratio, the loss), sharpness.png, loss.png, metrics.png,
//      run/eos/summary.json
// The last lines printed give, per lr, sharpness / (2/lr) over the second half of training.
//
// --optimizer adam (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"):
// full-batch Adam instead of GD. The tracker then records the preconditioned sharpness
// lambda_max(P^-1 H), P = diag(sqrt(v_hat) + eps) from Adam's state (tools/preconditioned.hpp),
// against Adam's threshold (2 + 2 beta1) / ((1 - beta1) lr) = 38/lr for beta1 = 0.9; the
// paper reports it rising to the threshold and hovering there.
//   edge_of_stability --optimizer adam --lrs 2e-4 4e-4 --steps 1000 --every 10 --out run/eos_adam
//   -> run/eos_adam/adam_lr<lr>.jsonl, eos.png, summary.json; the verdict gives the largest
//      ratio to 38/lr and the share of records within +-10% of it once it was first reached.
#include <CLI/CLI.hpp>
#include "dynamics_common.hpp"
#include <kern/kern.hpp>
#include <kern/tools/coord_check.hpp>
#include <kern/tools/hessian.hpp>
#include <kern/tools/preconditioned.hpp>
#include <kern/tools/tracker.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>

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
  std::string optimizer = "gd";  // gd | adam
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
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
  double max_ratio = NAN;        // Adam: the largest preconditioned sharpness / threshold
  int64_t first_reached = -1;    // Adam: the first step with ratio >= 0.9
  double share_within = NAN;     // Adam: share of records from first_reached on with |ratio - 1| <= 0.1
  double max_residual = 0.0;  // worst relative residual |H v - s v| / s of a sharpness measurement
  std::vector<std::pair<int64_t, double>> sharpness;
};

std::string run_file(const Config& cfg, double lr) {
  return (fs::path(cfg.out) / fmt::format("{}lr{}.jsonl", cfg.optimizer == "adam" ? "adam_" : "", lr)).string();
}

RunSummary train(const Config& cfg, double lr, const kern::data::Batch& data, kern::DType dt) {
  kern::manual_seed(cfg.seed);  // the same initial network for every lr
  auto model = std::make_shared<nn::Sequential>(nn::Linear(784, cfg.width), nn::Tanh(),
                                                nn::Linear(cfg.width, cfg.width), nn::Tanh(),
                                                nn::Linear(cfg.width, 10));
  model->to(dt);
  const std::string path = run_file(cfg, lr);
  const std::string label = cfg.optimizer == "adam"
                                ? fmt::format("Adam lr={} (38/lr={:.4g})", lr, tools::adam_stability_threshold(lr, cfg.beta1))
                                : fmt::format("GD lr={} (2/lr={:.4g})", lr, 2.0 / lr);
  tools::Tracker tracker(path, {.every = cfg.every, .lr = lr, .label = label});
  tracker.track(tools::probe_metrics(*model, data, tools::half_mean_squared_error));
  tracker.track(tools::norm_metrics(*model));
  if (cfg.optimizer == "gd")
    tracker.track(tools::sharpness(*model, data, tools::half_mean_squared_error,
                                   {.iters = cfg.lanczos_iters, .tol = 1e-4, .method = tools::EigenMethod::Lanczos}));

  std::unique_ptr<kern::optim::Adam> adam;
  if (cfg.optimizer == "adam") {
    adam = std::make_unique<kern::optim::Adam>(
        model->parameters(), kern::optim::AdamOptions{.lr = lr, .betas = {cfg.beta1, cfg.beta2}, .eps = cfg.eps});
    tracker.track(tools::preconditioned_sharpness(*model, data, tools::half_mean_squared_error, *adam,
                                                  {.iters = cfg.lanczos_iters, .tol = 1e-4}));
  }
  const std::string key = adam ? "preconditioned_sharpness" : "sharpness";
  const std::string residual_key = adam ? "preconditioned_residual" : "sharpness_residual";
  const double threshold = adam ? tools::adam_stability_threshold(lr, cfg.beta1) : 2.0 / lr;

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
      const double sh = record_field(tracker.last_line(), key);
      const double res = record_field(tracker.last_line(), residual_key);
      if (std::isfinite(res)) s.max_residual = std::max(s.max_residual, res);
      if (std::isfinite(sh)) s.sharpness.emplace_back(step, sh);
      if (step % (cfg.every * 10) == 0)
        fmt::print("lr {:<5} step {:>5}  loss {:.5f}  {} {:10.4g}  threshold {:8.4g}  ({:.0f} s, tracker {:.0f} s)\n",
                   lr, step, loss.item(), key, sh, threshold,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                   tracker.overhead_seconds());
      std::fflush(stdout);  // live progress when redirected to a log
    }
    if (step == cfg.steps) break;
    if (adam) {
      adam->step();
      continue;
    }
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
  // Edge of stability after it is first reached: the share of records within +-10%.
  int64_t within = 0, after = 0;
  for (auto& [step, sh] : s.sharpness) {
    const double r = sh / threshold;
    s.max_ratio = std::isnan(s.max_ratio) ? r : std::max(s.max_ratio, r);
    if (s.first_reached < 0 && r >= 0.9) s.first_reached = step;
    if (s.first_reached >= 0) {
      ++after;
      within += std::abs(r - 1.0) <= 0.1 ? 1 : 0;
    }
  }
  if (after > 0) s.share_within = static_cast<double>(within) / static_cast<double>(after);
  // sharpness / threshold over the second half of training.
  double lo = INFINITY, hi = -INFINITY, sum = 0.0;
  int n = 0;
  for (auto& [step, sh] : s.sharpness)
    if (step >= cfg.steps / 2 && std::isfinite(sh)) {
      const double r = sh / threshold;
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
  app.add_option("--optimizer", cfg.optimizer, "gd (full-batch gradient descent) | adam (full-batch Adam)")
      ->check(CLI::IsMember({"gd", "adam"}));
  app.add_option("--beta1", cfg.beta1, "Adam's beta1 (threshold (2 + 2 beta1) / ((1 - beta1) lr))");
  app.add_option("--beta2", cfg.beta2, "Adam's beta2");
  app.add_option("--eps", cfg.eps, "Adam's eps");
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
      files.push_back(run_file(cfg, lr));
    }

    // Plots.
    std::string script = cfg.plot_script;
    if (script.empty()) script = (fs::path(tools::default_plot_script()).parent_path() / "plot_dynamics.py").string();
    std::string cmd = "/usr/bin/python3 " + script;
    for (auto& f : files) cmd += " " + f;
    const bool adam = cfg.optimizer == "adam";
    cmd += " -o " + cfg.out + " --figure " + (fs::path(cfg.out) / "eos.png").string() + " --title '" +
           (adam ? "Full-batch Adam on Fashion-MNIST: preconditioned sharpness vs 38/lr"
                 : "Full-batch GD on Fashion-MNIST: sharpness vs 2/lr") +
           "' > /dev/null";
    if (fs::exists(script)) {
      if (std::system(cmd.c_str()) != 0) fmt::print("plotting failed: {}\n", cmd);
    } else {
      fmt::print("plot script not found ({}); run: python3 tools/plot_dynamics.py {}/*.jsonl\n", script, cfg.out);
    }

    // Summary.
    std::ofstream summary(fs::path(cfg.out) / "summary.json");
    summary << "[\n";
    bool any = false;
    const std::string what = adam ? "preconditioned sharpness" : "sharpness";
    const std::string edge = adam ? fmt::format("{:.3g}/lr", tools::adam_stability_threshold(1.0, cfg.beta1)) : "2/lr";
    for (size_t i = 0; i < runs.size(); ++i) {
      const auto& s = runs[i];
      const double threshold = adam ? tools::adam_stability_threshold(s.lr, cfg.beta1) : 2.0 / s.lr;
      const bool within = std::isfinite(s.ratio_min) && s.ratio_min >= 0.9 && s.ratio_max <= 1.1;
      any = any || within;
      const std::string reached =
          s.first_reached < 0 ? fmt::format("never >= 0.9 x {}", edge)
                              : fmt::format("first >= 0.9 x {} at step {}, then {:.0f}% of records within +-10%", edge,
                                            s.first_reached, 100.0 * s.share_within);
      fmt::print("lr {}: {} = {:.4g}, {} at the first measurement = {:.4g}, max {:.3f} x {}; {}; second half {}/({}) in "
                 "[{:.3f}, {:.3f}] (mean {:.3f}) -> {}; final loss {:.5f}, train accuracy {:.3f}, worst Lanczos "
                 "residual {:.1e}{}\n",
                 s.lr, edge, threshold, what, s.sharpness0, s.max_ratio, edge, reached, what, edge, s.ratio_min, s.ratio_max, s.ratio_mean,
                 within ? "within +-10%" : "NOT within +-10%", s.final_loss, s.final_accuracy, s.max_residual,
                 s.diverged ? " (diverged)" : "");
      summary << fmt::format(
          "  {{\"optimizer\": \"{}\", \"lr\": {}, \"threshold\": {}, \"sharpness_step0\": {}, \"max_ratio\": {}, "
          "\"first_reached_step\": {}, \"share_within_10pct_after\": {}, \"ratio_min\": {}, \"ratio_max\": {}, "
          "\"ratio_mean\": {}, \"within_10pct\": {}, \"final_loss\": {}, \"final_accuracy\": {}, "
          "\"max_lanczos_residual\": {}}}{}\n",
          cfg.optimizer, s.lr, threshold, json_number(s.sharpness0), json_number(s.max_ratio), s.first_reached,
          json_number(s.share_within), json_number(s.ratio_min), json_number(s.ratio_max), json_number(s.ratio_mean),
          within, json_number(s.final_loss), json_number(s.final_accuracy), json_number(s.max_residual),
          i + 1 < runs.size() ? "," : "");
    }
    summary << "]\n";
    fmt::print("edge of stability reached ({} within +-10% of {} over the second half) for at least one lr: {}\n", what,
               edge, any ? "yes" : "no");
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "edge_of_stability: {}\n", e.what());
    return 1;
  }
}
