// Losses, composed from differentiable ops (log_softmax, gather, elementwise, reductions), so
// their derivatives of every order come for free.
//   nll_loss_i      = -logp[i, t_i]
//   cross_entropy_i = (1 - eps) * nll_i + eps * mean_c(-logp[i, c]),  logp = log_softmax(logits)
//   mse_loss        = (input - target)^2
// followed by the reduction ("mean", "sum" or "none").
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include "kernel_utils.hpp"

namespace kern {

namespace {

void check_reduction(std::string_view reduction, const char* op) {
  KERN_CHECK(reduction == "mean" || reduction == "sum" || reduction == "none", op,
             ": reduction must be \"mean\", \"sum\" or \"none\", got \"", reduction, "\"");
}

Tensor reduce(const Tensor& per_elem, std::string_view reduction) {
  if (reduction == "mean") return mean(per_elem);
  if (reduction == "sum") return sum(per_elem);
  return per_elem;
}

// Checks x: [N, C] floating and target: [N] int64 with labels in [0, C).
void check_class_target(const Tensor& x, const Tensor& target, const char* op, const char* xname) {
  detail::check_floating(x, op);
  KERN_CHECK(x.dim() == 2, op, ": ", xname, " must be [N, C], got shape ", x.shape());
  KERN_CHECK(target.dtype() == DType::Int64, op, ": target must be int64 class indices, got ", target.dtype(),
             " ", target.shape(), " (", xname, " ", x.shape(), ")");
  KERN_CHECK(target.dim() == 1 && target.shape()[0] == x.shape()[0], op, ": target must be [N] = [",
             x.shape()[0], "], got shape ", target.shape(), " (", xname, " ", x.shape(), ")");
  const int64_t C = x.shape()[1];
  for (int64_t t : target.to_vector<int64_t>())
    KERN_CHECK(t >= 0 && t < C, op, ": target label ", t, " is out of range for C = ", C, " classes (", xname, " ",
               x.shape(), ")");
}

// -logp[i, target_i]: [N]
Tensor picked_nll(const Tensor& logp, const Tensor& target) {
  return -squeeze(gather(logp, 1, unsqueeze(contiguous(target), 1)), 1);
}

}  // namespace

Tensor nll_loss(const Tensor& log_probs, const Tensor& target, std::string_view reduction) {
  check_reduction(reduction, "nll_loss");
  check_class_target(log_probs, target, "nll_loss", "log_probs");
  return reduce(picked_nll(log_probs, target), reduction);
}

Tensor cross_entropy(const Tensor& logits, const Tensor& target, double label_smoothing,
                     std::string_view reduction) {
  check_reduction(reduction, "cross_entropy");
  check_class_target(logits, target, "cross_entropy", "logits");
  KERN_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
             "cross_entropy: label_smoothing must be in [0, 1], got ", label_smoothing);
  Tensor logp = log_softmax(logits, 1);
  Tensor loss = picked_nll(logp, target);
  if (label_smoothing > 0.0)
    loss = loss * (1.0 - label_smoothing) - mean(logp, {1}) * label_smoothing;
  return reduce(loss, reduction);
}

Tensor mse_loss(const Tensor& input, const Tensor& target, std::string_view reduction) {
  check_reduction(reduction, "mse_loss");
  detail::check_floating(input, "mse_loss");
  KERN_CHECK(input.dtype() == target.dtype(), "mse_loss: input is ", input.dtype(), " ", input.shape(),
             " but target is ", target.dtype(), " ", target.shape());
  // Equal shapes only: broadcasting [N, 1] against [N] is almost always a bug.
  KERN_CHECK(input.shape() == target.shape(), "mse_loss: input ", input.shape(), " and target ", target.shape(),
             " must have the same shape");
  Tensor d = input - target;
  return reduce(d * d, reduction);
}

}  // namespace kern
