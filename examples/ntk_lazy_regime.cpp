// The lazy (kernel) regime across widths: NTK vs muP parameterization. Under the NTK
// parameterization the empirical neural tangent kernel freezes as the width grows: its
// relative change after training vanishes (Jacot et al. 2018; Lee et al. 2019,
// "Wide neural networks of any depth evolve as linear models under gradient descent", Fig. 1:
// log-log slope about -0.5 or steeper). Under muP the features, and with them the kernel,
// keep moving by Theta(1) at every width (Yang & Hu 2021), so the change does not vanish.
//
// Setup (as examples/sharpness_width): the first N Fashion-MNIST training images (default
// 512, inputs standardized), tanh MLP 784-w-w-10, one-hot targets, loss 0.5 * mean_n sum_o
// (f - y)^2, full-batch gradient descent through optim::SGD with the parameterization's
// per-layer lr multipliers (kern::param + optim::param_groups); the same init seed per width
// for both parameterizations. The lr of each parameterization is calibrated once at the base
// width, lr = 2 / (--edge-factor * initial preconditioned sharpness), and used at every width
// (NTK parameterization: its kernel is O(1) in width; muP: the lr transfers).
//
// Kernel: the FULL empirical NTK [P*O, P*O] (O = 10 outputs; --traced for the output-traced
// [P, P]) on a fixed probe batch, the first P = --probe training images, by tools::ntk's
// structured per-layer method, in the form gradient descent follows:
//   K = sum_g m_g J_g J_g^T,   f_{t+1} - f_t ~ -lr K grad_f L,
// with m_g the SGD lr multipliers of parameter group g (all 1 under the NTK preset, so K is
// the plain J J^T there; under muP the input and readout weights have m = width/base_width).
// Recorded every --ntk-every steps against K_0: ntk_rel_change = ||K_t - K_0||_F / ||K_0||_F,
// ntk_rel_change_plain (the same for the unweighted J J^T), ntk_distance (1 - cosine),
// ntk_trace, ntk_target_alignment (centered kernel-target alignment of the output-traced
// kernel with the labels).
//
//   ntk_lazy_regime [--widths 64,128,256,512,1024,2048] [--steps 500] [--threads 1]
//                   [--out run/ntk_lazy_regime]        (about 6 min, 1 thread, busy 2-core machine)
//   -> run/ntk_lazy_regime/{ntk,mup}/w<width>.jsonl (+ loss.png, ntk_rel_change.png,
//      metrics.png per parameterization, tools/plot_dynamics.py), lazy_regime.png
//      (tools/plot_lazy.py: change vs width, log-log, both parameterizations; change and loss
//      over training), summary.json. The last lines print the log-log slope of the final
//      relative change against width for each parameterization and a verdict.
// With the defaults the NTK parameterization's change halves with every doubling of the width
// from 256 on (width^-1; slope -0.81 over 64..2048, the narrow widths are flatter); muP's
// grows at small widths and saturates near 1.0 (1024 and 2048 agree; slope +0.20), mostly
// as growth of the kernel's scale (trace x1.9; 1 - cosine to K_0 settles at 0.054 from 512 on).
#include <CLI/CLI.hpp>
#include "dynamics_common.hpp"
#include <kern/kern.hpp>
#include <kern/tools/coord_check.hpp>
#include <kern/optim/optim.hpp>
#include <kern/optim/param_groups.hpp>
#include <kern/param/param.hpp>
#include <kern/tools/hessian.hpp>
#include <kern/tools/ntk.hpp>
#include <kern/tools/tracker.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
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

struct Config {
  std::vector<int64_t> widths = {64, 128, 256, 512, 1024, 2048};
  std::vector<std::string> params = {"ntk", "mup"};
  int64_t base_width = 128;
  int64_t steps = 500;
  int64_t every = 10;
  int64_t ntk_every = 50;
  int64_t samples = 512;
  int64_t probe = 128;
  double edge_factor = 2.0;
  double lr_ntk = 0.0, lr_mup = 0.0;  // > 0: fixed instead of calibrated
  bool traced = false;
  std::string ntk_method = "auto";
  std::string out = "run/ntk_lazy_regime";
  std::string data_dir;
  std::string plot_dir;  // where plot_dynamics.py / plot_lazy.py are (default: ../tools of this source)
  uint64_t seed = 0;
  int threads = 1;
};

// A model of `width` in parameterization `name`, seeded by the width only (both
// parameterizations start from the same random stream at a given width).
struct Built {
  std::shared_ptr<nn::Sequential> model;
  std::vector<optim::ParamGroup> groups;
};
Built build(const std::string& name, int64_t width, const Config& cfg, double lr) {
  kern::manual_seed(cfg.seed + static_cast<uint64_t>(width));
  Built b;
  b.model = examples::tanh_mlp(width);
  param::apply(*b.model, examples::width_preset(name, width, cfg.base_width));
  b.groups = optim::param_groups(*b.model, {.family = optim::Family::SGD});
  return b;
}

// lr = 2 / (edge_factor * lambda_max(D^1/2 H D^1/2)) at the base width (D: lr multipliers).
double calibrate_lr(const std::string& name, const Config& cfg, const kern::data::Batch& data, double* s0) {
  Built b = build(name, cfg.base_width, cfg, 1.0);
  *s0 = examples::preconditioned_sharpness(*b.model, b.groups, data);
  return 2.0 / (cfg.edge_factor * *s0);
}

// The parameters split by SGD lr multiplier: K = sum_g mult[g] * NTK over params[g].
struct KernelGroups {
  std::vector<double> mult;
  std::vector<std::vector<Tensor>> params;
};
KernelGroups kernel_groups(const std::vector<optim::ParamGroup>& groups) {
  KernelGroups kg;
  for (auto& g : groups)
    for (size_t i = 0; i < g.params.size(); ++i) {
      const double m = g.lr_mult.empty() ? 1.0 : g.lr_mult[i];
      auto it = std::find(kg.mult.begin(), kg.mult.end(), m);
      if (it == kg.mult.end()) {
        kg.mult.push_back(m);
        kg.params.emplace_back();
        it = kg.mult.end() - 1;
      }
      kg.params[static_cast<size_t>(it - kg.mult.begin())].push_back(g.params[i]);
    }
  return kg;
}

// The output-traced kernel [N, N] (mean over o of K[(n,o),(m,o)]) of a full kernel [N*O, N*O]
// (returned as is when it is already [N, N]).
Tensor traced_kernel(const Tensor& K, int64_t n) {
  const int64_t o = K.size(0) / n;
  if (o == 1) return K;
  const auto k = K.contiguous().to_vector<double>();
  std::vector<double> t(static_cast<size_t>(n * n), 0.0);
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < n; ++b)
      for (int64_t c = 0; c < o; ++c) t[a * n + b] += k[(a * o + c) * n * o + b * o + c] / o;
  return kern::from_vector<double>(t, {n, n});
}

// Kernel metrics on the probe batch; the first evaluation's kernels are K_0 (float64).
tools::Metric kernel_metric(nn::Module& model, kern::data::Batch probe, KernelGroups kg, bool traced,
                            tools::NtkMethod method) {
  struct Ref { Tensor eff, plain; };
  auto ref = std::make_shared<Ref>();
  return tools::Metric{"ntk", [&model, probe, kg, traced, method, ref](const tools::StepInfo&) {
    kern::NoGradGuard ng;
    Tensor eff, plain;
    for (size_t g = 0; g < kg.mult.size(); ++g) {
      tools::NtkOptions o;
      o.params(kg.params[g]).method(method);
      Tensor K = (traced ? tools::ntk_traced(model, probe.x, o) : tools::ntk(model, probe.x, o)).to(kern::DType::Float64);
      eff = eff.defined() ? eff + K * kg.mult[g] : K * kg.mult[g];
      plain = plain.defined() ? plain + K : K;
    }
    if (!ref->eff.defined()) ref->eff = eff, ref->plain = plain;
    return tools::Values{{"ntk_rel_change", tools::kernel_relative_change(eff, ref->eff)},
                         {"ntk_rel_change_plain", tools::kernel_relative_change(plain, ref->plain)},
                         {"ntk_distance", tools::kernel_distance(eff, ref->eff)},
                         {"ntk_trace", tools::kernel_trace(eff)},
                         {"ntk_target_alignment", tools::kernel_target_alignment(traced_kernel(eff, probe.y.numel()),
                                                                                 probe.y)}};
  }};
}

using examples::json_number;
using examples::record_field;

struct Run {
  std::string param;
  int64_t width = 0;
  double lr = 0;
  double loss0 = NAN, final_loss = NAN, final_accuracy = NAN;
  double rel_change = NAN, rel_change_plain = NAN, distance = NAN;
  double trace0 = NAN, trace = NAN, alignment0 = NAN, alignment = NAN;
  bool diverged = false;
  double seconds = 0, ntk_seconds = 0;
  std::string file;
};

Run train(const std::string& name, int64_t width, double lr, const Config& cfg, const kern::data::Batch& data) {
  const auto t0 = std::chrono::steady_clock::now();
  Built b = build(name, width, cfg, lr);
  optim::SGD opt(b.groups, {.lr = lr});
  Run r{.param = name, .width = width, .lr = lr};
  r.file = (fs::path(cfg.out) / name / fmt::format("w{}.jsonl", width)).string();
  tools::Tracker tracker(r.file, {.every = cfg.every, .lr = lr, .label = fmt::format("{} w={}", name, width)});
  Tensor out;  // the current full-batch output (accuracy without another forward)
  tracker.track("accuracy", [&] {
    kern::NoGradGuard ng;
    return kern::sum(kern::eq(kern::argmax(out, 1), data.y)).item() / static_cast<double>(data.y.numel());
  });
  kern::data::Batch probe{data.x.narrow(0, 0, cfg.probe), data.y.narrow(0, 0, cfg.probe)};
  const tools::NtkMethod method = cfg.ntk_method == "contraction" ? tools::NtkMethod::Contraction
                                  : cfg.ntk_method == "vector"    ? tools::NtkMethod::Vector
                                  : cfg.ntk_method == "structured" ? tools::NtkMethod::Structured
                                                                   : tools::NtkMethod::Auto;
  tracker.track(kernel_metric(*b.model, probe, kernel_groups(b.groups), cfg.traced, method), cfg.ntk_every);

  for (int64_t step = 0; step <= cfg.steps; ++step) {
    out = (*b.model)(data.x);
    Tensor loss = tools::half_mean_squared_error(out, data.y);
    if (!std::isfinite(loss.item())) {
      r.diverged = true;
      fmt::print("  {} width {}: loss diverged at step {}\n", name, width, step);
      break;
    }
    opt.zero_grad();
    loss.backward();
    // Between backward and the update: a record refers to the parameters the loss was computed at.
    if (tracker.step(loss)) {
      const std::string& line = tracker.last_line();
      r.final_loss = loss.item();
      r.final_accuracy = record_field(line, "accuracy");
      if (step == 0) r.loss0 = r.final_loss;
      if (step % cfg.ntk_every == 0) {
        r.rel_change = record_field(line, "ntk_rel_change");
        r.rel_change_plain = record_field(line, "ntk_rel_change_plain");
        r.distance = record_field(line, "ntk_distance");
        r.trace = record_field(line, "ntk_trace");
        r.alignment = record_field(line, "ntk_target_alignment");
        r.ntk_seconds += record_field(line, "time.ntk");
        if (step == 0) r.trace0 = r.trace, r.alignment0 = r.alignment;
      }
    }
    if (step == cfg.steps) break;
    opt.step();
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// Least-squares slope of log(y) against log(x) over the finite, positive points.
double loglog_slope(const std::vector<double>& x, const std::vector<double>& y) {
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  int n = 0;
  for (size_t i = 0; i < x.size(); ++i)
    if (std::isfinite(y[i]) && y[i] > 0) {
      const double lx = std::log(x[i]), ly = std::log(y[i]);
      sx += lx, sy += ly, sxx += lx * lx, sxy += lx * ly, ++n;
    }
  if (n < 2) return NAN;
  return (n * sxy - sx * sy) / (n * sxx - sx * sx);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Relative NTK change after training across widths: NTK vs muP parameterization"};
  Config cfg;
  app.add_option("--widths", cfg.widths, "hidden widths")->delimiter(',');
  app.add_option("--params", cfg.params, "parameterizations (ntk, mup)")->delimiter(',');
  app.add_option("--base-width", cfg.base_width, "muP base width; lrs are calibrated at this width");
  app.add_option("--steps", cfg.steps, "gradient descent steps (a multiple of --ntk-every)")->check(CLI::PositiveNumber);
  app.add_option("--every", cfg.every, "record loss and accuracy every k steps")->check(CLI::PositiveNumber);
  app.add_option("--ntk-every", cfg.ntk_every, "compute the NTK every k steps (a multiple of --every)")
      ->check(CLI::PositiveNumber);
  app.add_option("--samples", cfg.samples, "first N training images")->check(CLI::Range(16, 60000));
  app.add_option("--probe", cfg.probe, "NTK probe batch: the first P training images")->check(CLI::PositiveNumber);
  app.add_option("--edge-factor", cfg.edge_factor, "lr = 2 / (factor * initial sharpness at the base width)");
  app.add_option("--lr-ntk", cfg.lr_ntk, "fixed lr for the NTK parameterization (default: calibrated)");
  app.add_option("--lr-mup", cfg.lr_mup, "fixed lr for muP (default: calibrated)");
  app.add_flag("--traced", cfg.traced, "output-traced kernel [P, P] instead of the full [P*O, P*O]");
  app.add_option("--ntk-method", cfg.ntk_method, "tools::ntk method (contraction: the per-sample Jacobian, a check)")
      ->check(CLI::IsMember({"auto", "structured", "contraction", "vector"}));
  app.add_option("--out", cfg.out, "output directory");
  app.add_option("--data", cfg.data_dir, "Fashion-MNIST directory (default: Debian's)");
  app.add_option("--plot-dir", cfg.plot_dir, "directory of plot_dynamics.py and plot_lazy.py (default: tools/)");
  app.add_option("--seed", cfg.seed, "seed");
  app.add_option("--threads", cfg.threads, "threads")->check(CLI::Range(1, 256));
  CLI11_PARSE(app, argc, argv);

  try {
    KERN_CHECK(cfg.ntk_every % cfg.every == 0 && cfg.steps % cfg.ntk_every == 0,
               "--ntk-every must be a multiple of --every and --steps a multiple of --ntk-every, got ",
               cfg.every, ", ", cfg.ntk_every, ", ", cfg.steps);
    for (auto& p : cfg.params) KERN_CHECK(p == "ntk" || p == "mup", "--params: unknown parameterization ", p);
    kern::set_num_threads(cfg.threads);
    cfg.probe = std::min(cfg.probe, cfg.samples);
    auto train_set = kern::data::FashionMNIST::train(cfg.data_dir);
    auto b = train_set.batch(0, cfg.samples);
    Tensor x = b.x.reshape({cfg.samples, 784}).contiguous();
    {
      kern::NoGradGuard ng;
      x = (x - kern::mean(x)) / kern::std(x, {}, 0);
    }
    kern::data::Batch data{x, b.y.contiguous()};
    fmt::print("{} images, tanh MLP 784-w-w-10, full-batch GD for {} steps; {} NTK on the first {} images every {} "
               "steps; {} thread(s)\n",
               cfg.samples, cfg.steps, cfg.traced ? "traced" : "full", cfg.probe, cfg.ntk_every, cfg.threads);

    const std::string tools_dir =
        cfg.plot_dir.empty() ? fs::path(kern::tools::default_plot_script()).parent_path().string() : cfg.plot_dir;
    std::vector<Run> runs;
    std::map<std::string, std::pair<double, double>> lrs;  // name -> (lr, initial sharpness)
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& name : cfg.params) {
      fs::create_directories(fs::path(cfg.out) / name);
      double s0 = NAN;
      const double fixed = name == "ntk" ? cfg.lr_ntk : cfg.lr_mup;
      const double lr = fixed > 0 ? fixed : calibrate_lr(name, cfg, data, &s0);
      lrs[name] = {lr, s0};
      fmt::print("{}: lr = {:.4g}{}\n", name, lr,
                 fixed > 0 ? " (fixed)"
                           : fmt::format(" = 2 / ({} x initial preconditioned sharpness {:.4g} at width {})",
                                         cfg.edge_factor, s0, cfg.base_width));
      std::fflush(stdout);
      std::string cmd = "/usr/bin/python3 " + (fs::path(tools_dir) / "plot_dynamics.py").string();
      for (int64_t w : cfg.widths) {
        runs.push_back(train(name, w, lr, cfg, data));
        const auto& r = runs.back();
        fmt::print("  {} width {:>5}: loss {:.4f} -> {:.4f}, accuracy {:.3f}, NTK rel. change {:.4f} (plain J J^T "
                   "{:.4f}), trace {:.4g} -> {:.4g}, alignment {:.3f} -> {:.3f}  ({:.0f} s, NTK {:.0f} s; total {:.0f} s)\n",
                   name, w, r.loss0, r.final_loss, r.final_accuracy, r.rel_change, r.rel_change_plain, r.trace0,
                   r.trace, r.alignment0, r.alignment, r.seconds, r.ntk_seconds,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        std::fflush(stdout);
        cmd += " " + r.file;
      }
      cmd += " -o " + (fs::path(cfg.out) / name).string() + " > /dev/null";
      if (std::system(cmd.c_str()) != 0) fmt::print("plotting failed: {}\n", cmd);
    }

    // Slopes of log(final relative change) against log(width): over all widths, and over
    // the widths >= the base width (closer to the asymptotic rate).
    struct Fit { double all = NAN, wide = NAN, plain = NAN; };
    std::map<std::string, Fit> fits;
    for (const auto& name : cfg.params) {
      std::vector<double> w, c, cp, ww, cw;
      for (auto& r : runs)
        if (r.param == name && !r.diverged) {
          w.push_back(static_cast<double>(r.width));
          c.push_back(r.rel_change);
          cp.push_back(r.rel_change_plain);
          if (r.width >= cfg.base_width) ww.push_back(static_cast<double>(r.width)), cw.push_back(r.rel_change);
        }
      fits[name] = {loglog_slope(w, c), loglog_slope(ww, cw), loglog_slope(w, cp)};
    }
    const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    std::ofstream summary(fs::path(cfg.out) / "summary.json");
    summary << "{\n  \"config\": {"
            << fmt::format("\"widths\": [{}], \"base_width\": {}, \"steps\": {}, \"samples\": {}, \"probe\": {}, "
                           "\"kernel\": \"{}\", \"edge_factor\": {}, \"seed\": {}, \"threads\": {}",
                           fmt::join(cfg.widths, ", "), cfg.base_width, cfg.steps, cfg.samples, cfg.probe,
                           cfg.traced ? "traced" : "full", cfg.edge_factor, cfg.seed, cfg.threads)
            << "},\n  \"runs\": [\n";
    for (size_t i = 0; i < runs.size(); ++i) {
      const auto& r = runs[i];
      summary << fmt::format(
          "    {{\"param\": \"{}\", \"width\": {}, \"lr\": {}, \"loss0\": {}, \"final_loss\": {}, "
          "\"final_accuracy\": {}, \"ntk_rel_change\": {}, \"ntk_rel_change_plain\": {}, \"ntk_distance\": {}, "
          "\"ntk_trace0\": {}, \"ntk_trace\": {}, \"ntk_target_alignment0\": {}, \"ntk_target_alignment\": {}, "
          "\"diverged\": {}, \"seconds\": {:.1f}, \"file\": \"{}\"}}{}\n",
          r.param, r.width, r.lr, json_number(r.loss0), json_number(r.final_loss), json_number(r.final_accuracy), json_number(r.rel_change),
          json_number(r.rel_change_plain), json_number(r.distance), json_number(r.trace0), json_number(r.trace), json_number(r.alignment0),
          json_number(r.alignment), r.diverged, r.seconds, fs::path(r.file).lexically_relative(cfg.out).string(),
          i + 1 < runs.size() ? "," : "");
    }
    summary << "  ],\n  \"slopes\": {";
    bool first = true;
    for (auto& [name, f] : fits) {
      summary << fmt::format("{}\"{}\": {{\"all_widths\": {}, \"widths_ge_base\": {}, \"plain_all_widths\": {}, "
                             "\"lr\": {}, \"initial_sharpness\": {}}}",
                             first ? "" : ", ", name, json_number(f.all), json_number(f.wide), json_number(f.plain), lrs[name].first,
                             json_number(lrs[name].second));
      first = false;
    }
    summary << fmt::format("}},\n  \"seconds\": {:.1f}\n}}\n", total);
    summary.close();

    const std::string plot = fmt::format("/usr/bin/python3 {} {} -o {} > /dev/null",
                                         (fs::path(tools_dir) / "plot_lazy.py").string(),
                                         (fs::path(cfg.out) / "summary.json").string(),
                                         (fs::path(cfg.out) / "lazy_regime.png").string());
    if (std::system(plot.c_str()) != 0) fmt::print("plotting failed: {}\n", plot);

    // Verdicts. NTK parameterization: slope <= -0.4 ("about -0.5 or steeper"). muP: the change
    // does not vanish (slope >= -0.2) and, separately, whether it is flat (|slope| <= 0.2).
    for (const auto& name : cfg.params) {
      std::vector<double> c;
      for (auto& r : runs)
        if (r.param == name) c.push_back(r.rel_change);
      const auto& f = fits[name];
      fmt::print("{}: relative NTK change after {} steps at widths {}: [{:.4f}]; log-log slope {:.3f} (widths >= {}: "
                 "{:.3f}; plain J J^T: {:.3f})\n",
                 name, cfg.steps, fmt::join(cfg.widths, ","), fmt::join(c, ", "), f.all, cfg.base_width, f.wide,
                 f.plain);
      if (name == "ntk")
        fmt::print("verdict ntk: slope {:.3f} {} -0.4 -> {}\n", f.all, f.all <= -0.4 ? "<=" : ">",
                   f.all <= -0.4 ? "the kernel freezes as the width grows (lazy regime)"
                                 : "NOT the expected decay (about width^-1/2 or faster)");
      else
        fmt::print("verdict mup: slope {:.3f} {} -0.2 -> {}; |slope| {} 0.2 -> {}\n", f.all, f.all >= -0.2 ? ">=" : "<",
                   f.all >= -0.2 ? "the change does not vanish with width (feature learning)"
                                 : "the change DECAYS with width (not expected under muP)",
                   std::abs(f.all) <= 0.2 ? "<=" : ">",
                   std::abs(f.all) <= 0.2 ? "flat across widths"
                                          : (f.all > 0 ? "NOT flat: it grows with width at these widths"
                                                       : "NOT flat"));
    }
    fmt::print("total {:.0f} s; output in {}\n", total, cfg.out);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "ntk_lazy_regime: {}\n", e.what());
    return 1;
  }
}
