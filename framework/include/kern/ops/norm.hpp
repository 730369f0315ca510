#pragma once
// Normalization layers as ops.
#include <kern/tensor.hpp>

namespace kern {

/// Normalizes over the trailing dims given by `normalized_shape`; weight/bias (optional)
/// have that shape. x: [*, normalized_shape...] -> same shape.
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = {},
                  const Tensor& bias = {}, double eps = 1e-5);

/// layer_norm's input gradient as one fused, differentiable op: grad, x: [*, normalized_shape...],
/// weight: [normalized_shape...] (optional) -> d<grad, layer_norm(x, ., weight, ., eps)>/dx,
/// shaped like x. Its own derivatives are fused kernels too (see framework/ops/norm.cpp).
Tensor layer_norm_backward(const Tensor& grad, const Tensor& x, const Shape& normalized_shape,
                           const Tensor& weight = {}, double eps = 1e-5);

/// x: [N, C, *]; running_mean, running_var, weight, bias: [C] (each optional, same dtype).
/// In training mode normalizes with the batch statistics (biased variance; needs more than
/// one value per channel) and, when running_mean/var are given, updates them in place
/// outside autograd with `momentum` (unbiased variance, as PyTorch). In eval mode uses the
/// running statistics, which must then be given.
Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight, const Tensor& bias, bool training,
                  double momentum = 0.1, double eps = 1e-5);

}  // namespace kern
