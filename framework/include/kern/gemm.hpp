#pragma once
// A raw-pointer GEMM for code above the framework that multiplies buffers it owns without
// making tensors (tools/ntk_blas.cpp: many small products inside one OpenMP region).
// Shapes: a: [M, K], b: [K, N], c: [M, N] row-major with leading dimension ldc >= N.
#include <cstdint>

namespace kern {

/// A strided matrix over memory the caller owns: element (i, j) is
/// data[i * row_stride + j * col_stride]. Nothing is copied or owned.
template <typename T>
struct MatrixRef {
  const T* data;
  int64_t rows, cols, row_stride, col_stride;
};

/// c = a @ b + beta * c  (a: [M, K], b: [K, N], c: [M, N] row-major, leading dim ldc);
/// beta == 0 ignores c's old contents (NaN included). T: float or double.
/// float32 on the fast backend (kern::get_backend() == Backend::Fast) with operands that
/// have a unit stride in one dim (see gemm_fast_layout) runs oneDNN's sgemm; everything
/// else runs Eigen. Called inside an OpenMP parallel region, the product runs on the calling
/// thread (neither library starts threads there). Throws kern::Error on inconsistent shapes.
template <typename T>
void gemm(const MatrixRef<T>& a, const MatrixRef<T>& b, T* c, int64_t ldc, T beta);

/// True when the operand can go to sgemm without a copy: row-major (col_stride 1,
/// row_stride >= cols) or column-major (row_stride 1, col_stride >= rows).
template <typename T>
bool gemm_fast_layout(const MatrixRef<T>& m) {
  return (m.col_stride == 1 && m.row_stride >= (m.cols > 1 ? m.cols : 1)) ||
         (m.row_stride == 1 && m.col_stride >= (m.rows > 1 ? m.rows : 1));
}

}  // namespace kern
