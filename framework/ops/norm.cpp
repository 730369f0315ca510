// Normalization ops. layer_norm and training-mode batch_norm run a fused forward (one pass
// for the statistics, in double, and one for the output). Their backwards are the analytic
// formulas, recomputing x_hat and rstd from the input x so that differentiating the backward
// again is exact:
//   x_hat = (x - mean) * rstd, rstd = (var_biased + eps)^-1/2, gy = g * weight
//   dx = P gy with P = rstd (I - 1 1^T / M - x_hat x_hat^T / M)   (per normalized row of M
//        elements; P is symmetric), dweight = sum g * x_hat, dbias = sum g.
// batch_norm writes dx in differentiable ops (norm_backward). layer_norm's dx is its own fused
// op, layer_norm_backward (one pass per row), closed under differentiation without composites
// on the Hessian-vector-product path (tools/hessian: differentiate the backward once more):
//   gx = layer_norm_backward(g, x, w):   dg = w * P u,  dw = g * P u  (P u = layer_norm_backward(u, x)),
//                                        dx = layer_norm_double_backward(u, g, x, w)
//   with, per row (h = gy - mean(gy) - x_hat c, c = mean(gy x_hat); gx = rstd h):
//   dx = -rstd^2 (x_hat mean(u h) + h mean(u x_hat) + c (u - mean(u) - x_hat mean(u x_hat))).
// The double backward runs one fused pass when no graph is being recorded (the HVP itself);
// recording it (third derivatives) runs the same formula in differentiable ops.
// Eval-mode batch_norm is an affine map per channel, composed from elementwise ops.
// float32 layer_norm forwards run on oneDNN on the fast backend. batch_norm has one
// implementation, the loops below, on both backends: oneDNN 2.6 has no jit batch
// normalization for plain NCHW data, only its generic ncsp kernel, which was slower than
// these loops when measured (training forward, float32, one thread, min of 40 runs:
// [8, 64, 32, 32] 0.81 ms vs 0.67, [256, 512] 1.40 vs 0.74, [128, 32, 24, 24] 4.35 vs 3.74,
// [64, 32, 28, 28] 3.17 vs 2.41; its jit kernel needs NHWC, and transposing costs more than it
// saves), so it was removed (issue 12).
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include <cmath>

#include "../backend/backend.hpp"
#include "kernel_utils.hpp"
#include "jvp_util.hpp"

namespace kern {

using G = std::vector<Tensor>;

namespace {

void check_param(const Tensor& p, const Tensor& x, const Shape& want, const char* op, const char* name) {
  if (!p.defined()) return;
  KERN_CHECK(p.shape() == want, op, ": ", name, " has shape ", p.shape(), ", expected ", want,
             " for input ", x.shape());
  KERN_CHECK(p.dtype() == x.dtype(), op, ": ", name, " is ", p.dtype(), " but input is ", x.dtype());
}

// The normalization backward in differentiable ops over `dims` of x (see the file comment).
// `w` is the weight already shaped to broadcast against x (or undefined).
struct NormGrads {
  Tensor gx, g_xhat_prod;  // g_xhat_prod = g * x_hat (un-reduced), for the weight gradient
};
NormGrads norm_backward(const Tensor& x, const Tensor& g, const Tensor& w, const Dims& dims, double eps,
                        bool need_x, bool need_w) {
  Tensor xc = x - mean(x, dims, true);
  Tensor rstd = rsqrt(mean(xc * xc, dims, true) + eps);
  Tensor xhat = xc * rstd;
  NormGrads out;
  if (need_x) {
    Tensor gy = w.defined() ? g * w : g;
    out.gx = rstd * (gy - mean(gy, dims, true) - xhat * mean(gy * xhat, dims, true));
  }
  if (need_w) out.g_xhat_prod = g * xhat;
  return out;
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias,
                  double eps) {
  detail::check_floating(x, "layer_norm");
  const int64_t k = normalized_shape.ndim();
  bool match = k >= 1 && k <= x.dim();
  for (int64_t i = 0; match && i < k; ++i) match = x.shape()[x.dim() - k + i] == normalized_shape[i];
  KERN_CHECK(match, "layer_norm: normalized_shape ", normalized_shape, " does not match the trailing dims of input ",
             x.shape());
  check_param(weight, x, normalized_shape, "layer_norm", "weight");
  check_param(bias, x, normalized_shape, "layer_norm", "bias");
  KERN_CHECK(eps >= 0, "layer_norm: eps must be >= 0, got ", eps);
  // A strided input (ConvNeXt's permuted [N, H, W, C] view) becomes a recorded contiguous()
  // copy first, so the node saves the dense tensor and its backward passes never copy again.
  if (!x.is_contiguous()) return layer_norm(contiguous(x), normalized_shape, weight, bias, eps);
  const int64_t M = normalized_shape.numel();
  const int64_t rows = M == 0 ? 0 : x.numel() / M;

  Tensor xc = contiguous(x.detach());
  Tensor wc = weight.defined() ? contiguous(weight.detach()) : Tensor();
  Tensor bc = bias.defined() ? contiguous(bias.detach()) : Tensor();
  Tensor out = empty(x.shape(), x.dtype());
  if (backend::use_fast(x.dtype()) && rows > 0) {
    backend::layer_norm_fast(xc.data_ptr<float>(), wc.defined() ? wc.data_ptr<float>() : nullptr,
                             bc.defined() ? bc.data_ptr<float>() : nullptr, out.data_ptr<float>(), rows, M,
                             static_cast<float>(eps));
  } else {
    backend::count_path(backend::Primitive::LayerNorm, backend::Path::Reference);
    detail::dispatch_float(x.dtype(), "layer_norm", [&]<typename T>() {
      const T* p = static_cast<const T*>(xc.raw_data());
      const T* pw = wc.defined() ? static_cast<const T*>(wc.raw_data()) : nullptr;
      const T* pb = bc.defined() ? static_cast<const T*>(bc.raw_data()) : nullptr;
      T* o = static_cast<T*>(out.raw_data());
#pragma omp parallel for schedule(static) if (rows > 1 && x.numel() > (1 << 14))
      for (int64_t r = 0; r < rows; ++r) {
        const T* xr = p + r * M;
        T* yr = o + r * M;
        double s = 0, ss = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < M; ++i) s += xr[i];
        const double mu = s / static_cast<double>(M);
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < M; ++i) ss += (xr[i] - mu) * (xr[i] - mu);
        const T rstd = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(M) + eps));
        const T m = static_cast<T>(mu);
        for (int64_t i = 0; i < M; ++i) {
          T v = (xr[i] - m) * rstd;
          if (pw) v *= pw[i];
          if (pb) v += pb[i];
          yr[i] = v;
        }
      }
    });
  }

  return record_op("layer_norm", out, {x, weight, bias}, [normalized_shape, eps](const BackwardContext& c) {
    const Tensor &x = c.inputs[0], &w = c.inputs[1];
    // weight / bias gradients are [*, normalized_shape]; the engine sums the leading dims.
    return G{c.needs[0] ? layer_norm_backward(c.grad, x, normalized_shape, w, eps) : Tensor(),
             c.needs[1] ? c.grad * layer_norm(x, normalized_shape, {}, {}, eps) : Tensor(),
             c.needs[2] ? c.grad : Tensor()};
  }, SavedValues::none().input(0).input_for(1, {0}), JvpRule([normalized_shape, eps](const JvpContext& c) {
    // w * P t_x + t_w * xhat + t_b, P = d xhat / dx (symmetric, so layer_norm_backward applies it)
    const Tensor &x = c.inputs[0], &w = c.inputs[1];
    Tensor tx;
    if (c.has(0)) {
      tx = layer_norm_backward(c.tangents[0], x, normalized_shape, {}, eps);
      if (w.defined()) tx = tx * w;
    }
    return detail::sum_defined({tx, c.has(1) ? c.tangents[1] * layer_norm(x, normalized_shape, {}, {}, eps) : Tensor(),
                                c.has(2) ? c.tangents[2] : Tensor()},
                               c.output.shape());
  }));
}

namespace {

// The rows of a layer norm: x viewed as [rows, M] over the trailing normalized_shape.
struct LnRows {
  int64_t rows, M;
  Dims dims;  // the normalized dims, negative
};
LnRows ln_rows(const Tensor& x, const Shape& normalized_shape, const char* op) {
  const int64_t k = normalized_shape.ndim();
  bool match = k >= 1 && k <= x.dim();
  for (int64_t i = 0; match && i < k; ++i) match = x.shape()[x.dim() - k + i] == normalized_shape[i];
  KERN_CHECK(match, op, ": normalized_shape ", normalized_shape, " does not match the trailing dims of input ",
             x.shape());
  LnRows r{0, normalized_shape.numel(), {}};
  r.rows = r.M == 0 ? 0 : x.numel() / r.M;
  for (int64_t i = -k; i < 0; ++i) r.dims.push_back(i);
  return r;
}

void check_same(const Tensor& a, const Tensor& x, const char* op, const char* name) {
  KERN_CHECK(a.defined() && a.shape() == x.shape() && a.dtype() == x.dtype(), op, ": ", name, " must be ", x.dtype(),
             " ", x.shape(), " like the input, got ",
             a.defined() ? fmt::format("{} {}", a.dtype(), a.shape()) : std::string("undefined"));
}

// Mean and rstd of one row, in double (as the forward).
template <typename T>
std::pair<double, double> row_stats(const T* xr, int64_t M, double eps) {
  double s = 0, ss = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < M; ++i) s += xr[i];
  const double mu = s / static_cast<double>(M);
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < M; ++i) ss += (xr[i] - mu) * (xr[i] - mu);
  return {mu, 1.0 / std::sqrt(ss / static_cast<double>(M) + eps)};
}

// gx = P (g * w), one row at a time; every tensor contiguous, w [M] or null.
template <typename T>
void ln_backward_rows(const T* g, const T* x, const T* w, T* out, int64_t rows, int64_t M, double eps) {
#pragma omp parallel for schedule(static) if (rows > 1 && rows * M > (1 << 14))
  for (int64_t r = 0; r < rows; ++r) {
    const T *gr = g + r * M, *xr = x + r * M;
    const auto [mu, rstd] = row_stats(xr, M, eps);
    double sg = 0, sgx = 0;  // sum gy, sum gy x_hat
#pragma omp simd reduction(+ : sg, sgx)
    for (int64_t i = 0; i < M; ++i) {
      const double gy = w ? gr[i] * w[i] : gr[i];
      sg += gy;
      sgx += gy * ((xr[i] - mu) * rstd);
    }
    const T a = static_cast<T>(sg / static_cast<double>(M)), c = static_cast<T>(sgx / static_cast<double>(M));
    const T m = static_cast<T>(mu), rs = static_cast<T>(rstd);
    T* o = out + r * M;
    for (int64_t i = 0; i < M; ++i) {
      const T gy = w ? gr[i] * w[i] : gr[i];
      o[i] = rs * (gy - a - (xr[i] - m) * rs * c);
    }
  }
}

// The double backward's dx (see the file comment), one row at a time, in one statistics pass
// (mean(u h) = mean(u gy) - mean(gy) mean(u) - c mean(u x_hat)) and one output pass.
template <typename T>
void ln_double_backward_rows(const T* u, const T* g, const T* x, const T* w, T* out, int64_t rows, int64_t M,
                             double eps) {
  const double inv_m = 1.0 / static_cast<double>(M);
#pragma omp parallel for schedule(static) if (rows > 1 && rows * M > (1 << 14))
  for (int64_t r = 0; r < rows; ++r) {
    const T *ur = u + r * M, *gr = g + r * M, *xr = x + r * M;
    const auto [mu, rstd] = row_stats(xr, M, eps);
    double sg = 0, sgx = 0, su = 0, sux = 0, sug = 0;
#pragma omp simd reduction(+ : sg, sgx, su, sux, sug)
    for (int64_t i = 0; i < M; ++i) {
      const double gy = w ? gr[i] * w[i] : gr[i], xh = (xr[i] - mu) * rstd, uv = ur[i];
      sg += gy;
      sgx += gy * xh;
      su += uv;
      sux += uv * xh;
      sug += uv * gy;
    }
    const double a = sg * inv_m, c = sgx * inv_m, mu_u = su * inv_m, mu_ux = sux * inv_m;
    const double mu_uh = sug * inv_m - a * mu_u - c * mu_ux;
    const T m = static_cast<T>(mu), rs = static_cast<T>(rstd), tc = static_cast<T>(c), ta = static_cast<T>(a);
    const T k = static_cast<T>(-rstd * rstd), tuh = static_cast<T>(mu_uh), tux = static_cast<T>(mu_ux);
    const T tu = static_cast<T>(mu_u);
    T* o = out + r * M;
    for (int64_t i = 0; i < M; ++i) {
      const T gy = w ? gr[i] * w[i] : gr[i], xh = (xr[i] - m) * rs;
      const T h = gy - ta - xh * tc;
      o[i] = k * (xh * tuh + h * tux + tc * (ur[i] - tu - xh * tux));
    }
  }
}

// The same dx in differentiable ops, for when a graph of it is recorded.
Tensor ln_double_backward_composite(const Tensor& u, const Tensor& g, const Tensor& x, const Tensor& w,
                                    const Dims& dims, double eps) {
  Tensor xc = x - mean(x, dims, true);
  Tensor rstd = rsqrt(mean(xc * xc, dims, true) + eps);
  Tensor xhat = xc * rstd;
  Tensor gy = w.defined() ? g * w : g;
  Tensor c = mean(gy * xhat, dims, true);
  Tensor h = gy - mean(gy, dims, true) - xhat * c;
  Tensor mu_ux = mean(u * xhat, dims, true);
  Tensor inner = xhat * mean(u * h, dims, true) + h * mu_ux + c * (u - mean(u, dims, true) - xhat * mu_ux);
  return -(rstd * rstd) * inner;
}

bool recording(std::initializer_list<const Tensor*> ts) {
  if (!grad_mode_enabled()) return false;
  const bool tangents = forward_ad::tracking();  // the composite's ops carry tangents
  for (const Tensor* t : ts)
    if (t->defined() && (t->requires_grad() || (tangents && forward_ad::tangent(*t).defined()))) return true;
  return false;
}

// u: cotangent of layer_norm_backward's output; returns d<u, gx>/dx.
Tensor layer_norm_double_backward(const Tensor& u, const Tensor& g, const Tensor& x, const Tensor& w,
                                  const Shape& normalized_shape, double eps) {
  const LnRows lr = ln_rows(x, normalized_shape, "layer_norm_double_backward");
  if (recording({&u, &g, &x, &w})) return ln_double_backward_composite(u, g, x, w, lr.dims, eps);
  Tensor uc = contiguous(u.detach()), gc = contiguous(g.detach()), xc = contiguous(x.detach());
  Tensor wc = w.defined() ? contiguous(w.detach()) : Tensor();
  Tensor out = empty(x.shape(), x.dtype());
  if (lr.rows == 0) return out;
  detail::dispatch_float(x.dtype(), "layer_norm_double_backward", [&]<typename T>() {
    ln_double_backward_rows<T>(uc.data_ptr<T>(), gc.data_ptr<T>(), xc.data_ptr<T>(),
                               wc.defined() ? wc.data_ptr<T>() : nullptr, out.data_ptr<T>(), lr.rows, lr.M, eps);
  });
  return out;
}

}  // namespace

Tensor layer_norm_backward(const Tensor& grad, const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                           double eps) {
  detail::check_floating(x, "layer_norm_backward");
  const LnRows lr = ln_rows(x, normalized_shape, "layer_norm_backward");
  check_same(grad, x, "layer_norm_backward", "grad");
  check_param(weight, x, normalized_shape, "layer_norm_backward", "weight");
  KERN_CHECK(eps >= 0, "layer_norm_backward: eps must be >= 0, got ", eps);
  if (!grad.is_contiguous() || !x.is_contiguous())  // saved dense, as in layer_norm
    return layer_norm_backward(contiguous(grad), contiguous(x), normalized_shape, weight, eps);
  Tensor gc = contiguous(grad.detach()), xc = contiguous(x.detach());
  Tensor wc = weight.defined() ? contiguous(weight.detach()) : Tensor();
  Tensor out = empty(x.shape(), x.dtype());
  if (lr.rows > 0) {
    detail::dispatch_float(x.dtype(), "layer_norm_backward", [&]<typename T>() {
      ln_backward_rows<T>(gc.data_ptr<T>(), xc.data_ptr<T>(), wc.defined() ? wc.data_ptr<T>() : nullptr,
                          out.data_ptr<T>(), lr.rows, lr.M, eps);
    });
  }
  return record_op("layer_norm_backward", out, {grad, x, weight}, [normalized_shape, eps](const BackwardContext& c) {
    const Tensor &g = c.inputs[0], &x = c.inputs[1], &w = c.inputs[2];
    // P is symmetric: d<u, P gy>/dgy = P u.
    Tensor pu = c.needs[0] || c.needs[2] ? layer_norm_backward(c.grad, x, normalized_shape, {}, eps) : Tensor();
    return G{c.needs[0] ? (w.defined() ? pu * w : pu) : Tensor(),
             c.needs[1] ? layer_norm_double_backward(c.grad, g, x, w, normalized_shape, eps) : Tensor(),
             c.needs[2] ? g * pu : Tensor()};
  }, SavedValues::none().input(1).input_for(0, {1, 2}).input_for(2, {0, 1}), JvpRule([normalized_shape, eps](const JvpContext& c) {
    // out = P_x (w g). Linear in g and in w; in x, d/dx [P_x v] t is the third derivative of a
    // potential (xhat = grad phi, since P is symmetric), fully symmetric, so it equals
    // layer_norm_double_backward with the cotangent slot given t: d<t, P_x v>/dx.
    const Tensor &g = c.inputs[0], &x = c.inputs[1], &w = c.inputs[2];
    return detail::sum_defined(
        {c.has(0) ? layer_norm_backward(c.tangents[0], x, normalized_shape, w, eps) : Tensor(),
         c.has(2) ? layer_norm_backward(g, x, normalized_shape, c.tangents[2], eps) : Tensor(),
         c.has(1) ? layer_norm_double_backward(c.tangents[1], g, x, w, normalized_shape, eps) : Tensor()},
        c.output.shape());
  }));
}

namespace {

// Shapes and argument checks of batch_norm; x is [N, C, *] viewed as [N, C, S].
struct BatchNormShape {
  int64_t N, C, S;
  Shape bshape;  // [C, 1, ..., 1]: per-channel parameters broadcast against [N, C, *]
};
BatchNormShape check_batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                                const Tensor& weight, const Tensor& bias, double eps) {
  detail::check_floating(x, "batch_norm");
  KERN_CHECK(x.dim() >= 2, "batch_norm: input must be [N, C, *], got shape ", x.shape());
  const int64_t N = x.shape()[0], C = x.shape()[1];
  const int64_t S = C == 0 || N == 0 ? 0 : x.numel() / (N * C);
  const Shape cshape{C};
  check_param(running_mean, x, cshape, "batch_norm", "running_mean");
  check_param(running_var, x, cshape, "batch_norm", "running_var");
  check_param(weight, x, cshape, "batch_norm", "weight");
  check_param(bias, x, cshape, "batch_norm", "bias");
  KERN_CHECK(running_mean.defined() == running_var.defined(), "batch_norm: running_mean and running_var must ",
             "both be given or both be omitted (input ", x.shape(), ")");
  KERN_CHECK(eps >= 0, "batch_norm: eps must be >= 0, got ", eps);
  Shape bshape(x.dim() - 1, 1);
  bshape[0] = C;
  return {N, C, S, bshape};
}

// Eval mode: y = x * scale + shift with scale = weight * rstd, shift = bias - running_mean *
// scale, an affine map per channel composed from differentiable ops.
Tensor batch_norm_eval(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                       const Tensor& bias, double eps, const Shape& bshape) {
  KERN_CHECK(running_mean.defined(), "batch_norm: eval mode needs running_mean and running_var (input ", x.shape(),
             ")");
  Tensor rstd = rsqrt(running_var.detach() + eps);
  Tensor scale = weight.defined() ? weight * rstd : rstd;
  Tensor shift = -(running_mean.detach() * scale);
  if (bias.defined()) shift = shift + bias;
  return x * reshape(scale, bshape) + reshape(shift, bshape);
}

// Training-mode forward (no autograd): out = normalized x with the batch statistics, and
// each channel's batch mean and biased variance (computed in double, two passes).
struct BatchStats {
  Tensor out;
  std::vector<double> mean, var;
};
BatchStats batch_norm_train_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                                    const BatchNormShape& sh) {
  const int64_t N = sh.N, C = sh.C, S = sh.S, count = N * S;
  Tensor xc = contiguous(x.detach());
  Tensor wc = weight.defined() ? contiguous(weight.detach()) : Tensor();
  Tensor bc = bias.defined() ? contiguous(bias.detach()) : Tensor();
  BatchStats r{empty(x.shape(), x.dtype()), std::vector<double>(C), std::vector<double>(C)};
  std::vector<double>&mean_c = r.mean, &var_c = r.var;
  detail::dispatch_float(x.dtype(), "batch_norm", [&]<typename T>() {
    const T* p = static_cast<const T*>(xc.raw_data());
    const T* pw = wc.defined() ? static_cast<const T*>(wc.raw_data()) : nullptr;
    const T* pb = bc.defined() ? static_cast<const T*>(bc.raw_data()) : nullptr;
    T* o = static_cast<T*>(r.out.raw_data());
    // x viewed as [N, C, S]: statistics per channel (parallel over channels), two passes.
#pragma omp parallel for schedule(static) if (C > 1 && x.numel() > (1 << 14))
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t n = 0; n < N; ++n) {
        const T* row = p + (n * C + c) * S;
        for (int64_t i = 0; i < S; ++i) s += row[i];
      }
      const double mu = s / static_cast<double>(count);
      double ss = 0;
      for (int64_t n = 0; n < N; ++n) {
        const T* row = p + (n * C + c) * S;
        for (int64_t i = 0; i < S; ++i) ss += (row[i] - mu) * (row[i] - mu);
      }
      mean_c[c] = mu;
      var_c[c] = ss / static_cast<double>(count);
    }
#pragma omp parallel for schedule(static) if (N * C > 1 && x.numel() > (1 << 14))
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const int64_t c = nc % C;
      const T rstd = static_cast<T>(1.0 / std::sqrt(var_c[c] + eps));
      const T scale = pw ? rstd * pw[c] : rstd;
      const T shift = (pb ? pb[c] : T(0)) - static_cast<T>(mean_c[c]) * scale;
      const T* row = p + nc * S;
      T* yr = o + nc * S;
      for (int64_t i = 0; i < S; ++i) yr[i] = row[i] * scale + shift;
    }
  });
  return r;
}

// PyTorch: running = (1 - momentum) * running + momentum * batch, with the unbiased batch
// variance; in place (bumping the buffers' versions), outside autograd.
void update_running_stats(const Tensor& running_mean, const Tensor& running_var, const BatchStats& stats,
                          int64_t count, double momentum, DType dtype) {
  NoGradGuard ng;
  const int64_t C = static_cast<int64_t>(stats.mean.size());
  std::vector<double> unbiased(C);
  for (int64_t c = 0; c < C; ++c)
    unbiased[c] = stats.var[c] * static_cast<double>(count) / static_cast<double>(count - 1);
  Tensor bm = from_vector<double>(stats.mean, {C}).to(dtype);
  Tensor bv = from_vector<double>(unbiased, {C}).to(dtype);
  Tensor rm = running_mean, rv = running_var;  // handles to the caller's buffers
  rm.copy_(rm * (1.0 - momentum) + bm * momentum);
  rv.copy_(rv * (1.0 - momentum) + bv * momentum);
}

}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                  const Tensor& bias, bool training, double momentum, double eps) {
  const BatchNormShape sh = check_batch_norm(x, running_mean, running_var, weight, bias, eps);
  if (!training) return batch_norm_eval(x, running_mean, running_var, weight, bias, eps, sh.bshape);
  const int64_t count = sh.N * sh.S;
  KERN_CHECK(count > 1, "batch_norm: expected more than 1 value per channel when training, got input ",
             x.shape());
  BatchStats stats = batch_norm_train_forward(x, weight, bias, eps, sh);
  if (running_mean.defined()) update_running_stats(running_mean, running_var, stats, count, momentum, x.dtype());

  Dims dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  const Shape bshape = sh.bshape;
  return record_op("batch_norm", stats.out, {x, weight, bias}, [dims, bshape, eps](const BackwardContext& c) {
    const Tensor &x = c.inputs[0], &w = c.inputs[1];
    NormGrads n = norm_backward(x, c.grad, w.defined() ? reshape(w, bshape) : Tensor(), dims, eps, c.needs[0],
                                c.needs[1]);
    return G{n.gx, c.needs[1] ? sum(n.g_xhat_prod, dims) : Tensor(), c.needs[2] ? sum(c.grad, dims) : Tensor()};
  }, SavedValues::none().input(0).input_for(1, {0}), JvpRule([dims, bshape, eps](const JvpContext& c) {
    // w * J t_x + t_w * xhat + t_b; J = d xhat / dx = rstd (I - mean - xhat mean(xhat .)) per channel
    const Tensor &x = c.inputs[0], &w = c.inputs[1];
    Tensor xc = x - mean(x, dims, true);
    Tensor rstd = rsqrt(mean(xc * xc, dims, true) + eps);
    Tensor xhat = xc * rstd;
    Tensor tx;
    if (c.has(0)) {
      const Tensor& t = c.tangents[0];
      tx = rstd * (t - mean(t, dims, true) - xhat * mean(t * xhat, dims, true));
      if (w.defined()) tx = tx * reshape(w, bshape);
    }
    return detail::sum_defined({tx, c.has(1) ? reshape(c.tangents[1], bshape) * xhat : Tensor(),
                                c.has(2) ? reshape(c.tangents[2], bshape) : Tensor()},
                               c.output.shape());
  }));
}

}  // namespace kern
