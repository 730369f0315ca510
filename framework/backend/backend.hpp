#pragma once
// Internal backend entry points. oneDNN and Eigen appear only in framework/backend/*.cpp.
#include <kern/backend.hpp>
#include <kern/tensor.hpp>

#include <cstdint>

namespace kern::backend {

/// True when the fast path should run for this dtype.
bool use_fast(DType dtype);

/// A matrix operand: element (i, j) at data[i * row_stride + j * col_stride].
template <typename T>
struct MatRef {
  const T* data;
  int64_t rows, cols, row_stride, col_stride;
};

/// C[M, N] (row-major, leading dim ldc) = A @ B (+ beta * C).
void gemm_fast(const MatRef<float>& a, const MatRef<float>& b, float* c, int64_t ldc, float beta);
template <typename T>
void gemm_reference(const MatRef<T>& a, const MatRef<T>& b, T* c, int64_t ldc, T beta);

}  // namespace kern::backend
