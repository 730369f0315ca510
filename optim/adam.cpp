// Adam / AdamW: PyTorch 1.13's _single_tensor_adam(w), element by element on contiguous
// buffers. The per-parameter step counter is a 0-dim float64 tensor so it serializes as-is.
#include <kern/optim/adam.hpp>

#include "update_utils.hpp"

#include <cmath>

namespace kern::optim {

namespace {
AdamOptions from_w(const AdamWOptions& o) {
  return {.lr = o.lr, .betas = o.betas, .eps = o.eps, .weight_decay = o.weight_decay,
          .amsgrad = o.amsgrad};
}

const AdamOptions& validated(const std::string& name, const AdamOptions& o) {
  KERN_CHECK(o.lr >= 0.0, name, ": invalid learning rate ", o.lr, " (must be >= 0)");
  KERN_CHECK(o.eps >= 0.0, name, ": invalid eps ", o.eps, " (must be >= 0)");
  KERN_CHECK(o.betas.first >= 0.0 && o.betas.first < 1.0, name, ": invalid beta1 ",
             o.betas.first, " (must be in [0, 1))");
  KERN_CHECK(o.betas.second >= 0.0 && o.betas.second < 1.0, name, ": invalid beta2 ",
             o.betas.second, " (must be in [0, 1))");
  KERN_CHECK(o.weight_decay >= 0.0, name, ": invalid weight_decay ", o.weight_decay,
             " (must be >= 0)");
  return o;
}
}  // namespace

Adam::Adam(std::vector<Tensor> params, AdamOptions options)
    : Adam("Adam", std::move(params), options, false) {}
Adam::Adam(std::vector<ParamGroup> groups, AdamOptions options)
    : Adam("Adam", std::move(groups), options, false) {}

Adam::Adam(std::string name, std::vector<ParamGroup> groups, AdamOptions options, bool decoupled)
    : Optimizer(name, Family::Adam, std::move(groups), validated(name, options).lr,
                options.weight_decay),
      options_(options),
      decoupled_(decoupled) {}
Adam::Adam(std::string name, std::vector<Tensor> params, AdamOptions options, bool decoupled)
    : Optimizer(name, Family::Adam, std::move(params), validated(name, options).lr,
                options.weight_decay),
      options_(options),
      decoupled_(decoupled) {}

AdamW::AdamW(std::vector<Tensor> params, AdamWOptions options)
    : Adam("AdamW", std::move(params), from_w(options), true) {}
AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options)
    : Adam("AdamW", std::move(groups), from_w(options), true) {}

std::vector<std::string> Adam::state_names() const {
  if (options_.amsgrad) return {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  return {"step", "exp_avg", "exp_avg_sq"};
}

void Adam::step() {
  NoGradGuard ng;
  const double beta1 = options_.betas.first, beta2 = options_.betas.second, eps = options_.eps;
  const bool amsgrad = options_.amsgrad;
  for_each_update([&](const Tensor& p, const Tensor& grad, size_t index, double lr, double wd) {
    if (!has_state(index)) {
      state(index, "step") = scalar_tensor(0.0, DType::Float64);
      state(index, "exp_avg") = detail::zeros_like_param(p);
      state(index, "exp_avg_sq") = detail::zeros_like_param(p);
      if (amsgrad) state(index, "max_exp_avg_sq") = detail::zeros_like_param(p);
    }
    double* step_ptr = state(index, "step").data_ptr<double>();
    const double step = (*step_ptr += 1.0);
    Tensor m_t = state(index, "exp_avg"), v_t = state(index, "exp_avg_sq");
    Tensor vmax_t = amsgrad ? state(index, "max_exp_avg_sq") : Tensor();
    for (const Tensor& t : {state(index, "step"), m_t, v_t, vmax_t})  // all written in place below
      if (t.defined()) t.bump_version();

    const double bias_correction1 = 1.0 - std::pow(beta1, step);
    const double bias_correction2 = 1.0 - std::pow(beta2, step);
    const double step_size = lr / bias_correction1;
    const double bias_correction2_sqrt = std::sqrt(bias_correction2);

    detail::update_in_place(p, [&](const Tensor& pc) {
      detail::dispatch_float(p.dtype(), name_, [&]<typename T>() {
        T* w = pc.data_ptr<T>();
        const T* g = grad.data_ptr<T>();
        T* m = m_t.data_ptr<T>();
        T* v = v_t.data_ptr<T>();
        T* vmax = amsgrad ? vmax_t.data_ptr<T>() : nullptr;
        const T b1 = static_cast<T>(beta1), b2 = static_cast<T>(beta2);
        const T one_b1 = static_cast<T>(1.0 - beta1), one_b2 = static_cast<T>(1.0 - beta2);
        const T twd = static_cast<T>(wd), decay = static_cast<T>(1.0 - lr * wd);
        const T bc2s = static_cast<T>(bias_correction2_sqrt), teps = static_cast<T>(eps);
        const T neg_step = static_cast<T>(-step_size);
        const bool decoupled = decoupled_, has_wd = wd != 0.0;
        const int64_t n = pc.numel();
#pragma omp parallel for if (n > 32768)
        for (int64_t i = 0; i < n; ++i) {
          T gi = g[i];
          if (decoupled)
            w[i] = w[i] * decay;
          else if (has_wd)
            gi = gi + twd * w[i];
          m[i] = m[i] * b1 + one_b1 * gi;
          v[i] = v[i] * b2 + one_b2 * gi * gi;
          T denom;
          if (vmax) {
            if (!std::isnan(vmax[i]) && !(v[i] <= vmax[i])) vmax[i] = v[i];  // NaN sticks (torch.maximum)
            denom = std::sqrt(vmax[i]) / bc2s + teps;
          } else {
            denom = std::sqrt(v[i]) / bc2s + teps;
          }
          w[i] = w[i] + neg_step * m[i] / denom;
        }
      });
    });
  });
}

}  // namespace kern::optim
