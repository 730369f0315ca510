// Element-wise ops on permuted, broadcast and sliced views against index arithmetic written
// here: the strided loop (framework/ops/kernel_utils.hpp) merges dims, reorders short inner
// rows and walks rows with an odometer split across threads; every element must still land
// where the view's strides say.
#include <catch2/catch.hpp>
#include <kern/kern.hpp>

#include <algorithm>
#include <numeric>
#include <random>

using namespace kern;

namespace {

/// Element `flat` (row-major in `shape`) of a view with these strides and offset.
int64_t view_offset(const Shape& shape, const std::vector<int64_t>& strides, int64_t flat) {
  int64_t off = 0;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    off += (flat % shape[d]) * strides[d];
    flat /= shape[d];
  }
  return off;
}

/// A random permutation of `base` (a contiguous float64 tensor with values 0..n-1), so the
/// value read at an element is its storage offset.
struct PermutedView {
  Tensor view;
  std::vector<int64_t> perm;
};

PermutedView permuted(const Shape& storage_shape, std::mt19937& rng) {
  std::vector<int64_t> perm(storage_shape.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  Tensor base = arange(0.0, static_cast<double>(storage_shape.numel()), 1.0, DType::Float64).reshape(storage_shape);
  return {base.permute(perm), perm};
}

}  // namespace

TEST_CASE("strided element-wise loops visit every element of permuted and broadcast views", "[tensor][strided]") {
  std::mt19937 rng(7);
  const int saved = get_num_threads();
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    // Shapes with short inner rows (the [N, C, 2, 2] case), long ones, size-1 dims, and
    // sizes past the 2^15-element threshold where rows are split across threads.
    const std::vector<Shape> shapes = {{3, 5, 2, 2}, {64, 160, 2, 2}, {64, 40, 8, 8}, {7, 1, 3, 11},
                                       {2, 3, 4, 5, 6}, {33, 17, 65}, {1, 1, 5}, {4, 100, 3}};
    for (const Shape& storage : shapes) {
      for (int trial = 0; trial < 3; ++trial) {
        auto [v, perm] = permuted(storage, rng);
        const Shape& shape = v.shape();
        const int64_t n = shape.numel();
        // contiguous(): a copy through the loop.
        auto c = v.contiguous().to_vector<double>();
        // add with a contiguous operand, and mul with a per-dim-1 broadcast vector.
        Tensor dense = arange(0.0, static_cast<double>(n), 1.0, DType::Float64).reshape(shape);
        auto sum = (dense + v).to_vector<double>();
        const int64_t bd = static_cast<int64_t>(rng() % shape.size());
        Shape bshape(shape.size(), 1);
        bshape[bd] = shape[bd];
        Tensor scale = arange(1.0, static_cast<double>(shape[bd]) + 1.0, 1.0, DType::Float64).reshape(bshape);
        auto prod = (v * scale).to_vector<double>();
        for (int64_t i = 0; i < n; ++i) {
          const double stored = static_cast<double>(view_offset(shape, v.strides(), i));
          int64_t idx_bd = i;
          for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d > bd; --d) idx_bd /= shape[d];
          idx_bd %= shape[bd];
          REQUIRE(c[i] == stored);
          REQUIRE(sum[i] == static_cast<double>(i) + stored);
          REQUIRE(prod[i] == stored * static_cast<double>(idx_bd + 1));
        }
      }
    }
  }
  set_num_threads(saved);
}

TEST_CASE("copy_ into a permuted destination writes through its strides", "[tensor][strided]") {
  const int saved = get_num_threads();
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    Tensor dst_base = zeros({64, 4, 4, 80}, DType::Float64);       // NHWC storage
    Tensor dst = dst_base.permute({0, 3, 1, 2});                    // seen as NCHW
    Tensor src = arange(0.0, 64.0 * 80 * 16, 1.0, DType::Float64).reshape({64, 80, 4, 4});
    dst.copy_(src);
    auto d = dst_base.to_vector<double>();
    for (int64_t n = 0; n < 64; ++n)
      for (int64_t h = 0; h < 4; ++h)
        for (int64_t w = 0; w < 4; ++w)
          for (int64_t ch = 0; ch < 80; ++ch)
            REQUIRE(d[((n * 4 + h) * 4 + w) * 80 + ch] == static_cast<double>(((n * 80 + ch) * 4 + h) * 4 + w));
  }
  set_num_threads(saved);
}
