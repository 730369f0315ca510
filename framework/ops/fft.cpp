// Real FFTs along the last dim and the complex product, complex values being a trailing
// dim of 2 (re, im). rfft and irfft are each other's adjoint up to per-bin weights, so each
// backward is the other transform and the pair is closed under differentiation.
//
// Adjoints (real inner product over the (re, im) parts; c_k = 1 for k = 0 and, for even n,
// k = n/2, c_k = 2 otherwise):
//   rfft  X_k = sum_t x_t e^{-2 pi i k t/n}, k = 0..n/2:
//     grad_x_t = Re sum_k G_k e^{+2 pi i k t/n} = n * irfft(G_k / c_k, n)_t
//     (irfft weighs bin k by c_k / n; the imaginary parts of the end bins contribute nothing
//     on either side since e^{...} is real there.)
//   irfft y_t = (1/n) Re sum_k c_k Y_k e^{+2 pi i k t/n}:
//     grad_Y_k = (c_k / n) * rfft(g)_k (rfft's end bins have exactly zero imaginary part,
//     matching the ignored imaginary inputs).
// The internal ops below carry a per-bin weight s_k (one value for the end bins, one for the
// interior) and the zero-padding / truncation to n, both folded into the kernels so the
// backward passes cost no extra elementwise passes; their adjoints are:
//   rfft_op(x, n, s)   -> grad_x = fit_len(irfft_op(G, n, n s / c), L)
//   irfft_op(X, n, s)  -> grad_X = fit_bins(rfft_op(g, n, s c / n), bins of X)
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include "../backend/backend.hpp"
#include "kernel_utils.hpp"
#include "jvp_util.hpp"

namespace kern {

using G = std::vector<Tensor>;

namespace {

Tensor irfft_op(const Tensor& X, int64_t n, double s_end, double s_int);

// x: [..., L] -> [..., n/2 + 1, 2]: bin k of rfft(x zero-padded / truncated to n), times s_k.
Tensor rfft_op(const Tensor& x, int64_t n, double s_end, double s_int) {
  Tensor xc = contiguous(x.detach());
  const int64_t L = x.shape().back();
  const int64_t rows = L == 0 ? 0 : x.numel() / L;
  Shape shape = x.shape();
  shape.back() = n / 2 + 1;
  shape.push_back(2);
  Tensor out = empty(shape, x.dtype());
  if (L == 0) out.fill_(0.0);
  else
    detail::dispatch_float(x.dtype(), "rfft", [&]<typename T>() {
      backend::rfft_rows<T>(static_cast<const T*>(xc.raw_data()), rows, L, n, static_cast<T*>(out.raw_data()),
                            static_cast<T>(s_end), static_cast<T>(s_int));
    });
  return record_op("rfft", out, {x}, [n, L, s_end, s_int](const BackwardContext& c) {
    const double dn = static_cast<double>(n);
    Tensor g = irfft_op(c.grad, n, dn * s_end, dn * s_int / 2);  // [..., n]
    if (L < n) g = narrow(g, -1, 0, L);
    else if (L > n) g = pad(g, {0, L - n});
    return G{g};
  }, SavedValues::none(), detail::linear_rule([n, s_end, s_int](const Tensor& t) { return rfft_op(t, n, s_end, s_int); }));
}

// X: [..., bins, 2] -> [..., n]: irfft of X's bins (zero-padded / truncated to n/2 + 1),
// bin k weighed by s_k first.
Tensor irfft_op(const Tensor& X, int64_t n, double s_end, double s_int) {
  Tensor Xc = contiguous(X.detach());
  const int64_t bins = X.shape()[X.dim() - 2], nb = n / 2 + 1;
  Shape shape(X.shape().begin(), X.shape().end() - 1);
  shape.back() = n;
  const int64_t rows = Shape(shape.begin(), shape.end() - 1).numel();
  Tensor out = empty(shape, X.dtype());
  detail::dispatch_float(X.dtype(), "irfft", [&]<typename T>() {
    backend::irfft_rows<T>(static_cast<const T*>(Xc.raw_data()), rows, bins, n, static_cast<T*>(out.raw_data()),
                           static_cast<T>(s_end), static_cast<T>(s_int));
  });
  return record_op("irfft", out, {X}, [n, bins, nb, s_end, s_int](const BackwardContext& c) {
    const double inv = 1.0 / static_cast<double>(n);
    Tensor g = rfft_op(c.grad, n, s_end * inv, s_int * 2 * inv);  // [..., n/2 + 1, 2]
    if (bins < nb) g = narrow(g, -2, 0, bins);
    else if (bins > nb) g = pad(g, {0, 0, 0, bins - nb});
    return G{g};
  }, SavedValues::none(), detail::linear_rule([n, s_end, s_int](const Tensor& t) { return irfft_op(t, n, s_end, s_int); }));
}

// a * b, or a * conj(b) when conj_b: [..., 2] x [..., 2] -> broadcast [..., 2].
Tensor cmul(const Tensor& a, const Tensor& b, bool conj_b) {
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
    const T sg = conj_b ? T(-1) : T(1);
    detail::StridedLoop<3> loop(base, {os, detail::broadcast_strides(ar, base), detail::broadcast_strides(br, base)});
    loop.run([&](const std::array<int64_t, 3>& off, int64_t m, const std::array<int64_t, 3>& st) {
      const T* x = pa + off[1];
      const T* y = pb + off[2];
      T* o = po + off[0];
      for (int64_t i = 0; i < m; ++i) {
        const T xr = x[i * st[1]], xi = x[i * st[1] + ai], yr = y[i * st[2]], yi = sg * y[i * st[2] + bi];
        o[i * st[0]] = xr * yr - xi * yi;
        o[i * st[0] + 1] = xr * yi + xi * yr;
      }
    });
  });
  // With b' = conj_b ? conj(b) : b: d<G, a b'>/da = G conj(b'); d/db' = G conj(a), and
  // d/db = conj(G conj(a)) = a conj(G) when b' = conj(b). Broadcast dims are summed by the
  // engine.
  return record_op("complex_mul", out, {a, b}, [conj_b](const BackwardContext& c) {
    const Tensor &A = c.inputs[0], &B = c.inputs[1];
    return G{c.needs[0] ? cmul(c.grad, B, !conj_b) : Tensor(),
             c.needs[1] ? (conj_b ? cmul(A, c.grad, true) : cmul(c.grad, A, true)) : Tensor()};
  }, SavedValues::none().input_for(0, {1}).input_for(1, {0}), JvpRule([conj_b](const JvpContext& c) {  // bilinear: t_a b' + a t_b'
    return detail::sum_defined({c.has(0) ? cmul(c.tangents[0], c.inputs[1], conj_b) : Tensor(),
                                c.has(1) ? cmul(c.inputs[0], c.tangents[1], conj_b) : Tensor()},
                               c.output.shape());
  }));
}

}  // namespace

Tensor rfft(const Tensor& x, int64_t n) {
  detail::check_floating(x, "rfft");
  KERN_CHECK(x.dim() >= 1, "rfft: input must have at least 1 dim, got shape ", x.shape());
  if (n == 0) n = x.shape().back();
  KERN_CHECK(n >= 1, "rfft: transform length n must be positive, got n = ", n, " for input ", x.shape());
  return rfft_op(x, n, 1.0, 1.0);
}

Tensor irfft(const Tensor& X, int64_t n) {
  detail::check_floating(X, "irfft");
  KERN_CHECK(X.dim() >= 2 && X.shape().back() == 2, "irfft: input must be a complex spectrum [..., bins, 2] ",
             "(trailing dim 2 = re, im), got shape ", X.shape());
  KERN_CHECK(n >= 1, "irfft: output length n must be positive, got n = ", n, " for input ", X.shape());
  KERN_CHECK(X.shape()[X.dim() - 2] >= 1, "irfft: input ", X.shape(), " has no frequency bins");
  // Like torch.fft.irfft, the spectrum is zero-padded or truncated to n/2 + 1 bins.
  return irfft_op(X, n, 1.0, 1.0);
}

Tensor complex_mul(const Tensor& a, const Tensor& b) {
  detail::check_same_dtype(a, b, "complex_mul");
  detail::check_floating(a, "complex_mul");
  KERN_CHECK(a.dim() >= 1 && b.dim() >= 1 && a.shape().back() == 2 && b.shape().back() == 2,
             "complex_mul: operands must have a trailing dim of 2 (re, im), got ", a.shape(), " and ", b.shape());
  return cmul(a, b, false);
}

}  // namespace kern
