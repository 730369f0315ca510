#pragma once
// 2-D convolution (cross-correlation, as in PyTorch), with groups (depthwise when
// groups == C_in), stride, padding, dilation and any kernel size (31x31, 1xK, Kx1 bands).
// Its two backward kernels are differentiable ops themselves, so second derivatives
// through convolutions are exact.
#include <kern/tensor.hpp>

#include <array>

namespace kern {

struct Conv2dParams {
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};  // symmetric, per spatial dim
  std::array<int64_t, 2> dilation{1, 1};
  int64_t groups = 1;
};

/// x: [N, C_in, H, W], weight: [C_out, C_in/groups, kH, kW], bias: [C_out] (optional)
///   -> [N, C_out, H_out, W_out]
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = {},
              const Conv2dParams& params = {});
/// d<grad_out, conv2d(x, w)>/dx for x of `input_shape`: grad_out [N, C_out, Ho, Wo] -> [N, C_in, H, W]
Tensor conv2d_backward_input(const Tensor& grad_out, const Tensor& weight,
                             const Shape& input_shape, const Conv2dParams& params);
/// d<grad_out, conv2d(x, w)>/dw for w of `weight_shape` -> [C_out, C_in/groups, kH, kW]
Tensor conv2d_backward_weight(const Tensor& grad_out, const Tensor& x, const Shape& weight_shape,
                              const Conv2dParams& params);
/// The output spatial size of a convolution along one dim.
int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                         int64_t dilation);

}  // namespace kern
