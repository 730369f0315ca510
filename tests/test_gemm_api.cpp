// kern::gemm (kern/gemm.hpp), the public GEMM entry point tools/ use: both backends, every
// operand layout, beta, leading dimensions, bad shapes. The oracle is a plain triple loop
// in long double.
#include <catch2/catch.hpp>
#include <kern/kern.hpp>

#include <cmath>
#include <random>
#include <vector>

using namespace kern;

namespace {

// A [rows, cols] matrix stored row-major (ld >= cols) or column-major (ld >= rows), filled
// with seeded values; ld leaves padding that gemm must not read as data.
template <typename T>
struct Stored {
  std::vector<T> buf;
  MatrixRef<T> ref;
};

template <typename T>
Stored<T> make(int64_t rows, int64_t cols, bool col_major, int64_t pad, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  Stored<T> s;
  const int64_t ld = (col_major ? rows : cols) + pad;
  s.buf.assign((col_major ? cols : rows) * ld, T(1e30));  // padding: huge, would show up
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) s.buf[col_major ? j * ld + i : i * ld + j] = T(u(rng));
  s.ref = col_major ? MatrixRef<T>{s.buf.data(), rows, cols, 1, ld} : MatrixRef<T>{s.buf.data(), rows, cols, ld, 1};
  return s;
}

template <typename T>
long double at(const MatrixRef<T>& m, int64_t i, int64_t j) {
  return m.data[i * m.row_stride + j * m.col_stride];
}

template <typename T>
void check_layouts(double tol) {
  std::mt19937 rng(7);
  const int64_t M = 13, K = 37, N = 9, ldc = N + 3;
  for (bool a_col : {false, true})
    for (bool b_col : {false, true})
      for (T beta : {T(0), T(1), T(-0.5)}) {
        auto a = make<T>(M, K, a_col, 2, rng), b = make<T>(K, N, b_col, 1, rng);
        std::vector<T> c(M * ldc), c0;
        for (auto& v : c) v = T(std::uniform_real_distribution<double>(-1, 1)(rng));
        if (beta == T(0)) std::fill(c.begin(), c.end(), std::nan(""));  // beta 0 ignores old C
        c0 = c;
        gemm<T>(a.ref, b.ref, c.data(), ldc, beta);
        for (int64_t i = 0; i < M; ++i) {
          for (int64_t j = 0; j < N; ++j) {
            long double want = beta == T(0) ? 0.0L : beta * (long double)c0[i * ldc + j];
            for (int64_t k = 0; k < K; ++k) want += at(a.ref, i, k) * at(b.ref, k, j);
            INFO("a_col " << a_col << " b_col " << b_col << " beta " << beta << " (" << i << ", " << j << ")");
            REQUIRE(std::abs((long double)c[i * ldc + j] - want) <= tol);
          }
          for (int64_t j = N; j < ldc; ++j)  // the padding of C is not written
            REQUIRE((std::isnan(c0[i * ldc + j]) ? std::isnan(c[i * ldc + j]) : c[i * ldc + j] == c0[i * ldc + j]));
        }
      }
}

}  // namespace

TEST_CASE("gemm: float32 on both backends and float64, every operand layout, beta, ldc", "[gemm][backend]") {
  SECTION("float32, fast backend (oneDNN sgemm)") { check_layouts<float>(1e-4); }
  SECTION("float32, reference backend (Eigen)") {
    BackendGuard g(Backend::Reference);
    check_layouts<float>(1e-4);
  }
  SECTION("float64") { check_layouts<double>(1e-12); }
}

TEST_CASE("gemm: a strided operand (no unit stride) takes the Eigen path and is right", "[gemm][backend]") {
  // A[i, k] = data[2 i + 3 k]... a view with strides (2, 40): neither row- nor column-major
  std::vector<float> data(400);
  for (size_t i = 0; i < data.size(); ++i) data[i] = float(i % 17) - 8.0f;
  const MatrixRef<float> a{data.data(), 4, 5, 2, 40};
  REQUIRE_FALSE(gemm_fast_layout(a));
  const std::vector<float> bdata = {1, 2, 3, 4, 5};
  const MatrixRef<float> b{bdata.data(), 5, 1, 1, 1};
  std::vector<float> c(4, 99.0f);
  gemm<float>(a, b, c.data(), 1, 0.0f);
  for (int64_t i = 0; i < 4; ++i) {
    float want = 0;
    for (int64_t k = 0; k < 5; ++k) want += data[2 * i + 40 * k] * bdata[k];
    REQUIRE(c[i] == Approx(want));
  }
}

TEST_CASE("gemm: inconsistent shapes throw kern::Error naming them", "[gemm][errors]") {
  std::vector<double> buf(64, 1.0);
  const MatrixRef<double> a{buf.data(), 2, 3, 3, 1}, b{buf.data(), 4, 2, 2, 1};
  REQUIRE_THROWS_WITH(gemm<double>(a, b, buf.data(), 2, 0.0), Catch::Contains("[2x3] @ [4x2]"));
  const MatrixRef<double> b3{buf.data(), 3, 4, 4, 1};
  REQUIRE_THROWS_WITH(gemm<double>(a, b3, buf.data(), 2, 0.0), Catch::Contains("leading dimension of 2"));
}
