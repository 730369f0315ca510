// 2-D pooling over [N, C, H, W], each closed under differentiation:
//   max_pool2d: forward records the int64 flat index (into the H*W plane) of the first
//     maximum of each window; its backward is scatter_add of grad into zeros, whose own
//     backward is gather (ops/index.hpp), so every order is exact.
//   avg_pool2d: a linear map A (forward) and its adjoint A^T (avg_pool2d_backward), each
//     the other's backward. Handles count_include_pad and ceil_mode exactly as PyTorch.
//   adaptive_avg_pool2d: the same op pair with PyTorch's adaptive windows
//     [floor(i*H/oh), ceil((i+1)*H/oh)) (an exact linear map, like the fixed-matrix form
//     P_h x P_w^T, without the matmuls' copies).
// Windows and output sizes follow PyTorch (aten/src/ATen/native/Pool.h).
// float32 forwards run on oneDNN on the fast backend (framework/backend/dnnl_pool.cpp):
// max_pool2d (with the same first-maximum indices; inputs holding a NaN stay on kern's
// loops), avg_pool2d (except count_include_pad windows overhanging the right padding, whose
// divisor oneDNN does not clip) and adaptive_avg_pool2d when its windows are uniform
// (H % oh == 0 and W % ow == 0). The backwards are unchanged.
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

struct PoolGeom {
  int64_t N, C, H, W, Ho, Wo;
  int64_t k[2], s[2], p[2];
  bool ceil_mode, count_include_pad;
  bool adaptive = false;  // adaptive windows (k, s, p unused)
};

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// PyTorch's pooling_output_shape: with ceil_mode the last window must start inside the
// input or the left padding.
int64_t pool_output_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  int64_t out = floor_div(in + 2 * p - k + (ceil_mode ? s - 1 : 0), s) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

std::string describe(const Pool2dParams& p) {
  return fmt::format("kernel ({}, {}), stride ({}, {}), padding ({}, {}), ceil_mode {}", p.kernel[0], p.kernel[1],
                     p.stride[0], p.stride[1], p.padding[0], p.padding[1], p.ceil_mode);
}

// Validates pooling an input of `shape` and `dtype`; `op` names the public op in errors.
PoolGeom pool_geometry(const char* op, const Shape& shape, DType dtype, const Pool2dParams& params) {
  KERN_CHECK(shape.size() == 4, op, ": input must be 4-D [N, C, H, W], got ", shape);
  KERN_CHECK(dtype == DType::Float32 || dtype == DType::Float64, op, ": input must be float32 or float64, got ", dtype, " ", shape);
  PoolGeom g{};
  g.N = shape[0];
  g.C = shape[1];
  g.H = shape[2];
  g.W = shape[3];
  g.ceil_mode = params.ceil_mode;
  g.count_include_pad = params.count_include_pad;
  const int64_t in[2] = {g.H, g.W};
  int64_t out[2];
  for (int i = 0; i < 2; ++i) {
    g.k[i] = params.kernel[i];
    g.s[i] = params.stride[i] == 0 ? params.kernel[i] : params.stride[i];
    g.p[i] = params.padding[i];
    KERN_CHECK(g.k[i] >= 1 && g.s[i] >= 1 && g.p[i] >= 0, op, ": kernel and stride must be >= 1 and padding >= 0, got ",
               describe(params), " for input ", shape);
    KERN_CHECK(2 * g.p[i] <= g.k[i], op, ": padding must be at most half the kernel, got ", describe(params),
               " for input ", shape);
    KERN_CHECK(g.k[i] <= in[i] + 2 * g.p[i], op, ": kernel (", g.k[i], ") is larger than the padded input size ",
               in[i] + 2 * g.p[i], " in dim ", i + 2, " of input ", shape, " (", describe(params), ")");
    out[i] = pool_output_size(in[i], g.k[i], g.s[i], g.p[i], g.ceil_mode);
  }
  g.Ho = out[0];
  g.Wo = out[1];
  return g;
}

// The window of output (oh, ow) clipped to the input: rows [h0, h1), cols [w0, w1), and the
// average's divisor (PyTorch: the window clipped to the padded input when count_include_pad,
// else the number of real input elements).
struct Window {
  int64_t h0, h1, w0, w1, divisor;
};
Window window(const PoolGeom& g, int64_t oh, int64_t ow) {
  if (g.adaptive) {
    const int64_t h0 = oh * g.H / g.Ho, h1 = ((oh + 1) * g.H + g.Ho - 1) / g.Ho;
    const int64_t w0 = ow * g.W / g.Wo, w1 = ((ow + 1) * g.W + g.Wo - 1) / g.Wo;
    return {h0, h1, w0, w1, (h1 - h0) * (w1 - w0)};
  }
  int64_t h0 = oh * g.s[0] - g.p[0], w0 = ow * g.s[1] - g.p[1];
  int64_t h1 = std::min(h0 + g.k[0], g.H + g.p[0]), w1 = std::min(w0 + g.k[1], g.W + g.p[1]);
  const int64_t padded = (h1 - h0) * (w1 - w0);
  h0 = std::max<int64_t>(h0, 0);
  w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, g.H);
  w1 = std::min(w1, g.W);
  return {h0, h1, w0, w1, g.count_include_pad ? padded : (h1 - h0) * (w1 - w0)};
}

// Runs f(plane index, ...) over the N*C planes in parallel; each plane is owned by one thread.
template <typename F>
void for_planes(const PoolGeom& g, F&& f) {
  const int64_t planes = g.N * g.C;
#pragma omp parallel for schedule(static) if (planes > 1 && planes * g.H * g.W > (1 << 14))
  for (int64_t pl = 0; pl < planes; ++pl) f(pl);
}

backend::PoolGeometry backend_geometry(const PoolGeom& g) {
  return {g.N, g.C, g.H, g.W, g.Ho, g.Wo, {g.k[0], g.k[1]}, {g.s[0], g.s[1]}, {g.p[0], g.p[1]}};
}

// Runs the average-pooling forward on oneDNN when its windows and divisors are PyTorch's;
// returns false otherwise.
bool avg_forward_fast(const PoolGeom& g, const Tensor& xc, Tensor& out) {
  if (!backend::use_fast(xc.dtype()) || out.numel() == 0 || xc.numel() == 0) return false;
  backend::PoolGeometry bg = backend_geometry(g);
  bool exclude_pad = !g.count_include_pad;
  if (g.adaptive) {
    // Uniform adaptive windows [i*H/oh, (i+1)*H/oh) are a plain k = stride = H/oh pooling.
    if (g.H % g.Ho != 0 || g.W % g.Wo != 0) return false;
    bg.kernel[0] = bg.stride[0] = g.H / g.Ho;
    bg.kernel[1] = bg.stride[1] = g.W / g.Wo;
    bg.padding[0] = bg.padding[1] = 0;
    exclude_pad = true;
  } else if (!exclude_pad) {
    // count_include_pad divides by the window clipped to the padded input; oneDNN divides by
    // kH * kW. They agree when no (ceil_mode) window overhangs the right padding, and without
    // padding the clipped window is the real one (exclude_pad semantics).
    if (g.p[0] == 0 && g.p[1] == 0) {
      exclude_pad = true;
    } else {
      for (int i = 0; i < 2; ++i)
        if (((i == 0 ? g.Ho : g.Wo) - 1) * g.s[i] + g.k[i] > (i == 0 ? g.H : g.W) + 2 * g.p[i]) return false;
    }
  }
  backend::avg_pool2d_fast(bg, exclude_pad, xc.data_ptr<float>(), out.data_ptr<float>());
  return true;
}

// A (forward, adjoint = false): y = window means of x.  A^T (adjoint = true): each gy
// element spread evenly (1/divisor) over its window.
Tensor avg_pool_apply(const PoolGeom& g, const Tensor& src, bool adjoint) {
  Tensor sc = contiguous(src.detach());
  Tensor out = adjoint ? zeros({g.N, g.C, g.H, g.W}, src.dtype()) : empty({g.N, g.C, g.Ho, g.Wo}, src.dtype());
  if (!adjoint && avg_forward_fast(g, sc, out)) return out;
  if (!adjoint) backend::count_path(backend::Primitive::AvgPool2d, backend::Path::Reference);
  detail::dispatch_float(src.dtype(), adjoint ? "avg_pool2d_backward" : "avg_pool2d", [&]<typename T>() {
    const T* in = sc.template data_ptr<T>();
    T* o = out.template data_ptr<T>();
    for_planes(g, [&](int64_t pl) {
      const T* big_in = in + pl * g.H * g.W;   // forward: x plane
      const T* small_in = in + pl * g.Ho * g.Wo;  // adjoint: gy plane
      T* big_out = o + pl * g.H * g.W;
      T* small_out = o + pl * g.Ho * g.Wo;
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          const Window win = window(g, oh, ow);
          if (!adjoint) {
            T acc = 0;
            for (int64_t h = win.h0; h < win.h1; ++h)
              for (int64_t w = win.w0; w < win.w1; ++w) acc += big_in[h * g.W + w];
            small_out[oh * g.Wo + ow] = acc / T(win.divisor);
          } else {
            const T v = small_in[oh * g.Wo + ow] / T(win.divisor);
            for (int64_t h = win.h0; h < win.h1; ++h)
              for (int64_t w = win.w0; w < win.w1; ++w) big_out[h * g.W + w] += v;
          }
        }
    });
  });
  return out;
}

// The averaging map A as an op: x [N, C, H, W] -> [N, C, Ho, Wo]; its backward is avg_adjoint.
Tensor avg_adjoint(const Tensor& grad_out, const PoolGeom& g);
Tensor avg_forward(const Tensor& x, const PoolGeom& g) {
  Tensor out = avg_pool_apply(g, x, false);
  return record_op(g.adaptive ? "adaptive_avg_pool2d" : "avg_pool2d", out, {x},
                   [g](const BackwardContext& c) { return G{avg_adjoint(c.grad, g)}; }, SavedValues::none(), detail::linear_rule([g](const Tensor& t) { return avg_forward(t, g); }));
}

// A^T as an op: grad_out [N, C, Ho, Wo] -> [N, C, H, W]; its backward is avg_forward.
Tensor avg_adjoint(const Tensor& grad_out, const PoolGeom& g) {
  Tensor out = avg_pool_apply(g, grad_out, true);
  return record_op(g.adaptive ? "adaptive_avg_pool2d_backward" : "avg_pool2d_backward", out, {grad_out},
                   [g](const BackwardContext& c) { return G{avg_forward(c.grad, g)}; }, SavedValues::none(), detail::linear_rule([g](const Tensor& t) { return avg_adjoint(t, g); }));
}

}  // namespace

Tensor max_pool2d(const Tensor& x, const Pool2dParams& params) {
  KERN_CHECK(x.defined(), "max_pool2d: input is undefined");
  const PoolGeom g = pool_geometry("max_pool2d", x.shape(), x.dtype(), params);
  Tensor xc = contiguous(x.detach());
  Tensor out = empty({g.N, g.C, g.Ho, g.Wo}, x.dtype());
  Tensor idx = empty({g.N, g.C, g.Ho, g.Wo}, DType::Int64);
  const bool fast = backend::use_fast(x.dtype()) && out.numel() > 0 && xc.numel() > 0 &&
                    backend::max_pool2d_fast(backend_geometry(g), xc.data_ptr<float>(), out.data_ptr<float>(),
                                             idx.data_ptr<int64_t>());
  if (!fast) backend::count_path(backend::Primitive::MaxPool2d, backend::Path::Reference);
  if (!fast) detail::dispatch_float(x.dtype(), "max_pool2d", [&]<typename T>() {
    const T* in = xc.template data_ptr<T>();
    T* o = out.template data_ptr<T>();
    int64_t* ix = idx.data_ptr<int64_t>();
    const bool tiled = g.k[0] == g.s[0] && g.k[1] == g.s[1] && g.p[0] == 0 && g.p[1] == 0 &&
                       g.Ho * g.k[0] <= g.H && g.Wo * g.k[1] <= g.W;
    for_planes(g, [&](int64_t pl) {
      const T* xp = in + pl * g.H * g.W;
      if (tiled) {
        // Non-overlapping windows inside the input (the common k = s, no padding case):
        // no window bookkeeping. Same first-maximum / NaN rule as below.
        for (int64_t oh = 0; oh < g.Ho; ++oh)
          for (int64_t ow = 0; ow < g.Wo; ++ow) {
            const int64_t h0 = oh * g.k[0], w0 = ow * g.k[1];
            T best = xp[h0 * g.W + w0];
            int64_t arg = h0 * g.W + w0;
            for (int64_t h = h0; h < h0 + g.k[0]; ++h)
              for (int64_t w = w0; w < w0 + g.k[1]; ++w) {
                const T v = xp[h * g.W + w];
                // Branch-free select (random data mispredicts a branch half the time).
                const bool better = (v > best) | ((v != v) & (best == best));
                best = better ? v : best;
                arg = better ? h * g.W + w : arg;
              }
            o[pl * g.Ho * g.Wo + oh * g.Wo + ow] = best;
            ix[pl * g.Ho * g.Wo + oh * g.Wo + ow] = arg;
          }
        return;
      }
      for (int64_t oh = 0; oh < g.Ho; ++oh)
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          const Window win = window(g, oh, ow);
          // The first maximum in row-major window order; a NaN wins (and propagates), as in PyTorch.
          T best = -std::numeric_limits<T>::infinity();
          int64_t arg = win.h0 * g.W + win.w0;
          bool nan = false;
          for (int64_t h = win.h0; h < win.h1 && !nan; ++h)
            for (int64_t w = win.w0; w < win.w1 && !nan; ++w) {
              const T v = xp[h * g.W + w];
              if (v > best || std::isnan(v)) {
                best = v;
                arg = h * g.W + w;
                nan = std::isnan(v);
              }
            }
          o[pl * g.Ho * g.Wo + oh * g.Wo + ow] = best;
          ix[pl * g.Ho * g.Wo + oh * g.Wo + ow] = arg;
        }
    });
  });
  const Shape in_shape = x.shape();
  return record_op("max_pool2d", out, {x}, [idx, in_shape](const BackwardContext& c) {
    const int64_t N = in_shape[0], C = in_shape[1];
    Tensor flat_idx = idx.reshape({N, C, -1});
    Tensor gy = c.grad.reshape({N, C, -1});
    Tensor plane = zeros({N, C, in_shape[2] * in_shape[3]}, c.grad.dtype());
    return G{scatter_add(plane, 2, flat_idx, gy).reshape(in_shape)};
  }, SavedValues::none(), JvpRule([idx, in_shape](const JvpContext& c) {  // the tangent at each window's argmax
    const int64_t N = in_shape[0], C = in_shape[1];
    return gather(reshape(c.tangents[0], {N, C, -1}), 2, idx.reshape({N, C, -1})).reshape(c.output.shape());
  }));  // the indices are the op's own (not returned)
}

Tensor avg_pool2d(const Tensor& x, const Pool2dParams& params) {
  KERN_CHECK(x.defined(), "avg_pool2d: input is undefined");
  const PoolGeom g = pool_geometry("avg_pool2d", x.shape(), x.dtype(), params);
  return avg_forward(x, g);
}

Tensor adaptive_avg_pool2d(const Tensor& x, std::array<int64_t, 2> output_size) {
  KERN_CHECK(x.defined() && x.dim() == 4, "adaptive_avg_pool2d: input must be 4-D [N, C, H, W], got ",
             x.defined() ? x.shape() : Shape{});
  KERN_CHECK(x.dtype() == DType::Float32 || x.dtype() == DType::Float64, "adaptive_avg_pool2d: input must be float32 or float64, got ", x.dtype(), " ",
             x.shape());
  KERN_CHECK(output_size[0] >= 1 && output_size[1] >= 1 && x.size(2) >= 1 && x.size(3) >= 1,
             "adaptive_avg_pool2d: output size (", output_size[0], ", ", output_size[1],
             ") and input spatial size must be >= 1, input ", x.shape());
  PoolGeom g{};
  g.N = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.Ho = output_size[0];
  g.Wo = output_size[1];
  g.adaptive = true;
  return avg_forward(x, g);
}

}  // namespace kern
