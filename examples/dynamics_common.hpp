#pragma once
// Pieces shared by the training-dynamics examples (edge_of_stability, sharpness_width,
// ntk_lazy_regime): the tanh MLP they train, the width-dependent preset, reading numbers back
// from a tracker record, and the preconditioned sharpness the lrs are calibrated against.
#include <fmt/format.h>
#include <kern/kern.hpp>
#include <kern/optim/param_groups.hpp>
#include <kern/param/param.hpp>
#include <kern/tools/hessian.hpp>
#include <kern/tools/tracker.hpp>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

namespace examples {

/// MLP 784 -> w -> tanh -> w -> tanh -> 10. One statement per layer: the init stream follows
/// the layer order.
inline std::shared_ptr<kern::nn::Sequential> tanh_mlp(int64_t w) {
  namespace nn = kern::nn;
  auto l0 = std::make_shared<nn::Linear>(784, w);
  auto l2 = std::make_shared<nn::Linear>(w, w);
  auto l4 = std::make_shared<nn::Linear>(w, 10);
  return std::make_shared<nn::Sequential>(l0, std::make_shared<nn::Tanh>(), l2, std::make_shared<nn::Tanh>(), l4);
}

/// "mup" (base width `base_width`) or "ntk".
inline kern::param::Preset width_preset(const std::string& name, int64_t width, int64_t base_width) {
  return name == "mup" ? kern::param::Preset::mup(width, base_width) : kern::param::Preset::ntk();
}

/// A numeric field of a tracker record line (NaN when absent or null).
inline double record_field(const std::string& line, const std::string& key) {
  const std::string pat = "\"" + key + "\":";
  const auto at = line.find(pat);
  if (at == std::string::npos || line.compare(at + pat.size(), 4, "null") == 0) return NAN;
  return std::stod(line.substr(at + pat.size()));
}

/// A JSON number, or null for NaN/Inf.
inline std::string json_number(double v) { return std::isfinite(v) ? fmt::format("{}", v) : "null"; }

/// lambda_max(D^1/2 H D^1/2) of the half-MSE loss on `data`, D the groups' lr multipliers:
/// the sharpness gradient descent compares with 2 / lr.
inline double preconditioned_sharpness(kern::nn::Module& model, const std::vector<kern::optim::ParamGroup>& groups,
                                       const kern::data::Batch& data) {
  namespace tools = kern::tools;
  tools::Hessian H(model, data.x, data.y, tools::half_mean_squared_error);
  tools::ScaledOperator S(H, tools::lr_multipliers(model.parameters(), groups).to(H.dtype()));
  return tools::lanczos(S, {.k = 1, .max_iters = 60, .tol = 1e-6}).eigenvalues[0];
}

}  // namespace examples
