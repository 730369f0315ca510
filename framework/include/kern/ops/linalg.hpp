#pragma once
// Matrix products. float32 runs on oneDNN's GEMM; float64 on Eigen (the reference path).
#include <kern/tensor.hpp>

namespace kern {

/// a: [M, K], b: [K, N] -> [M, N]
Tensor mm(const Tensor& a, const Tensor& b);
/// a: [B, M, K], b: [B, K, N] -> [B, M, N]
Tensor bmm(const Tensor& a, const Tensor& b);
/// torch.matmul: 1-D and N-D operands, batch dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b);
/// x: [*, in], weight: [out, in], bias: [out] (optional) -> [*, out]
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = {});
/// a: [M], b: [N] -> [M, N]
Tensor outer(const Tensor& a, const Tensor& b);

}  // namespace kern
