// GEMM: oneDNN's sgemm (float32 fast path) and Eigen (reference, any float dtype).
#include <dnnl.h>

#include <Eigen/Core>
#include <atomic>

#include "backend.hpp"

namespace kern {

namespace {
std::atomic<Backend> g_backend{Backend::Fast};
}

void set_backend(Backend b) { g_backend = b; }
Backend get_backend() { return g_backend; }

namespace backend {

bool use_fast(DType dtype) { return dtype == DType::Float32 && g_backend == Backend::Fast; }

namespace {
// sgemm wants each operand row-major (trans 'N') or column-major (trans 'T') with a
// leading dimension; other layouts are copied by the caller first.
bool blas_layout(const MatRef<float>& m, char& trans, int64_t& ld) {
  if (m.col_stride == 1 && m.row_stride >= std::max<int64_t>(1, m.cols)) {
    trans = 'N';
    ld = m.row_stride;
    return true;
  }
  if (m.row_stride == 1 && m.col_stride >= std::max<int64_t>(1, m.rows)) {
    trans = 'T';
    ld = m.col_stride;
    return true;
  }
  return false;
}
}  // namespace

void gemm_fast(const MatRef<float>& a, const MatRef<float>& b, float* c, int64_t ldc, float beta) {
  count_path(Primitive::Gemm, Path::Fast);
  char ta, tb;
  int64_t lda, ldb;
  KERN_CHECK(blas_layout(a, ta, lda) && blas_layout(b, tb, ldb), "gemm: operands need a unit stride");
  const dnnl_status_t st = dnnl_sgemm(ta, tb, a.rows, b.cols, a.cols, 1.0f, a.data, lda, b.data, ldb,
                                      beta, c, ldc);
  KERN_CHECK(st == dnnl_success, "gemm: oneDNN sgemm failed with status ", static_cast<int>(st), " for [",
             a.rows, "x", a.cols, "] @ [", b.rows, "x", b.cols, "]");
}

template <typename T>
void gemm_reference(const MatRef<T>& a, const MatRef<T>& b, T* c, int64_t ldc, T beta) {
  count_path(Primitive::Gemm, Path::Reference);
  using Strided = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0,
                             Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;
  using Out = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0,
                         Eigen::OuterStride<Eigen::Dynamic>>;
  Strided A(a.data, a.rows, a.cols, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(a.row_stride, a.col_stride));
  Strided B(b.data, b.rows, b.cols, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(b.row_stride, b.col_stride));
  Out C(c, a.rows, b.cols, Eigen::OuterStride<Eigen::Dynamic>(ldc));
  if (beta == T(0)) C.noalias() = A * B;
  else C = beta * C + A * B;
}

template void gemm_reference<float>(const MatRef<float>&, const MatRef<float>&, float*, int64_t, float);
template void gemm_reference<double>(const MatRef<double>&, const MatRef<double>&, double*, int64_t, double);

}  // namespace backend
}  // namespace kern
