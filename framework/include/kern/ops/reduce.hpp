#pragma once
// Reductions. `dims` empty means all dimensions. keepdim keeps reduced dims as size 1.
#include <kern/tensor.hpp>

namespace kern {

Tensor sum(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const Dims& dims = {}, bool keepdim = false);
/// Variance with Bessel's `correction` (1 = unbiased, PyTorch's default; 0 = biased).
Tensor var(const Tensor& x, const Dims& dims = {}, int64_t correction = 1, bool keepdim = false);
Tensor std(const Tensor& x, const Dims& dims = {}, int64_t correction = 1, bool keepdim = false);
/// p-norm over dims (p = 2 by default).
Tensor norm(const Tensor& x, double p = 2.0, const Dims& dims = {}, bool keepdim = false);
Tensor logsumexp(const Tensor& x, const Dims& dims, bool keepdim = false);
/// Max / min of all elements (gradient goes to the first extreme element).
Tensor max(const Tensor& x);
Tensor min(const Tensor& x);

struct ValuesIndices {
  Tensor values;
  Tensor indices;  // int64
};
/// Max / min along one dim, with the int64 indices of the extremes (first on ties).
ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim = false);
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim = false);
/// Sums `x` down to `shape` (the inverse of broadcasting); the engine's broadcast reduction.
Tensor sum_to(const Tensor& x, const Shape& shape);
/// Inner product of all elements (shapes must match).
Tensor dot(const Tensor& a, const Tensor& b);

}  // namespace kern
