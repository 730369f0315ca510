// Real FFTs along the last dim and the complex product, complex values being a trailing
// dim of 2 (re, im). rfft and irfft are each other's adjoint up to per-bin scalings, so
// each backward is the other transform and the pair is closed under differentiation.
//
// Adjoints (real inner product over the (re, im) parts; c_k = 1 for k = 0 and, for even n,
// k = n/2, c_k = 2 otherwise):
//   rfft  X_k = sum_t x_t e^{-2 pi i k t/n}, k = 0..n/2:
//     grad_x_t = Re sum_k G_k e^{+2 pi i k t/n} = n * irfft(G_k / c_k, n)_t
//     (irfft multiplies bin k by c_k / n; imaginary parts of the end bins contribute
//     nothing to either side since e^{...} is real there.)
//   irfft y_t = (1/n) Re sum_k c_k Y_k e^{+2 pi i k t/n}:
//     grad_Y_k = (c_k / n) * rfft(g)_k (rfft's end bins have exactly zero imaginary part,
//     matching the ignored imaginary inputs).
// Zero padding / truncation to n is pad / narrow, whose gradients are automatic.
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include "../backend/backend.hpp"
#include "kernel_utils.hpp"

namespace kern {

using G = std::vector<Tensor>;

namespace {

// Per-bin scale, shaped [n/2 + 1, 1] to broadcast over [..., n/2 + 1, 2]:
// `interior` for 0 < k < n/2 (k < n/2 exactly, so for odd n every k > 0), `ends` for the rest.
Tensor bin_scale(int64_t n, double ends, double interior, DType dtype) {
  const int64_t nb = n / 2 + 1;
  std::vector<double> s(nb, interior);
  s[0] = ends;
  if (n % 2 == 0) s[nb - 1] = ends;
  return from_vector<double>(s, {nb, 1}).to(dtype);
}

Tensor irfft_exact(const Tensor& X, int64_t n);

// x: [..., n] -> [..., n/2 + 1, 2]
Tensor rfft_exact(const Tensor& x, int64_t n) {
  Tensor xc = contiguous(x.detach());
  const int64_t rows = n == 0 ? 0 : x.numel() / n;
  Shape shape = x.shape();
  shape.back() = n / 2 + 1;
  shape.push_back(2);
  Tensor out = empty(shape, x.dtype());
  detail::dispatch_float(x.dtype(), "rfft", [&]<typename T>() {
    backend::rfft_rows<T>(static_cast<const T*>(xc.raw_data()), rows, n, static_cast<T*>(out.raw_data()));
  });
  return record_op("rfft", out, {x}, [n](const BackwardContext& c) {
    return G{irfft_exact(c.grad * bin_scale(n, 1.0, 0.5, c.grad.dtype()), n) * static_cast<double>(n)};
  });
}

// X: [..., n/2 + 1, 2] -> [..., n]
Tensor irfft_exact(const Tensor& X, int64_t n) {
  Tensor Xc = contiguous(X.detach());
  Shape shape(X.shape().begin(), X.shape().end() - 1);
  shape.back() = n;
  const int64_t rows = Shape(shape.begin(), shape.end() - 1).numel();
  Tensor out = empty(shape, X.dtype());
  detail::dispatch_float(X.dtype(), "irfft", [&]<typename T>() {
    backend::irfft_rows<T>(static_cast<const T*>(Xc.raw_data()), rows, n, static_cast<T*>(out.raw_data()));
  });
  return record_op("irfft", out, {X}, [n](const BackwardContext& c) {
    const double inv = 1.0 / static_cast<double>(n);
    return G{rfft_exact(c.grad, n) * bin_scale(n, inv, 2.0 * inv, c.grad.dtype())};
  });
}

}  // namespace

Tensor rfft(const Tensor& x, int64_t n) {
  detail::check_floating(x, "rfft");
  KERN_CHECK(x.dim() >= 1, "rfft: input must have at least 1 dim, got shape ", x.shape());
  const int64_t L = x.shape().back();
  if (n == 0) n = L;
  KERN_CHECK(n >= 1, "rfft: transform length n must be positive, got n = ", n, " for input ", x.shape());
  Tensor xn = x;
  if (n > L) xn = pad(x, {0, n - L});
  else if (n < L) xn = narrow(x, -1, 0, n);
  return rfft_exact(xn, n);
}

Tensor irfft(const Tensor& X, int64_t n) {
  detail::check_floating(X, "irfft");
  KERN_CHECK(X.dim() >= 2 && X.shape().back() == 2, "irfft: input must be a complex spectrum [..., bins, 2] ",
             "(trailing dim 2 = re, im), got shape ", X.shape());
  KERN_CHECK(n >= 1, "irfft: output length n must be positive, got n = ", n, " for input ", X.shape());
  const int64_t nb = n / 2 + 1, have = X.shape()[X.dim() - 2];
  KERN_CHECK(have >= 1, "irfft: input ", X.shape(), " has no frequency bins");
  // Like torch.fft.irfft: the spectrum is zero-padded or truncated to n/2 + 1 bins.
  Tensor Xn = X;
  if (have < nb) Xn = pad(X, {0, 0, 0, nb - have});
  else if (have > nb) Xn = narrow(X, -2, 0, nb);
  return irfft_exact(Xn, n);
}

Tensor complex_mul(const Tensor& a, const Tensor& b) {
  detail::check_same_dtype(a, b, "complex_mul");
  detail::check_floating(a, "complex_mul");
  KERN_CHECK(a.dim() >= 1 && b.dim() >= 1 && a.shape().back() == 2 && b.shape().back() == 2,
             "complex_mul: operands must have a trailing dim of 2 (re, im), got ", a.shape(), " and ", b.shape());
  const Shape sa(a.shape().begin(), a.shape().end() - 1), sb(b.shape().begin(), b.shape().end() - 1);
  const Shape base = broadcast_shapes(sa, sb, "complex_mul");
  Shape shape = base;
  shape.push_back(2);
  Tensor out = empty(shape, a.dtype());
  // Loop over the broadcast complex elements; the imaginary part sits one dim-(-1) stride on.
  Tensor ar = select(a.detach(), -1, 0), br = select(b.detach(), -1, 0);
  const int64_t ai = a.stride(-1), bi = b.stride(-1);
  std::vector<int64_t> os = contiguous_strides(shape);
  os.pop_back();
  detail::dispatch_float(a.dtype(), "complex_mul", [&]<typename T>() {
    const T* pa = static_cast<const T*>(a.raw_data());
    const T* pb = static_cast<const T*>(b.raw_data());
    T* po = static_cast<T*>(out.raw_data());
    detail::StridedLoop<3> loop(base, {os, detail::broadcast_strides(ar, base), detail::broadcast_strides(br, base)});
    loop.run([&](const std::array<int64_t, 3>& off, int64_t m, const std::array<int64_t, 3>& st) {
      for (int64_t i = 0; i < m; ++i) {
        const T* x = pa + off[1] + i * st[1];
        const T* y = pb + off[2] + i * st[2];
        T* o = po + off[0] + i * st[0];
        const T xr = x[0], xi = x[ai], yr = y[0], yi = y[bi];
        o[0] = xr * yr - xi * yi;
        o[1] = xr * yi + xi * yr;
      }
    });
  });
  // d<g, a b>/da = g conj(b), d/db = g conj(a); broadcast dims are reduced by the engine.
  return record_op("complex_mul", out, {a, b}, [](const BackwardContext& c) {
    const Tensor conj = from_vector<double>({1.0, -1.0}, {2}).to(c.grad.dtype());
    return G{c.needs[0] ? complex_mul(c.grad, c.inputs[1] * conj) : Tensor(),
             c.needs[1] ? complex_mul(c.grad, c.inputs[0] * conj) : Tensor()};
  });
}

}  // namespace kern
