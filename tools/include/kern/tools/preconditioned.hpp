#pragma once
// Adam-aware curvature: the preconditioned sharpness lambda_max(P^-1 H) of Cohen et al. 2022
// ("Adaptive gradient methods at the edge of stability") and its stability threshold.
//
//   optim::Adam opt(model->parameters(), {.lr = 1e-3});
//   tools::Tracker tracker("run/adam.jsonl", {.every = 10, .lr = 1e-3});
//   tracker.track(tools::preconditioned_sharpness(*model, probe, tools::half_mean_squared_error, opt));
//
// Adam's step is theta <- theta - lr / (1 - beta1^t) * P^-1 m with the diagonal preconditioner
//   P = diag(sqrt(v_hat) + eps),   v_hat = exp_avg_sq / (1 - beta2^t)     (amsgrad: max_exp_avg_sq)
// read from the optimizer's state. Frozen P on a quadratic with Hessian H, the iteration is
// heavy-ball momentum on P^-1/2 H P^-1/2; along an eigenvector with eigenvalue a:
//   u_{t+1} = (1 + beta1 - lr (1 - beta1) a) u_t - beta1 u_{t-1},
// stable iff |1 + beta1 - lr (1 - beta1) a| < 1 + beta1 (both roots of z^2 - b z + beta1 in the
// unit disk, Jury's test with 0 <= beta1 < 1), i.e. a < (2 + 2 beta1) / ((1 - beta1) lr):
// 38 / lr for beta1 = 0.9. P^-1 H and P^-1/2 H P^-1/2 are similar, so lambda_max is the same;
// the symmetric form is what Lanczos needs. docs/adam_edge_of_stability.md has the full
// derivation.
//
// Vectors are flat [P] over the parameters (kern/tools/hessian.hpp's layout).
#include <kern/data/dataset.hpp>
#include <kern/nn/module.hpp>
#include <kern/optim/adam.hpp>
#include <kern/tools/hessian.hpp>
#include <kern/tools/tracker.hpp>

#include <cstdint>
#include <vector>

namespace kern::tools {

/// (2 + 2 beta1) / ((1 - beta1) lr): where Adam with momentum beta1 and frozen preconditioner
/// becomes unstable along the top eigenvector of P^-1 H (38 / lr for beta1 = 0.9).
double adam_stability_threshold(double lr, double beta1);

/// Adam's preconditioner for `params`: d = lr_i / lr_ref / (sqrt(v_hat) + eps), flat [P] float64,
/// so that P^-1 scaled this way is the per-coordinate step relative to lr_ref. lr_i is the
/// parameter's group lr times its lr multiplier (muP's Adam multipliers); lr_ref = opt.lr(0).
/// v_hat uses each parameter's own step count. Throws kern::Error when a parameter is not in
/// `opt` or has no state yet (before the first opt.step()); see adam_has_state.
Tensor adam_inverse_preconditioner(const optim::Adam& opt, const std::vector<Tensor>& params);
/// True when every parameter of `params` has Adam state (it has been stepped).
bool adam_has_state(const optim::Adam& opt, const std::vector<Tensor>& params);

/// D^1/2 A D^1/2 for a diagonal D > 0 given as d [P] (d = P^-1 from adam_inverse_preconditioner):
/// symmetric, with the eigenvalues of D A (= P^-1 H). `base` must outlive this operator.
class PreconditionedOperator : public SymmetricOperator {
 public:
  PreconditionedOperator(SymmetricOperator& base, const Tensor& inverse_preconditioner);
  int64_t size() const override { return base_.size(); }
  DType dtype() const override { return base_.dtype(); }
  /// v: [P] -> D^1/2 A D^1/2 v: [P].
  Tensor apply(const Tensor& v) override;

 private:
  SymmetricOperator& base_;
  Tensor sqrt_d_;  // [P] in base's dtype
};

struct PreconditionedSharpnessOptions {
  int64_t iters = 20;       // maximum Hessian-vector products (Lanczos steps) per evaluation
  double tol = 1e-4;        // relative residual to stop early
  Mode mode = Mode::Eval;   // model mode of the graph-building forward
  bool warm_start = true;   // start from the previous top eigenvector plus a random vector
  uint64_t seed = 0;
};

/// "preconditioned_sharpness" = lambda_max(P^-1 H) of criterion(model(x), y) on the probe
/// batch with Adam's current P (the optimizer must outlive the metric), and always
/// "preconditioned_threshold" = (2 + 2 beta1) / ((1 - beta1) opt.lr(0)),
/// "preconditioned_sharpness_ratio" = sharpness / threshold (1 = Adam's edge of stability),
/// "preconditioned_hvps", "preconditioned_residual". Before the first opt.step() there is
/// no P, and at lr 0 (a warmup or decay endpoint) the threshold is +infinity (null in
/// the JSON): only the threshold is recorded.
Metric preconditioned_sharpness(nn::Module& model, data::Batch probe, Criterion criterion, const optim::Adam& opt,
                                PreconditionedSharpnessOptions options = {});

}  // namespace kern::tools
