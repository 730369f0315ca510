#pragma once
#ifndef KERN_BUILDING_FRAMEWORK  // private to kern_core: see CMakeLists.txt (layering)
#error "framework/backend/depthwise.hpp is private to kern_core; include <kern/...> public headers instead"
#endif
// Internal: kern's direct depthwise convolution kernels (float32, stride 1, dilation 1,
// one filter per channel). oneDNN 2.6 runs large depthwise kernels forward and every
// depthwise weight gradient as im2col + GEMM; these loops work on a zero-padded copy of each
// channel plane that stays in L1/L2 and vectorize along the output width.
#include <cstdint>

namespace kern::backend {

struct DepthwiseGeometry {
  int64_t N, C, H, W;  // x: [N, C, H, W]; w: [C, 1, kH, kW]; y: [N, C, Ho, Wo]
  int64_t kH, kW;
  int64_t padH, padW;  // symmetric zero padding
  int64_t Ho() const { return H + 2 * padH - kH + 1; }
  int64_t Wo() const { return W + 2 * padW - kW + 1; }
};

/// y = depthwise_conv(x, w) (+ bias[C] when bias != nullptr)
void depthwise_forward(const DepthwiseGeometry& g, const float* x, const float* w, const float* bias, float* y);
/// gx = d<gy, conv(x, w)>/dx: the full correlation of gy with the flipped filter
void depthwise_backward_input(const DepthwiseGeometry& g, const float* gy, const float* w, float* gx);
/// gw = d<gy, conv(x, w)>/dw, summed over the batch
void depthwise_backward_weight(const DepthwiseGeometry& g, const float* gy, const float* x, float* gw);

}  // namespace kern::backend
