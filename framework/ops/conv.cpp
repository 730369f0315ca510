// conv2d and its two backward kernels, each a differentiable op, so the family is closed
// under differentiation:
//   y  = conv2d(x, w):                  dx = bwd_input(gy, w),   dw = bwd_weight(gy, x), db = sum gy
//   gx = bwd_input(gy, w):              dgy = conv2d(ggx, w),     dw = bwd_weight(gy, ggx)
//   gw = bwd_weight(gy, x):             dgy = conv2d(x, ggw),     dx = bwd_input(gy, ggw)
// (the last two because <a, bwd_input(gy, w)> = <conv2d(a, w), gy> = <bwd_weight(gy, a), w>.)
//
// Reference path: direct loops (any float dtype), OpenMP over output planes so every thread
// owns what it writes. Fast path: oneDNN (float32), framework/backend/dnnl_conv.cpp.
//
// bf16 (autocast, kern/autocast.hpp): the three ops also take bf16 operands and return
// float32 (oneDNN's bf16 convolutions, float32 accumulation; depthwise too). Each backward
// converts the float32 gradient to its operands' dtype, so the backward convolutions run in
// bf16, and returns gradients in the operands' dtypes (no-ops for float32/float64). Under
// autocast, conv2d converts float32 input and weight (recorded) and reruns on bf16.
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include <optional>

#include "../backend/backend.hpp"
#include "../backend/depthwise.hpp"
#include "autocast_internal.hpp"
#include "kernel_utils.hpp"
#include "jvp_util.hpp"

namespace kern {

using G = std::vector<Tensor>;

namespace {

// floor(a / b) for b > 0 and any sign of a.
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Output positions o in [lo, hi) whose input position o * s - p + k * d lies in [0, in).
struct Range {
  int64_t lo, hi;
};
Range valid_outputs(int64_t in, int64_t out, int64_t s, int64_t p, int64_t k, int64_t d) {
  const int64_t off = k * d - p;  // input position of output 0
  const int64_t lo = std::max<int64_t>(0, floor_div(-off + s - 1, s));
  const int64_t hi = std::min<int64_t>(out, floor_div(in - 1 - off, s) + 1);
  return {lo, std::max(lo, hi)};
}

std::string describe_params(const Conv2dParams& p) {
  return fmt::format("stride ({}, {}), padding ({}, {}), dilation ({}, {}), groups {}", p.stride[0], p.stride[1],
                     p.padding[0], p.padding[1], p.dilation[0], p.dilation[1], p.groups);
}

// Validates a convolution x: [N, C_in, H, W] (*) w: [C_out, C_in/groups, kH, kW] and returns
// its geometry. `op` names the public op in the error messages.
backend::ConvGeometry geometry(const char* op, const Shape& xs, const Shape& ws, const Conv2dParams& p) {
  KERN_CHECK(xs.size() == 4, op, ": input must be 4-D [N, C_in, H, W], got ", xs, " (weight ", ws, ")");
  KERN_CHECK(ws.size() == 4, op, ": weight must be 4-D [C_out, C_in/groups, kH, kW], got ", ws, " (input ", xs,
             ")");
  for (int i = 0; i < 2; ++i) {
    KERN_CHECK(p.stride[i] >= 1 && p.dilation[i] >= 1 && p.padding[i] >= 0, op,
               ": stride and dilation must be >= 1 and padding >= 0, got ", describe_params(p), " for input ", xs,
               " and weight ", ws);
  }
  KERN_CHECK(p.groups >= 1 && xs[1] % p.groups == 0 && ws[0] % p.groups == 0, op, ": groups = ", p.groups,
             " must divide C_in = ", xs[1], " and C_out = ", ws[0], " (input ", xs, ", weight ", ws, ")");
  KERN_CHECK(ws[1] * p.groups == xs[1], op, ": weight ", ws, " expects ", ws[1] * p.groups,
             " input channels (C_in/groups = ", ws[1], ", groups = ", p.groups, ") but input ", xs, " has ", xs[1]);
  KERN_CHECK(ws[2] >= 1 && ws[3] >= 1, op, ": empty kernel in weight ", ws);
  backend::ConvGeometry g{};
  g.N = xs[0];
  g.C_in = xs[1];
  g.H = xs[2];
  g.W = xs[3];
  g.C_out = ws[0];
  g.kH = ws[2];
  g.kW = ws[3];
  for (int i = 0; i < 2; ++i) {
    g.stride[i] = p.stride[i];
    g.padding[i] = p.padding[i];
    g.dilation[i] = p.dilation[i];
  }
  g.groups = p.groups;
  const int64_t eh = p.dilation[0] * (g.kH - 1) + 1, ew = p.dilation[1] * (g.kW - 1) + 1;
  KERN_CHECK(eh <= g.H + 2 * p.padding[0] && ew <= g.W + 2 * p.padding[1], op, ": kernel ", ws,
             " (dilated extent ", eh, "x", ew, ") is larger than the padded input ", xs, " (padded size ",
             g.H + 2 * p.padding[0], "x", g.W + 2 * p.padding[1], ", ", describe_params(p), ")");
  g.Ho = conv_output_size(g.H, g.kH, p.stride[0], p.padding[0], p.dilation[0]);
  g.Wo = conv_output_size(g.W, g.kW, p.stride[1], p.padding[1], p.dilation[1]);
  return g;
}

void check_float_pair(const char* op, const char* na, const Tensor& a, const char* nb, const Tensor& b) {
  KERN_CHECK(is_floating(a.dtype()) && a.dtype() == b.dtype(), op, ": ", na, " (", a.dtype(), " ", a.shape(),
             ") and ", nb, " (", b.dtype(), " ", b.shape(), ") must have the same floating dtype");
}

void check_grad_out(const char* op, const Tensor& gy, const backend::ConvGeometry& g) {
  const Shape want{g.N, g.C_out, g.Ho, g.Wo};
  KERN_CHECK(gy.shape() == want, op, ": grad_out ", gy.shape(), " does not match the convolution output ", want);
}

bool any_empty(const backend::ConvGeometry& g) {
  return g.N == 0 || g.C_in == 0 || g.C_out == 0 || g.Ho == 0 || g.Wo == 0;
}

// Multiply-adds of the convolution; small ones (gradient checks) stay on one thread, where a
// parallel region would cost more than the work, especially on a busy machine.
bool worth_threads(const backend::ConvGeometry& g) {
  return g.N * g.C_out * g.Ho * g.Wo * (g.C_in / g.groups) * g.kH * g.kW > (1 << 16);
}

// ---- reference kernels (contiguous buffers)

// y[n, co] = bias[co] + sum_{ci in group, ki, kj} w[co, ci, ki, kj] * x[n, ci, ki-shifted rows, kj-shifted cols]
template <typename T>
void forward_ref(const backend::ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  const int64_t cig = g.C_in / g.groups, cog = g.C_out / g.groups;
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
#pragma omp parallel for collapse(2) schedule(static) if (worth_threads(g))
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t co = 0; co < g.C_out; ++co) {
      T* yp = y + (n * g.C_out + co) * plane_out;
      std::fill_n(yp, plane_out, bias ? bias[co] : T(0));
      const int64_t c0 = (co / cog) * cig;
      for (int64_t c = 0; c < cig; ++c) {
        const T* xp = x + (n * g.C_in + c0 + c) * plane_in;
        const T* wp = w + (co * cig + c) * g.kH * g.kW;
        for (int64_t ki = 0; ki < g.kH; ++ki) {
          const Range rh = valid_outputs(g.H, g.Ho, g.stride[0], g.padding[0], ki, g.dilation[0]);
          for (int64_t kj = 0; kj < g.kW; ++kj) {
            const Range rw = valid_outputs(g.W, g.Wo, g.stride[1], g.padding[1], kj, g.dilation[1]);
            const T wv = wp[ki * g.kW + kj];
            const int64_t col0 = kj * g.dilation[1] - g.padding[1];
            for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
              const T* xr = xp + (oh * g.stride[0] - g.padding[0] + ki * g.dilation[0]) * g.W + col0;
              T* yr = yp + oh * g.Wo;
              if (g.stride[1] == 1) {
#pragma omp simd
                for (int64_t ow = rw.lo; ow < rw.hi; ++ow) yr[ow] += wv * xr[ow];
              } else {
                for (int64_t ow = rw.lo; ow < rw.hi; ++ow) yr[ow] += wv * xr[ow * g.stride[1]];
              }
            }
          }
        }
      }
    }
}

// gx[n, ci] = sum_{co in group, ki, kj} w[co, ci, ki, kj] * gy[n, co] scattered back to the
// input positions each output read; input rows no window touched stay zero.
template <typename T>
void backward_input_ref(const backend::ConvGeometry& g, const T* gy, const T* w, T* gx) {
  const int64_t cig = g.C_in / g.groups, cog = g.C_out / g.groups;
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
#pragma omp parallel for collapse(2) schedule(static) if (worth_threads(g))
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t ci = 0; ci < g.C_in; ++ci) {
      T* xp = gx + (n * g.C_in + ci) * plane_in;
      std::fill_n(xp, plane_in, T(0));
      const int64_t grp = ci / cig, c = ci % cig;
      for (int64_t co = grp * cog; co < (grp + 1) * cog; ++co) {
        const T* yp = gy + (n * g.C_out + co) * plane_out;
        const T* wp = w + (co * cig + c) * g.kH * g.kW;
        for (int64_t ki = 0; ki < g.kH; ++ki) {
          const Range rh = valid_outputs(g.H, g.Ho, g.stride[0], g.padding[0], ki, g.dilation[0]);
          for (int64_t kj = 0; kj < g.kW; ++kj) {
            const Range rw = valid_outputs(g.W, g.Wo, g.stride[1], g.padding[1], kj, g.dilation[1]);
            const T wv = wp[ki * g.kW + kj];
            const int64_t col0 = kj * g.dilation[1] - g.padding[1];
            for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
              T* xr = xp + (oh * g.stride[0] - g.padding[0] + ki * g.dilation[0]) * g.W + col0;
              const T* yr = yp + oh * g.Wo;
              if (g.stride[1] == 1) {
#pragma omp simd
                for (int64_t ow = rw.lo; ow < rw.hi; ++ow) xr[ow] += wv * yr[ow];
              } else {
                for (int64_t ow = rw.lo; ow < rw.hi; ++ow) xr[ow * g.stride[1]] += wv * yr[ow];
              }
            }
          }
        }
      }
    }
}

// gw[co, c, ki, kj] = sum_{n, oh, ow} gy[n, co, oh, ow] * x[n, group(co) + c, ih, iw]
template <typename T>
void backward_weight_ref(const backend::ConvGeometry& g, const T* gy, const T* x, T* gw) {
  const int64_t cig = g.C_in / g.groups, cog = g.C_out / g.groups;
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
#pragma omp parallel for schedule(static) if (worth_threads(g))
  for (int64_t co = 0; co < g.C_out; ++co) {
    const int64_t c0 = (co / cog) * cig;
    for (int64_t c = 0; c < cig; ++c) {
      T* wp = gw + (co * cig + c) * g.kH * g.kW;
      for (int64_t ki = 0; ki < g.kH; ++ki) {
        const Range rh = valid_outputs(g.H, g.Ho, g.stride[0], g.padding[0], ki, g.dilation[0]);
        for (int64_t kj = 0; kj < g.kW; ++kj) {
          const Range rw = valid_outputs(g.W, g.Wo, g.stride[1], g.padding[1], kj, g.dilation[1]);
          const int64_t col0 = kj * g.dilation[1] - g.padding[1];
          T acc = 0;
          for (int64_t n = 0; n < g.N; ++n) {
            const T* xp = x + (n * g.C_in + c0 + c) * plane_in;
            const T* yp = gy + (n * g.C_out + co) * plane_out;
            for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
              const T* xr = xp + (oh * g.stride[0] - g.padding[0] + ki * g.dilation[0]) * g.W + col0;
              const T* yr = yp + oh * g.Wo;
              if (g.stride[1] == 1) {
#pragma omp simd reduction(+ : acc)
                for (int64_t ow = rw.lo; ow < rw.hi; ++ow) acc += yr[ow] * xr[ow];
              } else {
                for (int64_t ow = rw.lo; ow < rw.hi; ++ow) acc += yr[ow] * xr[ow * g.stride[1]];
              }
            }
          }
          wp[ki * g.kW + kj] = acc;
        }
      }
    }
  }
}

// ---- raw computations (no autograd): contiguous copies in, a fresh tensor out.

// Plain depthwise convolutions (one filter per channel, stride 1, no dilation) run kern's
// direct kernels on the fast path: oneDNN 2.6 lowers large depthwise kernels and every
// depthwise weight gradient to im2col + GEMM.
std::optional<backend::DepthwiseGeometry> as_depthwise(const backend::ConvGeometry& g) {
  const bool plain = g.groups == g.C_in && g.C_out == g.C_in && g.stride[0] == 1 && g.stride[1] == 1 &&
                     g.dilation[0] == 1 && g.dilation[1] == 1 && g.padding[0] < g.kH && g.padding[1] < g.kW;
  if (!plain) return std::nullopt;
  return backend::DepthwiseGeometry{g.N, g.C_in, g.H, g.W, g.kH, g.kW, g.padding[0], g.padding[1]};
}

// bf16 on a plain depthwise geometry: kern's direct float32 kernels on the bf16 values
// widened to float32, which is exactly bf16 compute with float32 accumulation (a product of two
// bf16 values is exact in float32). oneDNN 2.6's bf16 depthwise weight gradient is im2col +
// GEMM ("x64:gemm:jit"), 2x slower than float32 on convnext_block_bf16.
std::optional<backend::DepthwiseGeometry> bf16_depthwise(const backend::ConvGeometry& g) {
  if (!backend::use_fast(DType::Float32)) return std::nullopt;
  return as_depthwise(g);
}

// The reference loops count as DepthwiseConv2d on a geometry the direct kernels take.
void count_reference(const backend::ConvGeometry& g) {
  backend::count_path(as_depthwise(g) ? backend::Primitive::DepthwiseConv2d : backend::Primitive::Conv2d,
                      backend::Path::Reference);
}

// The dtype a convolution of `operand`-dtype tensors writes: bf16 accumulates into float32.
DType result_dtype(DType operand) { return operand == DType::BFloat16 ? DType::Float32 : operand; }

Tensor raw_forward(const backend::ConvGeometry& g, const Tensor& x, const Tensor& w, const Tensor& b) {
  Tensor out = empty({g.N, g.C_out, g.Ho, g.Wo}, result_dtype(x.dtype()));
  if (out.numel() == 0) return out;
  Tensor xc = contiguous(x.detach()), wc = contiguous(w.detach());
  Tensor bc = b.defined() ? contiguous(b.detach()) : Tensor();
  if (g.C_in == 0) return b.defined() ? out.copy_(bc.reshape({1, g.C_out, 1, 1})) : out.fill_(0.0);
  if (x.dtype() == DType::BFloat16) {
    if (auto dw = bf16_depthwise(g)) {
      const Tensor xf = xc.to(DType::Float32), wf = wc.to(DType::Float32);
      backend::depthwise_forward(*dw, xf.data_ptr<float>(), wf.data_ptr<float>(),
                                 bc.defined() ? bc.data_ptr<float>() : nullptr, out.data_ptr<float>());
      return out;
    }
    backend::conv2d_forward_bf16(g, xc.data_ptr<bf16>(), wc.data_ptr<bf16>(),
                                 bc.defined() ? bc.data_ptr<float>() : nullptr, out.data_ptr<float>());
    return out;
  }
  detail::dispatch_float(x.dtype(), "conv2d", [&]<typename T>() {
    const T* bp = bc.defined() ? bc.template data_ptr<T>() : nullptr;
    if constexpr (std::is_same_v<T, float>) {
      if (backend::use_fast(DType::Float32)) {
        if (auto dw = as_depthwise(g)) {
          backend::depthwise_forward(*dw, xc.data_ptr<float>(), wc.data_ptr<float>(), bp, out.data_ptr<float>());
          return;
        }
        backend::conv2d_forward_fast(g, xc.data_ptr<float>(), wc.data_ptr<float>(), bp, out.data_ptr<float>());
        return;
      }
    }
    count_reference(g);
    forward_ref<T>(g, xc.template data_ptr<T>(), wc.template data_ptr<T>(), bp, out.template data_ptr<T>());
  });
  return out;
}

Tensor raw_backward_input(const backend::ConvGeometry& g, const Tensor& gy, const Tensor& w) {
  Tensor out = zeros({g.N, g.C_in, g.H, g.W}, result_dtype(gy.dtype()));
  if (out.numel() == 0 || any_empty(g)) return out;
  Tensor gc = contiguous(gy.detach()), wc = contiguous(w.detach());
  if (gy.dtype() == DType::BFloat16) {
    if (auto dw = bf16_depthwise(g)) {
      const Tensor gf = gc.to(DType::Float32), wf = wc.to(DType::Float32);
      backend::depthwise_backward_input(*dw, gf.data_ptr<float>(), wf.data_ptr<float>(), out.data_ptr<float>());
      return out;
    }
    backend::conv2d_backward_input_bf16(g, gc.data_ptr<bf16>(), wc.data_ptr<bf16>(), out.data_ptr<float>());
    return out;
  }
  detail::dispatch_float(gy.dtype(), "conv2d_backward_input", [&]<typename T>() {
    if constexpr (std::is_same_v<T, float>) {
      if (backend::use_fast(DType::Float32)) {
        if (auto dw = as_depthwise(g)) {
          backend::depthwise_backward_input(*dw, gc.data_ptr<float>(), wc.data_ptr<float>(), out.data_ptr<float>());
          return;
        }
        backend::conv2d_backward_input_fast(g, gc.data_ptr<float>(), wc.data_ptr<float>(), out.data_ptr<float>());
        return;
      }
    }
    count_reference(g);
    backward_input_ref<T>(g, gc.template data_ptr<T>(), wc.template data_ptr<T>(), out.template data_ptr<T>());
  });
  return out;
}

Tensor raw_backward_weight(const backend::ConvGeometry& g, const Tensor& gy, const Tensor& x) {
  Tensor out = zeros({g.C_out, g.C_in / g.groups, g.kH, g.kW}, result_dtype(gy.dtype()));
  if (out.numel() == 0 || any_empty(g)) return out;
  Tensor gc = contiguous(gy.detach()), xc = contiguous(x.detach());
  if (gy.dtype() == DType::BFloat16) {
    if (auto dw = bf16_depthwise(g)) {
      const Tensor gf = gc.to(DType::Float32), xf = xc.to(DType::Float32);
      backend::depthwise_backward_weight(*dw, gf.data_ptr<float>(), xf.data_ptr<float>(), out.data_ptr<float>());
      return out;
    }
    backend::conv2d_backward_weight_bf16(g, gc.data_ptr<bf16>(), xc.data_ptr<bf16>(), out.data_ptr<float>());
    return out;
  }
  detail::dispatch_float(gy.dtype(), "conv2d_backward_weight", [&]<typename T>() {
    if constexpr (std::is_same_v<T, float>) {
      if (backend::use_fast(DType::Float32)) {
        if (auto dw = as_depthwise(g)) {
          backend::depthwise_backward_weight(*dw, gc.data_ptr<float>(), xc.data_ptr<float>(), out.data_ptr<float>());
          return;
        }
        backend::conv2d_backward_weight_fast(g, gc.data_ptr<float>(), xc.data_ptr<float>(), out.data_ptr<float>());
        return;
      }
    }
    count_reference(g);
    backward_weight_ref<T>(g, gc.template data_ptr<T>(), xc.template data_ptr<T>(), out.template data_ptr<T>());
  });
  return out;
}

}  // namespace

int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
  return (in + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1;
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& params) {
  KERN_CHECK(x.defined() && weight.defined(), "conv2d: input and weight must be defined");
  const auto g = geometry("conv2d", x.shape(), weight.shape(), params);
  check_float_pair("conv2d", "input", x, "weight", weight);
  if (detail::autocast_applies(x, weight))  // the bias stays float32: it is added in float32
    return conv2d(detail::autocast_cast(x), detail::autocast_cast(weight), bias, params);
  if (bias.defined()) {
    KERN_CHECK(bias.dim() == 1 && bias.size(0) == g.C_out, "conv2d: bias ", bias.shape(), " must be [C_out] = [",
               g.C_out, "] for weight ", weight.shape());
    KERN_CHECK(bias.dtype() == result_dtype(x.dtype()), "conv2d: bias is ", bias.dtype(), " but a convolution of ",
               x.dtype(), " input and weight is ", result_dtype(x.dtype()));
  }
  // A strided input becomes a recorded contiguous() copy first: the node then saves the
  // dense tensor, and every later pass through it (backward, double backward, each HVP)
  // reads it without copying again.
  if (!x.is_contiguous()) return conv2d(contiguous(x), weight, bias, params);
  Tensor out = raw_forward(g, x, weight, bias);
  const Conv2dParams p = params;
  G inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  return record_op("conv2d", out, inputs, [p](const BackwardContext& c) {
    const Tensor& x = c.inputs[0];
    const Tensor& w = c.inputs[1];
    const Tensor g = c.grad.to(x.dtype());  // bf16 operands: the backward convolutions run in bf16
    G grads(c.inputs.size());
    if (c.needs[0]) grads[0] = conv2d_backward_input(g, w, x.shape(), p).to(x.dtype());
    if (c.needs[1]) grads[1] = conv2d_backward_weight(g, x, w.shape(), p).to(w.dtype());
    if (c.inputs.size() > 2 && c.needs[2]) grads[2] = sum(c.grad, {0, 2, 3});
    return grads;
  }, SavedValues::none().input_for(0, {1}).input_for(1, {0}), JvpRule([p](const JvpContext& c) {  // conv2d(t_x, w, t_b) + conv2d(x, t_w)
    const Tensor &x = c.inputs[0], &w = c.inputs[1];
    Tensor tb = c.inputs.size() > 2 && c.has(2) ? c.tangents[2] : Tensor();
    Tensor t;
    if (c.has(0)) {
      t = conv2d(c.tangents[0], w, tb, p);
      tb = Tensor();
    }
    if (c.has(1)) t = t.defined() ? t + conv2d(x, c.tangents[1], {}, p) : conv2d(x, c.tangents[1], tb, p);
    else if (tb.defined()) t = detail::at_shape(reshape(tb, {tb.size(0), 1, 1}), c.output.shape());
    return t;
  }));  // x for the weight's gradient, w for the input's
}

Tensor conv2d_backward_input(const Tensor& grad_out, const Tensor& weight, const Shape& input_shape,
                             const Conv2dParams& params) {
  KERN_CHECK(grad_out.defined() && weight.defined(), "conv2d_backward_input: grad_out and weight must be defined");
  const auto g = geometry("conv2d_backward_input", input_shape, weight.shape(), params);
  check_float_pair("conv2d_backward_input", "grad_out", grad_out, "weight", weight);
  check_grad_out("conv2d_backward_input", grad_out, g);
  if (!grad_out.is_contiguous()) return conv2d_backward_input(contiguous(grad_out), weight, input_shape, params);
  Tensor out = raw_backward_input(g, grad_out, weight);
  const Conv2dParams p = params;
  return record_op("conv2d_backward_input", out, {grad_out, weight}, [p](const BackwardContext& c) {
    const Tensor& gy = c.inputs[0];
    const Tensor& w = c.inputs[1];
    const Tensor g = c.grad.to(gy.dtype());
    return G{c.needs[0] ? conv2d(g, w, {}, p).to(gy.dtype()) : Tensor(),
             c.needs[1] ? conv2d_backward_weight(gy, g, w.shape(), p).to(w.dtype()) : Tensor()};
  }, SavedValues::none().input_for(0, {1}).input_for(1, {0}), JvpRule([p, input_shape](const JvpContext& c) {  // bilinear in (grad_out, weight)
    return detail::sum_defined({c.has(0) ? conv2d_backward_input(c.tangents[0], c.inputs[1], input_shape, p) : Tensor(),
                                c.has(1) ? conv2d_backward_input(c.inputs[0], c.tangents[1], input_shape, p) : Tensor()},
                               c.output.shape());
  }));
}

Tensor conv2d_backward_weight(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                              const Conv2dParams& params) {
  KERN_CHECK(grad_out.defined() && x.defined(), "conv2d_backward_weight: grad_out and input must be defined");
  const auto g = geometry("conv2d_backward_weight", x.shape(), weight_shape, params);
  check_float_pair("conv2d_backward_weight", "grad_out", grad_out, "input", x);
  check_grad_out("conv2d_backward_weight", grad_out, g);
  if (!grad_out.is_contiguous() || !x.is_contiguous())  // saved dense, as in conv2d
    return conv2d_backward_weight(contiguous(grad_out), contiguous(x), weight_shape, params);
  Tensor out = raw_backward_weight(g, grad_out, x);
  const Conv2dParams p = params;
  return record_op("conv2d_backward_weight", out, {grad_out, x}, [p](const BackwardContext& c) {
    const Tensor& gy = c.inputs[0];
    const Tensor& x = c.inputs[1];
    const Tensor g = c.grad.to(gy.dtype());
    return G{c.needs[0] ? conv2d(x, g, {}, p).to(gy.dtype()) : Tensor(),
             c.needs[1] ? conv2d_backward_input(gy, g, x.shape(), p).to(x.dtype()) : Tensor()};
  }, SavedValues::none().input_for(0, {1}).input_for(1, {0}), JvpRule([p, weight_shape](const JvpContext& c) {  // bilinear in (grad_out, x)
    return detail::sum_defined({c.has(0) ? conv2d_backward_weight(c.tangents[0], c.inputs[1], weight_shape, p) : Tensor(),
                                c.has(1) ? conv2d_backward_weight(c.inputs[0], c.tangents[1], weight_shape, p) : Tensor()},
                               c.output.shape());
  }));
}

}  // namespace kern
