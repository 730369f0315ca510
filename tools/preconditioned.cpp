// Adam's preconditioner read from the optimizer state, the operator P^-1/2 H P^-1/2 and the
// tracker metric "preconditioned_sharpness" (see kern/tools/preconditioned.hpp).
#include <kern/ops.hpp>
#include <kern/tools/preconditioned.hpp>

#include <limits>

#include <cmath>
#include <map>
#include <memory>
#include <string>

namespace kern::tools {

double adam_stability_threshold(double lr, double beta1) {
  KERN_CHECK(lr > 0.0, "adam_stability_threshold: lr must be > 0, got ", lr);
  KERN_CHECK(beta1 >= 0.0 && beta1 < 1.0, "adam_stability_threshold: beta1 must be in [0, 1), got ", beta1);
  return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr);
}

namespace {

// For each of `params`: its global index in `opt` (group order) and its effective lr
// (group lr x multiplier).
struct Placement {
  size_t index;
  double lr;
};

std::vector<Placement> place(const optim::Adam& opt, const std::vector<Tensor>& params) {
  std::map<const void*, Placement> where;
  size_t index = 0;
  for (size_t g = 0; g < opt.num_groups(); ++g) {
    const auto& group = opt.param_group(g);
    for (size_t j = 0; j < group.params.size(); ++j, ++index)
      where.emplace(group.params[j].impl_ptr().get(), Placement{index, *group.lr * group.lr_mult[j]});
  }
  std::vector<Placement> out;
  for (size_t i = 0; i < params.size(); ++i) {
    auto it = where.find(params[i].impl_ptr().get());
    KERN_CHECK(it != where.end(), "adam_inverse_preconditioner: parameter ", i, " (shape ", params[i].shape(),
               ") is not optimized by this Adam");
    out.push_back(it->second);
  }
  return out;
}

std::map<std::string, Tensor> state_map(const optim::Adam& opt) {
  std::map<std::string, Tensor> m;
  for (auto& [k, t] : opt.state_dict()) m.emplace(k, t);
  return m;
}

}  // namespace

bool adam_has_state(const optim::Adam& opt, const std::vector<Tensor>& params) {
  const auto state = state_map(opt);
  for (const auto& pl : place(opt, params))
    if (!state.count(fmt::format("state.{}.exp_avg_sq", pl.index))) return false;
  return true;
}

Tensor adam_inverse_preconditioner(const optim::Adam& opt, const std::vector<Tensor>& params) {
  const auto state = state_map(opt);
  const double beta2 = opt.options().betas.second, eps = opt.options().eps;
  const double lr_ref = opt.lr(0);
  KERN_CHECK(lr_ref > 0.0, "adam_inverse_preconditioner: the optimizer's lr (group 0) is ", lr_ref, ", must be > 0");
  const std::string second = opt.options().amsgrad ? "max_exp_avg_sq" : "exp_avg_sq";
  const auto placements = place(opt, params);
  std::vector<double> d;
  d.reserve(static_cast<size_t>(numel(params)));
  for (size_t i = 0; i < params.size(); ++i) {
    const auto key = [&](const std::string& n) { return fmt::format("state.{}.{}", placements[i].index, n); };
    auto v_it = state.find(key(second));
    auto s_it = state.find(key("step"));
    KERN_CHECK(v_it != state.end() && s_it != state.end(), "adam_inverse_preconditioner: parameter ", i, " (shape ",
               params[i].shape(), ") has no Adam state yet (call it after the first opt.step())");
    const double step = s_it->second.item();
    KERN_CHECK(step >= 1.0, "adam_inverse_preconditioner: parameter ", i, " has step ", step, " (must be >= 1)");
    const double bc2 = 1.0 - std::pow(beta2, step);
    const double scale = placements[i].lr / lr_ref;
    // P_jj = sqrt(v_j / bc2) + eps, exactly the denominator of Adam's update.
    for (double v : v_it->second.contiguous().to(DType::Float64).to_vector<double>())
      d.push_back(scale / (std::sqrt(v / bc2) + eps));
  }
  return from_vector<double>(d, {static_cast<int64_t>(d.size())});
}

// ---- PreconditionedOperator -----------------------------------------------------------------

PreconditionedOperator::PreconditionedOperator(SymmetricOperator& base, const Tensor& inverse_preconditioner)
    : base_(base) {
  const Tensor& d = inverse_preconditioner;
  KERN_CHECK(d.defined() && d.dim() == 1 && d.size(0) == base.size(), "PreconditionedOperator: expected d of shape [",
             base.size(), "], got ", d.defined() ? fmt::format("{}", d.shape()) : std::string("undefined"));
  NoGradGuard ng;
  Tensor d64 = d.detach().to(DType::Float64);
  const double lo = min(d64).item();
  KERN_CHECK(std::isfinite(lo) && lo > 0.0 && std::isfinite(max(d64).item()),
             "PreconditionedOperator: d must be finite and > 0 (min ", lo, ")");
  sqrt_d_ = sqrt(d64).to(base.dtype()).contiguous();
}

Tensor PreconditionedOperator::apply(const Tensor& v) {
  KERN_CHECK(v.dim() == 1 && v.size(0) == size(), "PreconditionedOperator::apply: expected [", size(), "], got ",
             v.shape());
  NoGradGuard ng;
  ++products_;
  return base_.apply(v * sqrt_d_) * sqrt_d_;
}

// ---- the tracker metric ---------------------------------------------------------------------

Metric preconditioned_sharpness(nn::Module& model, data::Batch probe, Criterion criterion, const optim::Adam& opt,
                                PreconditionedSharpnessOptions options) {
  KERN_CHECK(options.iters >= 1, "preconditioned_sharpness: iters must be >= 1, got ", options.iters);
  KERN_CHECK(probe.x.defined() && probe.y.defined(), "preconditioned_sharpness: the probe batch needs x and y");
  auto previous = std::make_shared<Tensor>();  // the last top eigenvector (warm start)
  return Metric{"preconditioned", [&model, &opt, probe, criterion, options, previous](const StepInfo& info) {
                  const double beta1 = opt.options().betas.first;
                  // lr 0 (the first step of a warmup schedule): no step is taken, nothing can be
                  // unstable: the threshold is +infinity (written as null) and the ratio 0.
                  const double lr = opt.lr(0);
                  Values v{{"preconditioned_threshold",
                            lr > 0.0 ? adam_stability_threshold(lr, beta1) : std::numeric_limits<double>::infinity()}};
                  std::vector<Tensor> params;
                  for (auto& p : model.parameters())
                    if (p.requires_grad()) params.push_back(p);
                  // no P before the first step; at lr 0 the group multipliers are undefined
                  if (!(lr > 0.0) || !adam_has_state(opt, params)) return v;
                  Hessian H(model, probe.x, probe.y, criterion, {.mode = options.mode});
                  PreconditionedOperator op(H, adam_inverse_preconditioner(opt, H.params()));
                  EigenOptions eo{.k = 1,
                                  .which = Which::LargestAlgebraic,
                                  .max_iters = std::min(options.iters, op.size()),
                                  .tol = options.tol,
                                  .seed = options.seed + static_cast<uint64_t>(info.step),
                                  .v0 = Tensor()};
                  if (options.warm_start && previous->defined() && previous->numel() == op.size()) {
                    // As tools::sharpness: an eigenvalue that overtook the previous top one keeps
                    // the random half's weight in the Krylov space.
                    NoGradGuard ng;
                    Generator gen(options.seed + 7919 * static_cast<uint64_t>(info.step + 1));
                    Tensor r = randn({op.size()}, op.dtype(), &gen);
                    eo.v0 = *previous / norm(*previous).item() + r / norm(r).item();
                  }
                  EigenResult r = lanczos(op, eo);
                  *previous = r.eigenvectors.at(0);
                  const double s = r.eigenvalues[0];
                  v.emplace_back("preconditioned_sharpness", s);
                  v.emplace_back("preconditioned_sharpness_ratio", s / std::get<double>(v[0].second));
                  v.emplace_back("preconditioned_hvps", static_cast<double>(r.products));
                  v.emplace_back("preconditioned_residual", r.residuals[0]);
                  return v;
                }};
}

}  // namespace kern::tools
