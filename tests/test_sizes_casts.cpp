// Size arithmetic is overflow-checked (Shape::numel, contiguous strides, factories, views),
// tensors without elements are contiguous and are never walked row by row, and float -> int
// conversions are checked (NaN, Inf and out-of-range values throw instead of being UB).
#include <kern/kern.hpp>

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <limits>

using namespace kern;

namespace {
constexpr int64_t k2p62 = int64_t{1} << 62;
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

template <typename F>
std::chrono::duration<double> time_of(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::steady_clock::now() - t0;
}
}  // namespace

TEST_CASE("Shape::numel is overflow-checked; a 0 size gives 0 elements", "[sizes]") {
  REQUIRE(Shape{}.numel() == 1);
  REQUIRE(Shape{3, 4}.numel() == 12);
  REQUIRE(Shape{k2p62, 0}.numel() == 0);
  REQUIRE(Shape{k2p62, k2p62, 0}.numel() == 0);  // the product would overflow before the 0
  REQUIRE(Shape{k2p62, 1}.numel() == k2p62);
  REQUIRE_FALSE(Shape{k2p62, 2}.checked_numel().has_value());
  REQUIRE_FALSE(Shape{int64_t{1} << 31, int64_t{1} << 31, 4}.checked_numel().has_value());
  REQUIRE_THROWS_WITH(Shape({k2p62, 8}).numel(),
                      Catch::Contains("[4611686018427387904, 8]") && Catch::Contains("int64"));
  REQUIRE(contiguous_strides({k2p62, 0}) == std::vector<int64_t>{1, 1});
  REQUIRE(contiguous_strides({2, 3, 4}) == std::vector<int64_t>{12, 4, 1});
  REQUIRE_THROWS_AS(contiguous_strides({2, k2p62, 4, 0}), Error);  // dim 0's stride: 2^64
}

TEST_CASE("factories and views reject sizes that overflow int64", "[sizes][errors]") {
  // Before: a 0-byte tensor of shape [2^62, 8], then SIGSEGV on first use.
  REQUIRE_THROWS_WITH(ones({k2p62, 8}), Catch::Contains("[4611686018427387904, 8]"));
  REQUIRE_THROWS_AS(zeros({int64_t{1} << 31, int64_t{1} << 31, 4}), Error);
  REQUIRE_THROWS_AS(empty({k2p62}, DType::Float64), Error);  // elements fit, bytes do not
  REQUIRE_THROWS_AS(rand({k2p62, 2}), Error);
  REQUIRE_THROWS_AS(full({k2p62, 4}, 1.0), Error);
  // Views: expand and broadcast produce shapes that must be countable too.
  Tensor x = ones({1, 1});
  REQUIRE_THROWS_AS(x.expand({k2p62, 8}), Error);
  REQUIRE_THROWS_AS(broadcast_shapes({k2p62, 1}, {1, 8}, "add"), Error);
  REQUIRE_THROWS_AS(x.reshape({k2p62, 8, -1}), Error);  // the known sizes overflow
  REQUIRE(zeros({0}).reshape({k2p62, 8, 0}).numel() == 0);  // ... unless one of them is 0
}

TEST_CASE("zero-element tensors are contiguous and never walk their outer dims", "[sizes]") {
  Tensor z = zeros({k2p62, 0});
  REQUIRE(z.numel() == 0);
  REQUIRE(z.is_contiguous());
  const auto elapsed = time_of([&] {
    Tensor t = z.t();  // strides [1, 1] swapped: still no elements, so contiguous
    REQUIRE(t.is_contiguous());
    REQUIRE(t.contiguous().numel() == 0);
    REQUIRE(t.clone().shape() == Shape{0, k2p62});
    Tensor e = empty({0, k2p62});
    e.copy_(t);
    e.fill_(1.0);
    REQUIRE((t + 1.0).numel() == 0);
    REQUIRE(t.to(DType::Float64).numel() == 0);
    REQUIRE(t.sum().item() == 0.0);
    REQUIRE(z.select(0, 12345).numel() == 0);
    REQUIRE(z.narrow(0, 5, 1000).contiguous().numel() == 0);
    // Offsets of views into huge empty tensors are not computed (they overflowed: fuzz_idx).
    Tensor e3 = zeros({2147538646, 0, 4294967295});
    REQUIRE(e3.select(0, 2147538645).shape() == Shape{0, 4294967295});
    REQUIRE(flip(e3, {0, 2}).shape() == e3.shape());
    REQUIRE(rot90(e3, 1, {0, 2}).shape() == Shape{4294967295, 0, 2147538646});
    // Reductions and [outer, n, inner] loops over such shapes neither overflow nor walk
    // 2^62 empty rows (sum's reduced count overflowed: fuzz_idx).
    Tensor e4 = zeros({2147483903, 4294967168, 0});
    REQUIRE(e4.sum().item() == 0.0);
    REQUIRE(e4.sum({0, 1}).shape() == Shape{0});
    REQUIRE(softmax(z, 1).numel() == 0);
    REQUIRE(softmax(z, 0).numel() == 0);
    REQUIRE(index_select(z, 0, arange(3)).shape() == Shape{3, 0});
    REQUIRE(flatten(e3, 1, 2).shape() == Shape{2147538646, 0});
  });
  // Results that cannot exist are errors, not wrapped sizes.
  REQUIRE_THROWS_AS(sum(zeros({2147483903, 4294967168, 0}), {2}), Error);  // [2^31, 2^32] floats
  REQUIRE_THROWS_AS(flatten(zeros({k2p62, 4, 0}), 0, 1), Error);           // merged size 2^64
  REQUIRE_THROWS_AS(mean(zeros({k2p62, 4, 0}), {0, 1}), Error);             // 2^64 per mean
  REQUIRE(elapsed < std::chrono::seconds(1));
}

TEST_CASE("arange checks its bounds before converting them", "[casts][errors]") {
  REQUIRE(arange(0.0, 1.0, 0.25).numel() == 4);
  REQUIRE(arange(3.0, 0.0, 1.0).numel() == 0);
  REQUIRE_THROWS_WITH(arange(0.0, 10.0, kNaN), Catch::Contains("finite"));
  REQUIRE_THROWS_WITH(arange(kNaN, 10.0, 1.0), Catch::Contains("finite"));
  REQUIRE_THROWS_WITH(arange(0.0, kInf, 1.0), Catch::Contains("finite"));
  REQUIRE_THROWS_WITH(arange(0.0, 1.0, kInf), Catch::Contains("finite"));
  REQUIRE_THROWS_WITH(arange(0.0, 1e300, 1e-300), Catch::Contains("too many"));
  REQUIRE_THROWS_WITH(arange(-1e308, 1e308, 1.0), Catch::Contains("too many"));  // Inf length
  REQUIRE_THROWS_AS(arange(0.0, 1.0, 0.0), Error);
  // int64 values must fit int64: [1e300, 2e300) in 10 steps has no int64 representation.
  REQUIRE_THROWS_WITH(arange(1e300, 2e300, 1e299, DType::Int64), Catch::Contains("int64"));
  REQUIRE(arange(0.0, 3.0, 1.0, DType::Int64).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2});
}

TEST_CASE("conversions to int64 reject NaN, Inf and out-of-range values", "[casts][errors]") {
  // Decision (documented in tensor.hpp): a kern::Error naming the first bad element, not
  // PyTorch's unspecified value (INT64_MIN on x86); in-range values truncate toward zero.
  Tensor x = tensor({1.9, -2.9, 0.0});
  REQUIRE(x.to(DType::Int64).to_vector<int64_t>() == std::vector<int64_t>{1, -2, 0});
  for (double bad : {kNaN, kInf, -kInf, 1e300, 0x1p63}) {
    INFO(bad);
    Tensor t = tensor({1.0, bad, 3.0}, DType::Float64);
    REQUIRE_THROWS_WITH(t.to(DType::Int64), Catch::Contains("to: cannot convert") &&
                                                Catch::Contains("element 1"));
    REQUIRE_THROWS_WITH(t.to(DType::Float32).to(DType::Int64), Catch::Contains("cannot convert"));
    Tensor dst = zeros({3}, DType::Int64);
    REQUIRE_THROWS_WITH(dst.copy_(t), Catch::Contains("copy_: cannot convert"));
    REQUIRE(dst.to_vector<int64_t>() == std::vector<int64_t>{0, 0, 0});  // nothing written
    REQUIRE_THROWS_AS(dst.fill_(bad), Error);
    REQUIRE_THROWS_AS(full({2}, bad, DType::Int64), Error);
    REQUIRE_THROWS_AS(scalar_tensor(bad, DType::Float64).item<int64_t>(), Error);
  }
  // The edges of the int64 range.
  REQUIRE(tensor({-0x1p63}, DType::Float64).to(DType::Int64).item<int64_t>() ==
          std::numeric_limits<int64_t>::min());
  REQUIRE(scalar_tensor(0x1p62, DType::Float64).item<int64_t>() == (int64_t{1} << 62));
  // An int64 tensor's item<int64_t> is exact, above 2^53 too.
  Tensor big = from_vector<int64_t>({std::numeric_limits<int64_t>::max()}, Shape{});
  REQUIRE(big.item<int64_t>() == std::numeric_limits<int64_t>::max());
  REQUIRE_THROWS_AS(big.item<int32_t>(), Error);
}
