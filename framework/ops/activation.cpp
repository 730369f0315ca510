// Softmax family. The forward is one fused, numerically stable pass per row (the row max is
// subtracted; it is a constant that cancels, so it needs no gradient). The backwards are
// written in differentiable ops on the saved output y:
//   softmax:     dx = y * (g - sum(g * y, dim))
//   log_softmax: dx = g - exp(y) * sum(g, dim)
// so higher derivatives are exact. float32 forwards run on oneDNN on the fast backend.
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include <cmath>
#include <limits>

#include "../backend/backend.hpp"
#include "kernel_utils.hpp"
#include "jvp_util.hpp"

namespace kern {

using G = std::vector<Tensor>;

namespace {

// x viewed as [outer, n, inner] around `dim` (contiguous).
struct Around {
  int64_t outer = 1, n = 1, inner = 1;
};

template <bool Log>
Tensor softmax_forward(const Tensor& x, int64_t dim, const char* op) {
  if (x.numel() == 0) return empty(x.shape(), x.dtype());  // no rows: never loop over them
  Tensor xc = contiguous(x.detach());
  Around a;
  const Shape& s = x.shape();
  for (int64_t d = 0; d < dim; ++d) a.outer *= s[d];
  a.n = x.dim() == 0 ? 1 : s[dim];
  for (int64_t d = dim + 1; d < x.dim(); ++d) a.inner *= s[d];
  Tensor out = empty(x.shape(), x.dtype());
  if (backend::use_fast(x.dtype()) && x.numel() > 0) {
    backend::softmax_fast(xc.data_ptr<float>(), out.data_ptr<float>(), a.outer, a.n, a.inner, Log);
    return out;
  }
  backend::count_path(backend::Primitive::Softmax, backend::Path::Reference);
  detail::dispatch_float(x.dtype(), op, [&]<typename T>() {
    const T* p = static_cast<const T*>(xc.raw_data());
    T* o = static_cast<T*>(out.raw_data());
    const int64_t n = a.n, inner = a.inner, rows = a.outer * a.inner;
    // One "row" = the n elements at stride `inner` for a fixed (outer, inner) pair.
#pragma omp parallel for schedule(static) if (rows > 1 && x.numel() > (1 << 14))
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / inner, i = r % inner;
      const T* xr = p + b * n * inner + i;
      T* orow = o + b * n * inner + i;
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < n; ++j) m = std::max(m, xr[j * inner]);
      // An all -inf row has no finite max: shift by 0 (the result is NaN, as in PyTorch).
      if (!std::isfinite(m)) m = 0;
      double sum = 0;
      if constexpr (Log) {
        for (int64_t j = 0; j < n; ++j) sum += std::exp(static_cast<double>(xr[j * inner] - m));
        const T lse = static_cast<T>(std::log(sum)) + m;
        for (int64_t j = 0; j < n; ++j) orow[j * inner] = xr[j * inner] - lse;
      } else {
        for (int64_t j = 0; j < n; ++j) {
          const T e = std::exp(xr[j * inner] - m);
          orow[j * inner] = e;
          sum += e;
        }
        const T inv = static_cast<T>(1.0 / sum);
        for (int64_t j = 0; j < n; ++j) orow[j * inner] *= inv;
      }
    }
  });
  return out;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) {
  detail::check_floating(x, "softmax");
  dim = wrap_dim(dim, x.dim(), "softmax");
  Tensor out = softmax_forward<false>(x, dim, "softmax");
  return record_op("softmax", out, {x}, [dim](const BackwardContext& c) {
    const Tensor& y = c.output;
    if (y.dim() == 0) return G{c.grad * 0.0};  // softmax of a scalar is the constant 1
    return G{y * (c.grad - sum(c.grad * y, {dim}, true))};
  }, SavedValues::none().output(), JvpRule::self_adjoint());
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  detail::check_floating(x, "log_softmax");
  dim = wrap_dim(dim, x.dim(), "log_softmax");
  Tensor out = softmax_forward<true>(x, dim, "log_softmax");
  return record_op("log_softmax", out, {x}, [dim](const BackwardContext& c) {
    const Tensor& y = c.output;
    if (y.dim() == 0) return G{c.grad * 0.0};  // log_softmax of a scalar is the constant 0
    return G{c.grad - exp(y) * sum(c.grad, {dim}, true)};
  }, SavedValues::none().output(), JvpRule([dim](const JvpContext& c) {  // t - sum(softmax(x) t, dim)
    const Tensor& y = c.output;
    if (y.dim() == 0) return c.tangents[0] * 0.0;
    return c.tangents[0] - sum(exp(y) * c.tangents[0], {dim}, true);
  }));
}

}  // namespace kern
