// Gradient clipping (torch.nn.utils.clip_grad_norm_ / clip_grad_value_ semantics).
#include <kern/autograd.hpp>
#include <kern/ops/elementwise.hpp>
#include <kern/optim/clip.hpp>

#include "update_utils.hpp"

#include <cmath>

namespace kern::optim {

namespace {

// The p-norm of one tensor's elements (accumulated in double), or max |x| for p = inf.
double tensor_norm(const Tensor& g, double p) {
  NoGradGuard ng;
  Tensor c = g.detach().contiguous();
  double acc = 0.0;
  detail::dispatch_float(c.dtype(), "clip_grad_norm_", [&]<typename T>() {
    const T* x = c.data_ptr<T>();
    const int64_t n = c.numel();
    if (std::isinf(p)) {
      for (int64_t i = 0; i < n; ++i) acc = std::max(acc, std::abs(static_cast<double>(x[i])));
      for (int64_t i = 0; i < n; ++i)
        if (std::isnan(x[i])) acc = std::numeric_limits<double>::quiet_NaN();
    } else if (p == 2.0) {
      for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i]) * x[i];
    } else if (p == 1.0) {
      for (int64_t i = 0; i < n; ++i) acc += std::abs(static_cast<double>(x[i]));
    } else if (p == 0.0) {
      for (int64_t i = 0; i < n; ++i) acc += x[i] != 0;
    } else {
      for (int64_t i = 0; i < n; ++i) acc += std::pow(std::abs(static_cast<double>(x[i])), p);
    }
  });
  if (std::isinf(p) || p == 0.0 || p == 1.0) return acc;
  return p == 2.0 ? std::sqrt(acc) : std::pow(acc, 1.0 / p);
}

}  // namespace

double grad_norm(const std::vector<Tensor>& params, double norm_type) {
  KERN_CHECK(norm_type >= 0.0 || std::isinf(norm_type), "clip_grad_norm_: invalid norm_type ",
             norm_type, " (must be >= 0 or inf)");
  KERN_CHECK(!std::isnan(norm_type), "clip_grad_norm_: norm_type is NaN");
  const bool is_inf = std::isinf(norm_type);
  double total = 0.0;
  bool any = false;
  for (const Tensor& p : params) {
    if (!p.defined() || !p.grad().defined()) continue;
    const double n = tensor_norm(p.grad(), norm_type);
    any = true;
    if (std::isnan(n)) total = n;
    else if (is_inf) total = std::max(total, n);
    else if (norm_type == 0.0) total += n;
    else total += std::pow(n, norm_type);
  }
  if (!any || is_inf || norm_type == 0.0) return total;
  return norm_type == 1.0 ? total : std::pow(total, 1.0 / norm_type);
}

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type,
                       bool error_if_nonfinite) {
  KERN_CHECK(max_norm >= 0.0, "clip_grad_norm_: max_norm must be >= 0, got ", max_norm);
  const double total = grad_norm(params, norm_type);
  KERN_CHECK(!(error_if_nonfinite && !std::isfinite(total)), "clip_grad_norm_: the total norm "
             "of order ", norm_type, " of the gradients is non-finite (", total,
             "), so it cannot be clipped");
  const double coef = max_norm / (total + 1e-6);
  // PyTorch multiplies by min(coef, 1): a no-op when coef >= 1 (a NaN norm propagates).
  if (coef >= 1.0) return total;
  NoGradGuard ng;
  for (const Tensor& p : params) {
    if (!p.defined() || !p.grad().defined()) continue;
    Tensor g = p.grad().detach();
    Tensor(p).set_grad((g * coef).detach());
  }
  return total;
}

void clip_grad_value_(const std::vector<Tensor>& params, double clip_value) {
  KERN_CHECK(clip_value >= 0.0, "clip_grad_value_: clip_value must be >= 0, got ", clip_value);
  NoGradGuard ng;
  for (const Tensor& p : params) {
    if (!p.defined() || !p.grad().defined()) continue;
    Tensor(p).set_grad(clamp(p.grad().detach(), -clip_value, clip_value).detach());
  }
}

}  // namespace kern::optim
