// kern::gemm (kern/gemm.hpp): the public entry point to the backend's GEMMs for code above
// the framework (tools/), which must not include backend.hpp.
#include <kern/error.hpp>
#include <kern/gemm.hpp>

#include <type_traits>

#include "backend.hpp"

namespace kern {

template <typename T>
void gemm(const MatrixRef<T>& a, const MatrixRef<T>& b, T* c, int64_t ldc, T beta) {
  KERN_CHECK(a.cols == b.rows && a.rows >= 0 && b.cols >= 0 && a.cols >= 0 && ldc >= b.cols,
             "gemm: [", a.rows, "x", a.cols, "] @ [", b.rows, "x", b.cols, "] into a leading dimension of ", ldc);
  const backend::MatRef<T> ra{a.data, a.rows, a.cols, a.row_stride, a.col_stride};
  const backend::MatRef<T> rb{b.data, b.rows, b.cols, b.row_stride, b.col_stride};
  if constexpr (std::is_same_v<T, float>)
    if (backend::use_fast(DType::Float32) && gemm_fast_layout(a) && gemm_fast_layout(b))
      return backend::gemm_fast(ra, rb, c, ldc, beta);
  backend::gemm_reference<T>(ra, rb, c, ldc, beta);
}

template void gemm<float>(const MatrixRef<float>&, const MatrixRef<float>&, float*, int64_t, float);
template void gemm<double>(const MatrixRef<double>&, const MatrixRef<double>&, double*, int64_t, double);

}  // namespace kern
