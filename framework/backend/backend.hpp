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

// ---- real FFT (framework/backend/fft.cpp): radix-2 + Bluestein, rows in parallel
namespace kern::backend {

/// x: [rows, n] contiguous -> out: [rows, n/2 + 1, 2] (unnormalized, like torch.fft.rfft).
template <typename T>
void rfft_rows(const T* x, int64_t rows, int64_t n, T* out);
/// X: [rows, n/2 + 1, 2] contiguous -> out: [rows, n] (1/n scaling, like torch.fft.irfft;
/// imaginary parts of bin 0 and, for even n, bin n/2 are ignored).
template <typename T>
void irfft_rows(const T* X, int64_t rows, int64_t n, T* out);

}  // namespace kern::backend
