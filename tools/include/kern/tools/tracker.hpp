#pragma once
// Tracker: records training dynamics as JSON lines, every k steps, from any training loop.
//
//   auto probe = train.batch(0, 256);                              // a fixed probe batch
//   tools::Tracker tracker("run/dynamics.jsonl", {.every = 50, .lr = 0.1});
//   tracker.track(tools::probe_metrics(*model, probe, tools::mean_cross_entropy));
//   tracker.track(tools::norm_metrics(*model));
//   tracker.track(tools::sharpness(*model, probe, tools::mean_cross_entropy, {.iters = 20}));
//   tracker.track(tools::ntk_metrics(*model, probe));              // NTK change, spectrum, alignment
//   tracker.track(tools::preconditioned_sharpness(*model, probe, crit, adam));  // Adam: P^-1 H vs 38/lr
//                                                                   // (kern/tools/preconditioned.hpp)
//   tracker.track("my_metric", [&] { return some_double(); });    // any scalar callback
//   for (...) {
//     auto loss = criterion(model->forward(x), y);
//     opt.zero_grad(); loss.backward();
//     tracker.step(loss);      // here: metrics see the parameters the loss was computed at
//     opt.step();
//   }
//   // python3 tools/plot_dynamics.py run/dynamics.jsonl  -> PNGs next to it
//
// Steps: step() counts calls, the first is step 0. A record is written when step % every
// == 0 (a metric with its own `every` only on its multiples). Metrics are evaluated when
// step() is called, on the parameters as they are then. Calling step() after backward() and
// before opt.step() makes every value of a record refer to the same parameters; calling it
// after opt.step() also works (metrics then see the updated parameters).
//
// One record = one line, a JSON object (keys in insertion order):
//   step, [run], [loss] (the value passed to step()), [lr, two_over_lr], <metric keys...>,
//   time.<metric name> (seconds per metric), overhead_s (this record's total time in the
//   tracker), overhead_total_s (cumulative), wall_s (seconds since the tracker was created),
//   overhead_share = overhead_total_s / wall_s (the share of the run spent tracking).
//
// The tracker says what it is doing (TrackerOptions::log, stderr by default): on a terminal a
// record expected to be slow (the first one, or one whose predecessor took announce_after_s
// or more) shows a status line "tracker: step N: computing <metric>..." while it runs, erased
// when it is done (a progress bar on the same terminal redraws over it). Not on a terminal, a
// slow record prints one line afterwards with its cost (the first, then at most one per
// log_interval_s). When the time spent in the tracker
// exceeds warn_share of the wall time (checked once wall_s >= warn_after_s), it warns once,
// naming the costliest metric, and records "overhead_warning": true in that record.
// NaN/Inf values are written as null. Each line is written with one write(2) call on a file
// opened with O_APPEND and no user-space buffer: a crash never leaves a partial line.
#include <kern/data/dataset.hpp>
#include <kern/nn/module.hpp>
#include <kern/optim/optimizer.hpp>
#include <kern/tools/hessian.hpp>
#include <kern/tools/ntk.hpp>

#include <chrono>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace kern::tools {

/// A recorded value: a number, a list of numbers (a spectrum, per-class values, ...) or a
/// label (a mode, a method).
using Value = std::variant<double, std::vector<double>, std::string>;
/// Named values, written in this order.
using Values = std::vector<std::pair<std::string, Value>>;

/// What a metric callback is told about the step being recorded.
struct StepInfo {
  int64_t step = 0;
  double lr = 0.0;    // the tracker's current lr (0 when unknown)
  double loss = 0.0;  // the loss passed to step() (NaN when none)
};

using MetricFn = std::function<Values(const StepInfo&)>;

/// A named group of values computed by one callback; the tracker times it as time.<name>.
struct Metric {
  std::string name;
  MetricFn fn;
  /// Evaluate only on steps that are multiples of this (0: at every record). Make it a
  /// multiple of the tracker's `every`, or the metric shows up only where both divide.
  int64_t every = 0;
};

struct TrackerOptions {
  int64_t every = 50;        // record on steps 0, every, 2 every, ...
  double lr = 0.0;           // when > 0: records lr and two_over_lr = 2 / lr (set_lr changes it)
  std::string label;         // when non-empty: recorded as "run" (plot legends)
  bool append = false;       // append to an existing file (resumed runs) instead of truncating
  /// Where the tracker reports what it is doing and warns (nullptr: silent).
  std::FILE* log = stderr;
  /// Records expected to take at least this many seconds are announced (see above).
  double announce_after_s = 1.0;
  /// Not on a terminal: at most one line about slow records per this many seconds (a log
  /// stays short; the JSONL has every record's cost).
  double log_interval_s = 60.0;
  /// Warn when overhead_total_s > warn_share * wall_s (<= 0: never) ...
  double warn_share = 0.25;
  /// ... once the tracker has existed this long (the first records dominate a short run).
  double warn_after_s = 30.0;
};

class Tracker {
 public:
  /// Creates (or truncates; see append) the file, making its parent directories.
  explicit Tracker(const std::string& path, TrackerOptions options = {});
  ~Tracker();
  Tracker(const Tracker&) = delete;
  Tracker& operator=(const Tracker&) = delete;

  /// Adds a metric (evaluated in the order added).
  Tracker& track(Metric metric);
  /// Adds a metric evaluated only on multiples of `every` steps.
  Tracker& track(Metric metric, int64_t every) {
    metric.every = every;
    return track(std::move(metric));
  }
  Tracker& track(std::string name, MetricFn fn, int64_t every = 0);
  /// A scalar callback `double()` recorded under `name`.
  template <class F>
    requires std::invocable<F&> && std::convertible_to<std::invoke_result_t<F&>, double>
  Tracker& track(std::string name, F fn, int64_t every = 0) {
    std::string key = name;
    return track(Metric{std::move(name),
                        [key, f = std::move(fn)](const StepInfo&) mutable {
                          return Values{{key, static_cast<double>(f())}};
                        },
                        every});
  }

  /// The learning rate used for lr / two_over_lr from now on (e.g. under a schedule).
  void set_lr(double lr) { options_.lr = lr; }
  double lr() const { return options_.lr; }

  /// Counts one training step; records when due. `loss` (optional, any one-element tensor)
  /// is recorded as "loss". Returns true when a record was written.
  bool step(const Tensor& loss = {});
  bool step(double loss);
  /// Writes a record for the current step now (due or not; every metric is evaluated),
  /// without counting a step. For the final state after the loop.
  void record(const Tensor& loss = {});
  /// True when the next step() will record.
  bool due() const;

  /// Steps counted so far.
  int64_t steps() const { return step_; }
  /// Total seconds spent inside the tracker (metrics and writing).
  double overhead_seconds() const { return overhead_total_; }
  int64_t records() const { return records_; }
  const std::string& path() const { return path_; }
  /// The last line written (without the newline), "" before the first.
  const std::string& last_line() const { return last_line_; }
  /// True once the overhead warning was given.
  bool warned() const { return warned_; }

 private:
  void write_record(double loss, bool all_metrics);
  void announce(const std::string& metric, bool done);
  bool check_overhead(double wall);
  std::string path_;
  TrackerOptions options_;
  std::vector<Metric> metrics_;
  int fd_ = -1;
  int64_t step_ = 0;
  int64_t records_ = 0;
  double overhead_total_ = 0.0;
  std::string last_line_;
  std::chrono::steady_clock::time_point start_;
  double last_record_s_ = -1.0;  // the previous record's cost (< 0 before the first)
  bool announcing_ = false;      // a status line is being shown for the current record
  bool terminal_ = false;        // log is a terminal
  bool warned_ = false;
  std::map<std::string, double> metric_total_s_;  // seconds per metric name, all records
  double last_log_wall_ = -1.0;  // wall_s of the last line about a slow record (< 0: none yet)
};

// ---- ready-made metrics (each holds a reference to the model: keep it alive) -------------

/// "probe_loss" = criterion(model(x), y) on the probe batch (no graph) and "probe_accuracy"
/// (argmax of the output vs int64 labels, or vs argmax of [N, O] float targets such as
/// one-hot rows; omitted for [N, 1] regression targets). The model runs in `mode`; its mode
/// and buffers are restored.
Metric probe_metrics(nn::Module& model, data::Batch probe, Criterion criterion, Mode mode = Mode::Eval);

/// "grad_norm" (L2 norm over every parameter's current .grad; absent when none is set) and
/// "weight_norm" (L2 norm of all parameters); with per_parameter also "grad_norm.<name>"
/// and "weight_norm.<name>" for each named parameter.
Metric norm_metrics(nn::Module& model, bool per_parameter = false);

enum class EigenMethod { Lanczos, Power };

struct SharpnessOptions {
  int64_t iters = 20;        // maximum Hessian-vector products per evaluation
  int64_t k = 1;             // eigenvalues wanted; k > 1 also records "hessian_top_k"
  double tol = 1e-4;         // relative residual to stop early (see EigenOptions)
  EigenMethod method = EigenMethod::Lanczos;
  Mode mode = Mode::Eval;    // model mode for the forward (BatchNorm)
  /// Start from the previous evaluation's top eigenvector mixed with an equal-norm random
  /// vector (an eigenvalue overtaking the previous top one is still found).
  bool warm_start = true;
  bool gauss_newton = false; // the Gauss-Newton matrix's top eigenvalue instead of H's
  uint64_t seed = 0;
  /// Per-parameter learning-rate multipliers as a flat [P] (tools::lr_multipliers): the
  /// sharpness is then that of D^(1/2) H D^(1/2) (ScaledOperator), the quantity gradient
  /// descent with those multipliers compares with 2 / lr. Undefined: plain H.
  Tensor lr_scale;
};

/// The per-parameter lr multipliers of `groups` (optim::param_groups(...), or an optimizer's
/// param_group(i)s) laid out like `params` ([P] float64, one value repeated over each
/// parameter's elements; 1 for parameters in no group). A group's own lr relative to the
/// tracker's lr is not included: give groups that share one lr.
Tensor lr_multipliers(const std::vector<Tensor>& params, const std::vector<optim::ParamGroup>& groups);

/// "sharpness": the largest algebraic eigenvalue of the Hessian of criterion(model(x), y)
/// on the probe batch (of D^(1/2) H D^(1/2) with options.lr_scale); with a tracker lr also "sharpness_x_lr_over_2" = sharpness * lr / 2
/// (1 = the edge of stability of gradient descent); "sharpness_hvps" (products used),
/// "sharpness_residual"; "hessian_top_k" when k > 1; "sharpness_mode": "eval" (BatchNorm's
/// running statistics) or "train" (batch statistics), the mode the Hessian's forward ran in.
Metric sharpness(nn::Module& model, data::Batch probe, Criterion criterion, SharpnessOptions options = {});

struct TraceMetricOptions {
  int64_t samples = 20;
  Mode mode = Mode::Eval;
  uint64_t seed = 0;         // the same probes every evaluation (less noise across steps)
};

/// "hessian_trace" (Hutchinson) and "hessian_trace_se" (its standard error).
Metric hessian_trace(nn::Module& model, data::Batch probe, Criterion criterion, TraceMetricOptions options = {});

struct NtkMetricOptions {
  bool traced = true;            // the output-traced kernel [N, N] (mean over outputs); else the full [N*O, N*O]
  int64_t eigenvalues = 32;      // how many of the largest eigenvalues "ntk_eigenvalues" lists (0: none)
  NtkMethod method = NtkMethod::Auto;
};

/// Empirical-NTK metrics on the probe batch (tools/ntk.hpp; the model runs in eval mode,
/// its mode is restored). The first evaluation's kernel is kept as K_0:
/// "ntk_rel_change" = ||K_t - K_0||_F / ||K_0||_F, "ntk_distance" (1 - cosine to K_0),
/// "ntk_trace", "ntk_eig_max", "ntk_eig_min", "ntk_condition_number", "ntk_effective_rank",
/// "ntk_target_alignment" (centered, vs probe.y), "ntk_label_gradient_alignment" (traced
/// kernel and int64 labels only), and "ntk_eigenvalues" (descending, the largest few).
Metric ntk_metrics(nn::Module& model, data::Batch probe, NtkMetricOptions options = {});
inline Metric ntk_metrics(nn::Module& model, const Tensor& x, const Tensor& y, NtkMetricOptions options = {}) {
  return ntk_metrics(model, data::Batch{x, y}, options);
}

}  // namespace kern::tools
