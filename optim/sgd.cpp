// SGD: PyTorch 1.13's _single_tensor_sgd, element by element on contiguous buffers.
#include <kern/optim/sgd.hpp>

#include "update_utils.hpp"

namespace kern::optim {

namespace {
void validate(const SGDOptions& o) {
  KERN_CHECK(o.lr >= 0.0, "SGD: invalid learning rate ", o.lr, " (must be >= 0)");
  KERN_CHECK(o.momentum >= 0.0, "SGD: invalid momentum ", o.momentum, " (must be >= 0)");
  KERN_CHECK(o.weight_decay >= 0.0, "SGD: invalid weight_decay ", o.weight_decay,
             " (must be >= 0)");
  KERN_CHECK(!o.nesterov || (o.momentum > 0.0 && o.dampening == 0.0),
             "SGD: nesterov momentum requires momentum > 0 and dampening = 0, got momentum ",
             o.momentum, ", dampening ", o.dampening);
}
}  // namespace

SGD::SGD(std::vector<Tensor> params, SGDOptions options)
    : Optimizer("SGD", Family::SGD, (validate(options), std::move(params)), options.lr,
                options.weight_decay),
      options_(options) {}

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions options)
    : Optimizer("SGD", Family::SGD, (validate(options), std::move(groups)), options.lr,
                options.weight_decay),
      options_(options) {}

std::vector<std::string> SGD::state_names() const {
  if (options_.momentum == 0.0) return {};
  return {"momentum_buffer"};
}

void SGD::step() {
  NoGradGuard ng;
  const double momentum = options_.momentum, dampening = options_.dampening;
  const bool nesterov = options_.nesterov;
  for_each_update([&](const Tensor& p, const Tensor& grad, size_t index, double lr, double wd) {
    Tensor buf_t;
    bool first = false;
    if (momentum != 0.0) {
      Tensor& b = state(index, "momentum_buffer");
      if (!b.defined()) {
        b = detail::zeros_like_param(p);
        first = true;  // PyTorch initializes the buffer to the first (decayed) gradient
      }
      buf_t = b;
      buf_t.bump_version();  // written in place below
    }
    detail::update_in_place(p, [&](const Tensor& pc) {
      detail::dispatch_float(p.dtype(), "SGD", [&]<typename T>() {
        T* w = pc.data_ptr<T>();
        const T* g = grad.data_ptr<T>();
        T* buf = buf_t.defined() ? buf_t.data_ptr<T>() : nullptr;
        const T twd = static_cast<T>(wd), tm = static_cast<T>(momentum),
                tdamp = static_cast<T>(1.0 - dampening), tlr = static_cast<T>(-lr);
        const int64_t n = pc.numel();
#pragma omp parallel for if (n > 32768)
        for (int64_t i = 0; i < n; ++i) {
          T d = g[i];
          if (wd != 0.0) d = d + twd * w[i];
          if (buf) {
            buf[i] = first ? d : buf[i] * tm + tdamp * d;
            d = nesterov ? d + tm * buf[i] : buf[i];
          }
          w[i] = w[i] + tlr * d;
        }
      });
    });
  });
}

}  // namespace kern::optim
