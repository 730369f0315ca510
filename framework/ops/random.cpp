// Random ops. Masks are drawn sequentially from the Generator in row-major element order,
// so the same seed gives the same mask on every run and thread count.
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include "kernel_utils.hpp"

namespace kern {

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  detail::check_floating(x, "dropout");
  KERN_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability p must be in [0, 1], got ", p, " (input ", x.shape(), ")");
  if (!training || p == 0.0) return x;
  if (p == 1.0) return x * 0.0;  // every element dropped; keeps the (zero) gradient path
  Generator& g = gen ? *gen : default_generator();
  // mask: 0 with probability p, else 1 / (1 - p); a constant, so d out / dx = mask.
  Tensor mask = empty(x.shape(), x.dtype());
  const int64_t n = x.numel();
  detail::dispatch_float(x.dtype(), "dropout", [&]<typename T>() {
    T* m = static_cast<T*>(mask.raw_data());
    const T scale = static_cast<T>(1.0 / (1.0 - p));
    for (int64_t i = 0; i < n; ++i) m[i] = g.uniform() < p ? T(0) : scale;
  });
  return x * mask;
}

}  // namespace kern
