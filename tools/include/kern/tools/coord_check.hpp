#pragma once
// Coordinate check (Tensor Programs V, the mup library's coord_check): train models of
// several widths for a few steps on one fixed batch and record the mean |x| of every
// module's output at each step (t = 1 is the forward pass at init; t = k the forward pass
// after k - 1 updates, as in mup). Under a correct muP every curve is flat in width.
//
//   tools::CoordCheckOptions o;
//   o.widths = {128, 256, 512, 1024, 2048};
//   o.make_model = [](int64_t w) {
//     auto m = make_mlp(w);
//     param::apply(*m, param::Preset::mup(w, 256).zero_readout());
//     return m;
//   };
//   o.make_optimizer = tools::adam_with_records(1e-3);
//   o.x = inputs; o.y = labels;
//   auto result = tools::coord_check(o);
//   fmt::print("{}", result.table());
//   result.write_jsonl("coord.jsonl", "muP");   // then tools::plot_coord_check(...)
//
// Verdict per (module, t): the least-squares slope of log(mean |x|) against log(width) over
// all widths, and the ratio of mean |x| at the largest width to the second largest. The mup
// library's pass band: |slope| < max_slope (0.1) and ratio in [1/max_ratio, max_ratio] (1.2).
// A module whose output is exactly 0 at every width (a zero-initialized readout at t = 1)
// passes with `zero` set.
#include <kern/nn/module.hpp>
#include <kern/optim/optimizer.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace kern::tools {

struct CoordCheckOptions {
  std::vector<int64_t> widths;
  int steps = 3;
  /// Builds and parameterizes the model of one width (seeded by coord_check before each call).
  std::function<std::shared_ptr<nn::Module>(int64_t width)> make_model;
  /// Builds the optimizer of a model.
  std::function<std::unique_ptr<optim::Optimizer>(nn::Module& model)> make_optimizer;
  /// The fixed batch.
  Tensor x, y;
  /// loss(model output, y); default: cross entropy.
  std::function<Tensor(const Tensor& output, const Tensor& y)> loss;
  /// Which modules (by dotted name) to record; default: all but the root ("").
  std::function<bool(const std::string& name)> filter;
  /// kern::manual_seed(seed + s) before building each model of seed repetition s.
  uint64_t seed = 0;
  int nseeds = 1;
  double max_slope = 0.1;
  double max_ratio = 1.2;
};

/// Mean |x| of one module's output (averaged over seeds).
struct CoordStat {
  int64_t width = 0;
  std::string module;  // dotted name
  std::string type;    // Module::name(), e.g. "Linear"
  int t = 0;
  double l1 = 0.0;
};

struct LayerVerdict {
  std::string module;
  std::string type;
  int t = 0;
  double slope = 0.0;  // d log(l1) / d log(width), least squares over all widths
  double ratio = 1.0;  // l1(largest width) / l1(second largest)
  bool zero = false;   // exactly 0 at every width
  bool pass = false;   // |slope| < max_slope and ratio within the band (or zero)
};

struct CoordCheckResult {
  std::vector<int64_t> widths;
  int steps = 0;
  std::vector<CoordStat> stats;
  std::vector<LayerVerdict> verdicts;  // module order, then t
  /// The verdict of `module` at step t (throws if absent).
  const LayerVerdict& verdict(const std::string& module, int t) const;
  double l1(const std::string& module, int64_t width, int t) const;
  /// Recorded module names, in model order.
  std::vector<std::string> modules() const;
  bool pass() const;
  /// A table: one row per (module, t) with mean |x| per width, slope, ratio and verdict.
  std::string table() const;
  /// Appends JSON lines: {"kind":"coord","label",...,"width","module","type","t","l1"} per
  /// stat and {"kind":"verdict","label",...,"module","t","slope","ratio","pass"} per verdict.
  void write_jsonl(const std::string& path, const std::string& label, bool append = false) const;
};

CoordCheckResult coord_check(const CoordCheckOptions& options);

/// A make_model for coord_check from an unparameterized factory build(width): builds the model
/// of each width and applies a parameterization to it. scheme: "mup" (the mup library's
/// Table 8, base shapes from build(base_width): roles from shapes), "mup_table3", "sp"
/// (PyTorch's default init, every lr the same) or "ntk". zero_readout: the readout starts at
/// zero (mup's coordinate checks often do). Throws for an unknown scheme.
std::function<std::shared_ptr<nn::Module>(int64_t width)> parameterized(
    std::function<std::shared_ptr<nn::Module>(int64_t width)> build, const std::string& scheme,
    int64_t base_width, bool zero_readout = false);

/// A coord_check filter for deep models: the model's own output (the logits, recorded under
/// "" and shown as "(model)"), its top-level children (stem, head, ...) and every element of a
/// container (a name ending in a number: stages.0, stages.0.blocks.1, layers.3, ...).
bool blocks_and_output(const std::string& module);

/// An optimizer factory: Adam with the model's parameterization records (optim::param_groups).
std::function<std::unique_ptr<optim::Optimizer>(nn::Module&)> adam_with_records(double lr);
/// An optimizer factory: SGD with the model's parameterization records.
std::function<std::unique_ptr<optim::Optimizer>(nn::Module&)> sgd_with_records(double lr);

/// The plotting script: $KERN_SCRIPT_DIR/plot_coord_check.py, else share/kern/ of an
/// installed kern, else tools/plot_coord_check.py in the source tree kern was built from.
std::string default_plot_script();
/// Renders a JSON-lines file (from write_jsonl, one or more labels) to a log-log PNG with
/// /usr/bin/python3 and matplotlib. Returns false, and prints why, when that fails.
bool plot_coord_check(const std::string& jsonl, const std::string& png,
                      const std::string& title = "", const std::string& script = "");

}  // namespace kern::tools
