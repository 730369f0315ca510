// Storage dtypes (kern/dtype.hpp): bf16 / f16 conversion against independent references,
// Tensor::to between every dtype, and ops rejecting dtypes they do not compute in.
#include <catch2/catch.hpp>
#include <kern/kern.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

using namespace kern;

namespace {

uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }
float float_of(uint32_t b) { return std::bit_cast<float>(b); }
bool is_nan_bits32(uint32_t b) { return (b & 0x7FFFFFFFu) > 0x7F800000u; }

// ---- independent references

/// bf16 RNE, the classic formula (add 0x7FFF plus the lsb of the kept half, truncate).
uint16_t ref_bf16(uint32_t x) { return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16); }

/// f16 bits -> value, from the definition (ldexp in double).
double ref_f16_value(uint16_t h) {
  const int e = (h >> 10) & 0x1F, m = h & 0x3FF;
  const double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0x1F) return m ? std::numeric_limits<double>::quiet_NaN() : s * INFINITY;
  if (e == 0) return s * std::ldexp(m, -24);
  return s * std::ldexp(1024 + m, e - 25);
}

/// The non-negative finite f16 values in bit order (value order), then 65536 standing for Inf
/// (bits 0x7C00): rounding picks between two neighbours of this table.
const std::vector<double>& f16_table() {
  static const std::vector<double> t = [] {
    std::vector<double> v;
    for (uint32_t h = 0; h < 0x7C00; ++h) v.push_back(ref_f16_value(static_cast<uint16_t>(h)));
    v.push_back(65536.0);
    return v;
  }();
  return t;
}

/// f16 RNE by search: the neighbours lo <= |f| < hi in the table; compare 2|f| with lo + hi
/// (exact in double); a tie goes to the even bit pattern.
uint16_t ref_f16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65536.0) return sign | 0x7C00;  // Inf, or past the last tie
  const auto& t = f16_table();
  const size_t hi = static_cast<size_t>(std::upper_bound(t.begin(), t.end(), a) - t.begin());
  const size_t lo = hi - 1;
  if (t[lo] == a) return static_cast<uint16_t>(sign | lo);
  const double twice = 2.0 * a, mid = t[lo] + t[hi];
  size_t pick;
  if (twice < mid) pick = lo;
  else if (twice > mid) pick = hi;
  else pick = (lo % 2 == 0) ? lo : hi;
  return static_cast<uint16_t>(sign | pick);
}

/// Float32 inputs for the rounding checks: specials, structured patterns around every
/// rounding boundary of both formats (ties and their neighbours, each exponent), and random
/// bit patterns (uniform, and concentrated on f16's exponent range).
std::vector<uint32_t> rounding_inputs() {
  std::vector<uint32_t> v = {0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x7F7FFFFFu,
                             0xFF7FFFFFu, 0x00000001u, 0x80000001u, 0x007FFFFFu, 0x00800000u,
                             0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0x7FBFFFFFu, 0xFFFFFFFFu};
  for (float f : {65504.0f, 65519.996f, 65520.0f, 65536.0f, 0x1p-14f, 0x1p-24f, 0x1p-25f,
                  0x1.8p-25f, 0x1p-26f, 6.1e-5f, 1.0f / 3.0f})
    for (float g : {f, -f, std::nextafter(f, 0.0f), std::nextafter(f, INFINITY)}) v.push_back(bits_of(g));
  for (uint32_t sign : {0u, 0x80000000u})
    for (uint32_t e = 0; e < 256; ++e)
      for (uint32_t upper : {0u, 1u, 2u, 3u, 0x3Fu, 0x40u, 0x7Fu, 0x7Eu, 0x3FEu, 0x3FFu})
        for (uint32_t low13 : {0u, 1u, 0xFFFu, 0x1000u, 0x1001u, 0x1FFFu})
          for (uint32_t mid3 : {0u, 4u, 7u}) {  // bits 13..15: together with low13 the bf16 tie region
            const uint32_t m = ((upper << 16) | (mid3 << 13) | low13) & 0x7FFFFFu;
            v.push_back(sign | (e << 23) | m);
            v.push_back(sign | (e << 23) | (((upper << 13) | low13) & 0x7FFFFFu));  // f16's boundary
          }
  // f16 subnormal range: exact multiples of 2^-25 (ties when odd) and their neighbours.
  for (int k = 0; k < 4096; ++k) {
    const float f = std::ldexp(static_cast<float>(k), -25);
    for (float g : {f, std::nextafter(f, 0.0f), std::nextafter(f, INFINITY)}) v.push_back(bits_of(g));
  }
  std::mt19937 rng(20261204);
  for (int i = 0; i < 2'000'000; ++i) v.push_back(static_cast<uint32_t>(rng()));
  std::uniform_int_distribution<uint32_t> exp_range(95, 145);
  for (int i = 0; i < 2'000'000; ++i) {
    const uint32_t r = static_cast<uint32_t>(rng());
    v.push_back((r & 0x807FFFFFu) | (exp_range(rng) << 23));
  }
  return v;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no kern::Error thrown)";
}

}  // namespace

TEST_CASE("every bf16 bit pattern round-trips through float32", "[dtype]") {
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    const float f = bf16_bits_to_float(h);
    REQUIRE(bits_of(f) == b << 16);  // bf16 is float32's upper half: exact
    const uint16_t back = float_to_bf16_bits(f);
    if (is_nan_bits32(b << 16)) {
      INFO(b);
      REQUIRE(std::isnan(bf16_bits_to_float(back)));
      REQUIRE((back & 0x8000) == (h & 0x8000));              // sign kept
      if (h & 0x0040) REQUIRE(back == h);                     // quiet NaNs keep their payload
    } else {
      REQUIRE(back == h);
    }
    REQUIRE(bf16(f).bits == float_to_bf16_bits(f));
    REQUIRE(bits_of(static_cast<float>(bf16::from_bits(h))) == bits_of(f));
  }
}

TEST_CASE("every f16 bit pattern round-trips through float32", "[dtype]") {
  int subnormals = 0;
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    const float f = f16_bits_to_float(h);
    const double want = ref_f16_value(h);
    INFO(b);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(f));
      const uint16_t back = float_to_f16_bits(f);
      REQUIRE(std::isnan(ref_f16_value(back)));
      REQUIRE((back & 0x8000) == (h & 0x8000));
      if (h & 0x0200) REQUIRE(back == h);  // quiet NaNs keep their payload
      continue;
    }
    REQUIRE(static_cast<double>(f) == want);
    REQUIRE(std::signbit(f) == static_cast<bool>(h & 0x8000));  // -0 stays -0
    if ((h & 0x7C00) == 0 && (h & 0x3FF) != 0) ++subnormals;
    REQUIRE(float_to_f16_bits(f) == h);
  }
  REQUIRE(subnormals == 2 * 1023);
}

TEST_CASE("float32 -> bf16 and f16 round to nearest even as independent formulas do", "[dtype]") {
  const std::vector<uint32_t> inputs = rounding_inputs();
  REQUIRE(inputs.size() > 4'000'000);
  size_t checked = 0, bf16_ties = 0, f16_ties = 0;
  for (const uint32_t x : inputs) {
    const float f = float_of(x);
    const uint16_t b = float_to_bf16_bits(f);
    const uint16_t h = float_to_f16_bits(f);
    if (is_nan_bits32(x)) {  // NaN stays NaN (quiet), sign kept
      REQUIRE(std::isnan(bf16_bits_to_float(b)));
      REQUIRE(std::isnan(f16_bits_to_float(h)));
      REQUIRE((b >> 15) == (x >> 31));
      REQUIRE((h >> 15) == (x >> 31));
      continue;
    }
    if (b != ref_bf16(x)) FAIL("bf16 of " << std::hex << x << ": " << b << " vs " << ref_bf16(x));
    if (h != ref_f16(f)) FAIL("f16 of " << std::hex << x << " (" << f << "): " << h << " vs " << ref_f16(f));
    bf16_ties += (x & 0xFFFFu) == 0x8000u;
    const double a = std::fabs(static_cast<double>(f));
    f16_ties += a < 65536.0 && a > 0 && std::ldexp(a, 25) == std::floor(std::ldexp(a, 25)) &&
                float_to_f16_bits(std::nextafter(f, 0.0f)) != float_to_f16_bits(std::nextafter(f, INFINITY) );
    ++checked;
  }
  REQUIRE(checked > 3'900'000);
  REQUIRE(bf16_ties > 1000);  // the structured inputs did reach the ties
  REQUIRE(f16_ties > 1000);
  // Overflow: the largest finite values and the first that round up to Inf.
  REQUIRE(float_to_f16_bits(65519.996f) == 0x7BFF);
  REQUIRE(float_to_f16_bits(65520.0f) == 0x7C00);
  REQUIRE(float_to_bf16_bits(std::numeric_limits<float>::max()) == 0x7F80);
  REQUIRE(float_to_f16_bits(-INFINITY) == 0xFC00);
}

TEST_CASE("Tensor::to converts between every dtype", "[dtype]") {
  const std::vector<double> vals = {0.0, -1.5, 2.5, 3.0, 100.0, -0.0};
  const Tensor x = from_vector<double>(vals, {2, 3});
  // Floating round trips through each float dtype, exact for these values.
  for (DType d : {DType::BFloat16, DType::Float16, DType::Float32}) {
    const Tensor y = x.to(d);
    REQUIRE(y.dtype() == d);
    REQUIRE(y.to(DType::Float64).to_vector<double>() == vals);
    REQUIRE(y.to_vector<double>() == vals);
  }
  // Rounding: 1 + 2^-8 is a bf16 tie (to even: 1), 1 + 3 * 2^-8 rounds up; f16 keeps both.
  const Tensor r = from_vector<double>({1.0 + 0x1p-8, 1.0 + 3 * 0x1p-8, 1e6}, {3});
  REQUIRE(r.to(DType::BFloat16).to_vector<double>() == std::vector<double>{1.0, 1.0 + 0x1p-6, 999424.0});
  REQUIRE(r.to(DType::Float16).to_vector<double>() ==
          std::vector<double>{1.0 + 0x1p-8, 1.0 + 3 * 0x1p-8, INFINITY});
  // Integers: truncation toward zero, range checked, bool is != 0.
  const Tensor ints = tensor({1.9, -2.9, 127.0, -128.0}, DType::Float64);
  for (DType d : {DType::Int8, DType::Int16, DType::Int32, DType::Int64})
    REQUIRE(ints.to(d).to_vector<double>() == std::vector<double>{1, -2, 127, -128});
  REQUIRE(ints.to(DType::Int32).to_vector<int32_t>() == std::vector<int32_t>{1, -2, 127, -128});
  REQUIRE_THAT(error_of([&] { tensor({1.0, 128.0}).to(DType::Int8); }),
               Catch::Contains("to: cannot convert 128") && Catch::Contains("element 1") &&
                   Catch::Contains("int8"));
  REQUIRE_THAT(error_of([&] { tensor({-1.0}).to(DType::UInt8); }), Catch::Contains("uint8"));
  REQUIRE_THAT(error_of([&] { tensor({NAN}).to(DType::Int32); }), Catch::Contains("cannot convert nan"));
  REQUIRE_THAT(error_of([&] { tensor({INFINITY}).to(DType::BFloat16).to(DType::Int16); }),
               Catch::Contains("cannot convert inf"));
  REQUIRE_THAT(error_of([&] { tensor({300.0}, DType::Int64).to(DType::UInt8); }),
               Catch::Contains("cannot convert 300"));
  REQUIRE(tensor({255.0}, DType::Int64).to(DType::UInt8).to_vector<int64_t>() == std::vector<int64_t>{255});
  REQUIRE(tensor({0.0, -0.0, 0.5, NAN, -3.0}).to(DType::Bool).to_vector<int64_t>() ==
          std::vector<int64_t>{0, 0, 1, 1, 1});
  REQUIRE(tensor({0.0, 2.0}).to(DType::Bool).to(DType::BFloat16).to_vector<double>() ==
          std::vector<double>{0.0, 1.0});
  // Every pair of dtypes converts (small whole numbers: exact everywhere).
  const Tensor small = tensor({0.0, 1.0, 3.0});
  for (int a = 0; a < kNumDTypes; ++a)
    for (int b = 0; b < kNumDTypes; ++b) {
      const DType da = static_cast<DType>(a), db = static_cast<DType>(b);
      if (da == DType::Float8E4M3 || da == DType::Float8E5M2) continue;  // not produced
      INFO(dtype_name(da) << " -> " << dtype_name(db));
      const Tensor s = small.to(da);
      if (db == DType::Float8E4M3 || db == DType::Float8E5M2) {
        REQUIRE_THAT(error_of([&] { s.to(db); }), Catch::Contains("to: converting") &&
                                                      Catch::Contains(std::string(dtype_name(db))));
        continue;
      }
      const std::vector<double> want = (da == DType::Bool || db == DType::Bool) ? std::vector<double>{0, 1, 1}
                                                         : std::vector<double>{0, 1, 3};
      REQUIRE(s.to(db).to_vector<double>() == want);
      Tensor dst = zeros({3}, db);
      dst.copy_(s);
      REQUIRE(dst.to_vector<double>() == want);
    }
  // float8 decodes (values by the OCP definition: e4m3fn bias 7 with 448 its max; e5m2 bias 15).
  Tensor e4 = empty({4}, DType::Float8E4M3), e5 = empty({3}, DType::Float8E5M2);
  const uint8_t b4[] = {0x7E, 0x01, 0xB8, 0x7F}, b5[] = {0x7C, 0x3C, 0x01};
  std::memcpy(e4.raw_data(), b4, 4);
  std::memcpy(e5.raw_data(), b5, 3);
  const auto v4 = e4.to(DType::Float64).to_vector<double>();
  REQUIRE(v4[0] == 448.0);
  REQUIRE(v4[1] == std::ldexp(1.0, -9));
  REQUIRE(v4[2] == -1.0);
  REQUIRE(std::isnan(v4[3]));
  REQUIRE(e5.to(DType::Float32).to_vector<double>() == std::vector<double>{INFINITY, 1.0, std::ldexp(1.0, -16)});
}

TEST_CASE("storage dtypes: factories, views, copies, indexing and printing", "[dtype]") {
  const Tensor b = arange(0.0, 12.0, 1.0, DType::BFloat16).reshape({3, 4});
  REQUIRE(b.dtype() == DType::BFloat16);
  REQUIRE(b.t().contiguous().to_vector<double>() ==
          std::vector<double>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
  REQUIRE(b.select(0, 1).narrow(0, 1, 2).to_vector<double>() == std::vector<double>{5, 6});
  REQUIRE(index_select(b, 1, tensor({3.0, 0.0}, DType::Int64)).to_vector<double>() ==
          std::vector<double>{3, 0, 7, 4, 11, 8});
  REQUIRE(flip(b, {0}).to_vector<double>()[0] == 8.0);
  // Indices of other integer dtypes select as int64 ones do (values by hand: columns 3, 0).
  for (DType d : {DType::Int32, DType::Int16, DType::Int8, DType::UInt8}) {
    INFO(dtype_name(d));
    const Tensor idx = tensor({3.0, 0.0}).to(d);
    REQUIRE(index_select(b, 1, idx).to_vector<double>() == std::vector<double>{3, 0, 7, 4, 11, 8});
    const Tensor f = arange(0.0, 12.0, 1.0, DType::Float32).reshape({3, 4});
    REQUIRE(gather(f, 1, tensor({1.0, 2.0, 3.0}).to(d).reshape({3, 1})).to_vector<double>() ==
            std::vector<double>{1, 6, 11});
    REQUIRE(scatter_add(zeros({1, 4}), 1, idx.reshape({1, 2}), ones({1, 2})).to_vector<double>() ==
            std::vector<double>{1, 0, 0, 1});
  }
  REQUIRE_THROWS_WITH(index_select(b, 1, tensor({4.0}).to(DType::Int32)), Catch::Contains("out of range"));
  REQUIRE(cat({b, b}, 0).shape() == Shape{6, 4});
  REQUIRE(full({2}, 0.1, DType::Float16).to_vector<double>()[0] == static_cast<double>(f16(0.1f)));
  REQUIRE(ones({2}, DType::Bool).to_vector<int64_t>() == std::vector<int64_t>{1, 1});
  REQUIRE(zeros({2}, DType::UInt8).to_vector<int64_t>() == std::vector<int64_t>{0, 0});
  REQUIRE_THROWS_AS(full({1}, 300.0, DType::Int8), Error);
  REQUIRE(eye(2, DType::Int32).to_vector<int32_t>() == std::vector<int32_t>{1, 0, 0, 1});
  REQUIRE(scalar_tensor(2.5, DType::BFloat16).item<double>() == 2.5);
  REQUIRE_THAT(fmt::format("{}", b.narrow(0, 0, 1)), Catch::Contains("dtype=bfloat16"));
  // where() takes a bool mask.
  const Tensor m = tensor({1.0, 0.0, 2.0}).to(DType::Bool);
  REQUIRE(where(m, tensor({1.0, 2.0, 3.0}), tensor({-1.0, -2.0, -3.0})).to_vector<double>() ==
          std::vector<double>{1, -2, 3});
  // Differentiable between float dtypes: the gradient comes back in the source dtype.
  Tensor x = tensor({1.0, 2.0}).requires_grad_();
  Tensor y = x.to(DType::BFloat16).to(DType::Float32);
  (y * tensor({3.0, 4.0})).sum().backward();
  REQUIRE(x.grad().dtype() == DType::Float32);
  REQUIRE(x.grad().to_vector<double>() == std::vector<double>{3, 4});
}

TEST_CASE("ops reject dtypes they do not compute in, naming the op and the dtype", "[dtype]") {
  for (DType d : {DType::BFloat16, DType::Float16, DType::Int32, DType::UInt8, DType::Bool}) {
    const Tensor x = ones({2, 3}, d), sq = ones({3, 3}, d);
    const Tensor img = ones({1, 2, 4, 4}, d), w = ones({2, 2, 3, 3}, d);
    const std::vector<std::pair<std::string, std::function<void()>>> ops = {
        {"add", [&] { add(x, x); }},
        {"mul", [&] { mul(x, x); }},
        {"sub", [&] { sub(x, x); }},
        {"div", [&] { div(x, x); }},
        {"exp", [&] { exp(x); }},
        {"log", [&] { log(x); }},
        {"abs", [&] { abs(x); }},
        {"neg", [&] { neg(x); }},
        {"pow", [&] { pow(x, 2.0); }},
        {"relu", [&] { relu(x); }},
        {"sigmoid", [&] { sigmoid(x); }},
        {"tanh", [&] { tanh(x); }},
        {"gelu", [&] { gelu(x); }},
        {"clamp", [&] { clamp(x, 0.0, 1.0); }},
        {"maximum", [&] { maximum(x, x); }},
        {"matmul", [&] { matmul(x, sq); }},
        {"mm", [&] { mm(x, sq); }},
        {"linear", [&] { linear(x, sq); }},
        {"sum", [&] { sum(x); }},
        {"mean", [&] { mean(x); }},
        {"var", [&] { var(x, {1}); }},
        {"max", [&] { max(x); }},
        {"argmax", [&] { argmax(x, 1); }},
        {"logsumexp", [&] { logsumexp(x, {1}); }},
        {"softmax", [&] { softmax(x, 1); }},
        {"log_softmax", [&] { log_softmax(x, 1); }},
        {"layer_norm", [&] { layer_norm(x, {3}); }},
        {"conv2d", [&] { conv2d(img, w); }},
        {"max_pool2d", [&] { max_pool2d(img, Pool2dParams{{2, 2}, {2, 2}}); }},
        {"avg_pool2d", [&] { avg_pool2d(img, Pool2dParams{{2, 2}, {2, 2}}); }},
        {"adaptive_avg_pool2d", [&] { adaptive_avg_pool2d(img, {1, 1}); }},
        {"mse_loss", [&] { mse_loss(x, x); }},
        {"cross_entropy", [&] { cross_entropy(x, tensor({0.0, 1.0}, DType::Int64)); }},
        {"rfft", [&] { rfft(x); }},
        {"index_add", [&] { index_add(x, 1, tensor({0.0}, DType::Int64), ones({2, 1}, d)); }},
    };
    for (const auto& [name, run] : ops) {
      INFO(name << " on " << dtype_name(d));
      // bf16 products compute (autocast: bf16 operands, float32 result; tests/test_autocast.cpp).
      const bool bf16_product = name == "matmul" || name == "mm" || name == "linear" || name == "conv2d";
      if (d == DType::BFloat16 && bf16_product) {
        REQUIRE(error_of(run) == "(no kern::Error thrown)");
        continue;
      }
      const std::string msg = error_of(run);
      REQUIRE_THAT(msg, Catch::Contains(name) && Catch::Contains(std::string(dtype_name(d))));
    }
  }
}
