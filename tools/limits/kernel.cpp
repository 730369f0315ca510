// kern::limits: the input kernel, the batched driver (Layer::kernel) and the window maps
// shared by Conv and AvgPool.
#include "internal.hpp"

#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include <algorithm>
#include <cstring>

namespace kern::limits {

const LayerImpl& Layer::impl() const {
  KERN_CHECK(impl_ != nullptr, "limits::Layer: an empty layer (default-constructed)");
  return *impl_;
}

namespace detail {

void pixel_variances(const Kernel& k, std::vector<double>& d1, std::vector<double>& d2) {
  const int64_t P = k.pixels(), S = k.entries();
  d1.resize(k.n1 * P);
  d2.resize(k.n2 * P);
  for (int side = 0; side < 2; ++side) {
    const std::vector<double>& cov = side == 0 ? k.cov1 : k.cov2;
    std::vector<double>& d = side == 0 ? d1 : d2;
    const int64_t n = side == 0 ? k.n1 : k.n2;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < P; ++p) d[i * P + p] = cov[i * S + (k.full ? p * P + p : p)];
  }
}

Axis make_axis(int64_t in, int64_t window, int64_t stride, Padding padding, const char* op) {
  KERN_CHECK(window >= 1 && stride >= 1, op, ": window ", window, " and stride ", stride,
             " must be >= 1");
  Axis a{in, window, stride, 0, 0};
  if (padding == Padding::Same) {
    a.out = (in + stride - 1) / stride;
    const int64_t total = std::max<int64_t>((a.out - 1) * stride + window - in, 0);
    a.pad = total / 2;  // XLA: the extra padding goes to the high side
  } else {
    KERN_CHECK(in >= window, op, ": VALID window ", window, " is larger than the input size ", in);
    a.out = (in - window) / stride + 1;
  }
  return a;
}

namespace {

// window_full for the conv map with stride 1 and output size = input size (SAME): the same
// offset d at p and q moves both by d, so along H an input slab [ph + d][pw][.][.] shifted by d
// rows is one contiguous run of [qh][qw]; along W the shift by d crosses rows, and a column
// mask drops the entries that wrapped around. Loops run over [H][W] planes (784 for 28x28,
// 49 for 7x7) instead of single rows of W.
void conv_same_full(const double* in, double* out, const Axis& ah, const Axis& aw, std::vector<double>& tmp) {
  const int64_t H = ah.in, W = aw.in, plane = H * W;
  const double s = 1.0 / static_cast<double>(ah.window * aw.window);
  tmp.assign(plane * plane, 0.0);
  // along H: tmp[a][pw][b][qw] = s sum_d in[a + sh][pw][b + sh][qw], sh = d - pad
  for (int64_t a = 0; a < H; ++a)
    for (int64_t d = 0; d < ah.window; ++d) {
      const int64_t sh = d - ah.pad, ih = a + sh;
      if (ih < 0 || ih >= H) continue;
      const int64_t lo = std::max<int64_t>(0, -sh) * W, hi = std::min<int64_t>(H, H - sh) * W;
      for (int64_t pw = 0; pw < W; ++pw) {
        double* dst = tmp.data() + (a * W + pw) * plane;
        const double* src = in + (ih * W + pw) * plane + sh * W;
#pragma omp simd
        for (int64_t i = lo; i < hi; ++i) dst[i] += s * src[i];
      }
    }
  // along W: out[a][c][b][e] = sum_d tmp[a][c + sh][b][e + sh]; `in` is no longer read
  std::vector<double> mask(static_cast<size_t>(plane));
  std::fill(out, out + plane * plane, 0.0);
  for (int64_t d = 0; d < aw.window; ++d) {
    const int64_t sh = d - aw.pad;
    for (int64_t i = 0; i < plane; ++i) {
      const int64_t e = i % W;
      mask[static_cast<size_t>(i)] = (e + sh >= 0 && e + sh < W) ? 1.0 : 0.0;
    }
    const int64_t lo = std::max<int64_t>(0, -sh), hi = std::min<int64_t>(plane, plane - sh);
    for (int64_t a = 0; a < H; ++a)
      for (int64_t c = 0; c < W; ++c) {
        const int64_t iw = c + sh;
        if (iw < 0 || iw >= W) continue;
        double* dst = out + (a * W + c) * plane;
        const double* src = tmp.data() + (a * W + iw) * plane + sh;
        const double* m = mask.data();
#pragma omp simd
        for (int64_t i = lo; i < hi; ++i) dst[i] += m[i] != 0.0 ? src[i] : 0.0;  // select: no 0 * inf
      }
  }
}

}  // namespace

// Full blocks are [H][W][H][W] (pixel p = (ph, pw) of input 1, then q = (qh, qw) of input 2).
// The window maps are separable: first along H (both ph and qh), into tmp [H'][W][H'][W] with
// the whole 1/(window count) scale, then along W into out. Inner loops run over qw / the output
// column: contiguous (shifted) rows that vectorize.
void window_full(const double* in, double* out, const Axis& ah, const Axis& aw,
                 bool diagonal_offsets, std::vector<double>& tmp) {
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  if (diagonal_offsets && ah.stride == 1 && aw.stride == 1 && Ho == H && Wo == W)
    return conv_same_full(in, out, ah, aw, tmp);
  tmp.assign(Ho * W * Ho * W, 0.0);
  const double s = 1.0 / static_cast<double>(diagonal_offsets ? ah.window * aw.window
                                                                : ah.window * ah.window * aw.window * aw.window);
  for (int64_t a = 0; a < Ho; ++a)
    for (int64_t b = 0; b < Ho; ++b)
      for (int64_t d = 0; d < ah.window; ++d) {
        const int64_t ih = a * ah.stride + d - ah.pad;
        if (ih < 0 || ih >= H) continue;
        for (int64_t e = diagonal_offsets ? d : 0; e < (diagonal_offsets ? d + 1 : ah.window); ++e) {
          const int64_t jh = b * ah.stride + e - ah.pad;
          if (jh < 0 || jh >= H) continue;
          for (int64_t pw = 0; pw < W; ++pw) {
            const double* src = in + ((ih * W + pw) * H + jh) * W;
            double* dst = tmp.data() + ((a * W + pw) * Ho + b) * W;
#pragma omp simd
            for (int64_t qw = 0; qw < W; ++qw) dst[qw] += s * src[qw];
          }
        }
      }
  // tmp is complete: `in` is no longer read, so out may alias it
  std::fill(out, out + Ho * Wo * Ho * Wo, 0.0);
  for (int64_t a = 0; a < Ho; ++a)
    for (int64_t c = 0; c < Wo; ++c)
      for (int64_t d = 0; d < aw.window; ++d) {
        const int64_t iw = c * aw.stride + d - aw.pad;
        if (iw < 0 || iw >= W) continue;
        for (int64_t b = 0; b < Ho; ++b) {
          const double* src = tmp.data() + ((a * W + iw) * Ho + b) * W;
          double* dst = out + ((a * Wo + c) * Ho + b) * Wo;
          for (int64_t e = diagonal_offsets ? d : 0; e < (diagonal_offsets ? d + 1 : aw.window); ++e) {
            // output columns e2 whose input column jw = e2 * stride + e - pad lies in [0, W)
            const int64_t shift = e - aw.pad;
            const int64_t lo = shift >= 0 ? 0 : (-shift + aw.stride - 1) / aw.stride;
            const int64_t hi = W - 1 - shift < 0 ? 0 : std::min<int64_t>(Wo, (W - 1 - shift) / aw.stride + 1);
#pragma omp simd
            for (int64_t e2 = lo; e2 < hi; ++e2) dst[e2] += src[e2 * aw.stride + shift];
          }
        }
      }
}

void window_diag(const double* in, double* out, const Axis& ah, const Axis& aw) {
  const double s = 1.0 / static_cast<double>(ah.window * aw.window);
  for (int64_t a = 0; a < ah.out; ++a)
    for (int64_t c = 0; c < aw.out; ++c) {
      double acc = 0.0;
      for (int64_t d = 0; d < ah.window; ++d) {
        const int64_t ih = a * ah.stride + d - ah.pad;
        if (ih < 0 || ih >= ah.in) continue;
        for (int64_t e = 0; e < aw.window; ++e) {
          const int64_t iw = c * aw.stride + e - aw.pad;
          if (iw >= 0 && iw < aw.in) acc += in[ih * aw.in + iw];
        }
      }
      out[a * aw.out + c] = acc * s;
    }
}

}  // namespace detail

namespace {

// x [N, F] or [N, C, H, W] -> float64 contiguous; shape checks name the op.
Tensor prepare(const Tensor& x, const char* what) {
  KERN_CHECK(x.defined(), "limits::kernel: ", what, " is undefined");
  KERN_CHECK(x.dim() == 2 || x.dim() == 4, "limits::kernel: ", what,
             " must be [N, F] or [N, C, H, W], got ", x.shape());
  KERN_CHECK(x.dtype() != DType::Int64, "limits::kernel: ", what, " must be floating point, got ",
             x.dtype());
  NoGradGuard guard;
  return x.to(DType::Float64).contiguous();
}

// out [P, P] = in^T for full blocks (P = full_p), a copy otherwise.
void transpose_into(double* out, const double* in, int64_t S, int64_t full_p) {
  if (full_p == 0) {
    std::memcpy(out, in, S * sizeof(double));
    return;
  }
  for (int64_t p = 0; p < full_p; ++p)
    for (int64_t q = 0; q < full_p; ++q) out[q * full_p + p] = in[p * full_p + q];
}

}  // namespace

Kernel input_kernel(const Tensor& x1, const Tensor& x2, bool full) {
  Kernel k;
  input_kernel(x1, x2, full, k);
  return k;
}

void input_kernel(const Tensor& x1, const Tensor& x2, bool full, Kernel& k) {
  k = Kernel{.nngp = std::move(k.nngp), .ntk = std::move(k.ntk), .cov1 = std::move(k.cov1),
             .cov2 = std::move(k.cov2)};  // fresh fields, the buffers' capacity kept
  k.n1 = x1.size(0);
  k.n2 = x2.size(0);
  k.spatial = x1.dim() == 4;
  k.channels = x1.size(1);
  if (k.spatial) {
    k.h = x1.size(2);
    k.w = x1.size(3);
  }
  k.full = k.spatial && full;
  const int64_t C = k.channels, P = k.pixels(), S = k.entries();
  const double* a = x1.data_ptr<double>();
  const double* b = x2.data_ptr<double>();
  k.nngp.assign(k.n1 * k.n2 * S, 0.0);
  k.ntk.assign(k.n1 * k.n2 * S, 0.0);
  k.cov1.assign(k.n1 * S, 0.0);
  k.cov2.assign(k.n2 * S, 0.0);
  // One block: sum_c u[c, p] v[c, q] / C  (x is [C, P] per sample).
  auto block = [&](const double* u, const double* v, double* out) {
    for (int64_t c = 0; c < C; ++c) {
      const double* uc = u + c * P;
      const double* vc = v + c * P;
      if (k.full) {
        for (int64_t p = 0; p < P; ++p) {
          const double up = uc[p];
          double* o = out + p * P;
          for (int64_t q = 0; q < P; ++q) o[q] += up * vc[q];
        }
      } else {
        for (int64_t p = 0; p < P; ++p) out[p] += uc[p] * vc[p];
      }
    }
    for (int64_t e = 0; e < S; ++e) out[e] /= static_cast<double>(C);
  };
  const int64_t units = detail::unit_count(k), cross = k.n1 * k.n2, F = C * P;
#pragma omp parallel for schedule(dynamic, 1) if (units * S * C > 65536)
  for (int64_t u = 0; u < units; ++u) {
    if (u < cross) {
      block(a + (u / k.n2) * F, b + (u % k.n2) * F, k.nngp.data() + u * S);
    } else if (u < cross + k.n1) {
      const int64_t i = u - cross;
      block(a + i * F, a + i * F, k.cov1.data() + i * S);
    } else {
      const int64_t j = u - cross - k.n1;
      block(b + j * F, b + j * F, k.cov2.data() + j * S);
    }
  }
}

Kernels Layer::kernel(const Tensor& x1_in, const Tensor& x2_in, const KernelOptions& options) const {
  const LayerImpl& net = impl();
  const Tensor x1 = prepare(x1_in, "x1");
  const Tensor x2 = x2_in.defined() ? prepare(x2_in, "x2") : x1;
  KERN_CHECK(x1.dim() == x2.dim(), "limits::kernel: x1 ", x1.shape(), " and x2 ", x2.shape(),
             " must have the same rank");
  for (int64_t d = 1; d < x1.dim(); ++d)
    KERN_CHECK(x1.size(d) == x2.size(d), "limits::kernel: x1 ", x1.shape(), " and x2 ",
               x2.shape(), " differ beyond the batch dim");
  KERN_CHECK(options.batch_size >= 0, "limits::kernel: batch_size must be >= 0, got ",
             options.batch_size);
  const bool full = x1.dim() == 4 && !options.force_diagonal && net.needs_full(false);
  const int64_t N1 = x1.size(0), N2 = x2.size(0);
  const int64_t bs = options.batch_size > 0 ? options.batch_size : std::max(N1, N2);

  std::vector<double> out_nngp, out_ntk;
  Shape tail;  // the output's per-pair shape
  int64_t S = -1, full_out = 0;  // full_out: P of a full [P, P] output block, else 0
  // K(x, x) is symmetric: blocks below the diagonal are mirrored, not computed
  const bool same = !x2_in.defined();
  Kernel k;  // one set of buffers for every block
  for (int64_t r1 = 0; r1 < N1; r1 += bs) {
    const int64_t b1 = std::min(bs, N1 - r1);
    for (int64_t r2 = same ? r1 : 0; r2 < N2; r2 += bs) {
      const int64_t b2 = std::min(bs, N2 - r2);
      input_kernel(x1.narrow(0, r1, b1).contiguous(), x2.narrow(0, r2, b2).contiguous(), full, k);
      k.width = options.width;
      net.apply(k);
      if (S < 0) {
        S = k.entries();
        full_out = k.full ? k.pixels() : 0;
        if (k.spatial) tail = k.full ? Shape{k.h, k.w, k.h, k.w} : Shape{k.h, k.w};
        out_nngp.assign(N1 * N2 * S, 0.0);
        out_ntk.assign(N1 * N2 * S, 0.0);
      }
      for (int64_t i = 0; i < b1; ++i)
        for (int64_t j = 0; j < b2; ++j) {
          const int64_t src = (i * b2 + j) * S, dst = ((r1 + i) * N2 + r2 + j) * S;
          std::memcpy(out_nngp.data() + dst, k.nngp.data() + src, S * sizeof(double));
          std::memcpy(out_ntk.data() + dst, k.ntk.data() + src, S * sizeof(double));
          if (same && r2 != r1) {
            // the mirrored pair (j, i): full blocks swap the pixel indices p and q
            const int64_t mdst = ((r2 + j) * N2 + r1 + i) * S;
            transpose_into(out_nngp.data() + mdst, k.nngp.data() + src, S, full_out);
            transpose_into(out_ntk.data() + mdst, k.ntk.data() + src, S, full_out);
          }
        }
    }
  }
  Shape shape{N1, N2};
  for (int64_t d : tail) shape.push_back(d);
  return {from_vector(out_nngp, shape), from_vector(out_ntk, shape)};
}

}  // namespace kern::limits
