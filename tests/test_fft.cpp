// Real FFTs and complex_mul: values against an O(n^2) DFT written from the definition,
// round trips, the convolution theorem, adjoints by finite differences (first and second
// order), errors.
#include <cmath>

#include "gradcheck.hpp"

using namespace kern;
using kern::testing::Fn;

namespace {

Tensor rnd(const Shape& s, uint64_t seed, DType dt = DType::Float64) {
  Generator g(seed);
  return randn(s, dt, &g);
}

// X_k = sum_t x_t e^{-2 pi i k t/n}, k = 0..n/2, for each row of x: [rows, n] -> [rows, n/2+1, 2].
Tensor naive_rfft(const Tensor& x) {
  const int64_t n = x.shape().back(), rows = x.numel() / n, nb = n / 2 + 1;
  auto v = x.contiguous().to_vector<double>();
  std::vector<double> out(rows * nb * 2);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < nb; ++k) {
      long double re = 0, im = 0;
      for (int64_t t = 0; t < n; ++t) {
        const long double a = -2.0L * M_PIl * static_cast<long double>((k * t) % n) / n;
        re += v[r * n + t] * std::cos(a);
        im += v[r * n + t] * std::sin(a);
      }
      out[(r * nb + k) * 2] = static_cast<double>(re);
      out[(r * nb + k) * 2 + 1] = static_cast<double>(im);
    }
  return from_vector<double>(out, {rows, nb, 2});
}

double max_abs(const Tensor& t) { return max(abs(t)).item(); }

}  // namespace

TEST_CASE("rfft matches the DFT definition for power-of-two and other lengths", "[fft]") {
  for (int64_t n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 31, 32, 60, 64, 97, 100, 128}) {
    Tensor x = rnd({3, n}, 100 + n);
    Tensor X = rfft(x);
    INFO("n = " << n);
    REQUIRE(X.shape() == Shape{3, n / 2 + 1, 2});
    REQUIRE(max_abs_diff(X, naive_rfft(x)) < 1e-12 * n);
    // Round trip.
    REQUIRE(max_abs_diff(irfft(X, n), x) < 1e-13 * n);
    // The end bins are exactly real.
    REQUIRE(max_abs(X.select(-1, 1).select(-1, 0)) == 0.0);
    if (n % 2 == 0) REQUIRE(max_abs(X.select(-1, 1).select(-1, n / 2)) == 0.0);
  }
}

TEST_CASE("rfft and irfft of known signals", "[fft]") {
  for (int64_t n : {8, 9}) {
    // A delta at 0 has a flat spectrum of ones; a constant concentrates in bin 0.
    Tensor delta = zeros({n}, DType::Float64);
    delta.narrow(0, 0, 1).fill_(1.0);
    Tensor ones_spec = zeros({n / 2 + 1, 2}, DType::Float64);
    ones_spec.select(1, 0).fill_(1.0);
    REQUIRE(max_abs_diff(rfft(delta), ones_spec) < 1e-15);
    REQUIRE(max_abs_diff(irfft(ones_spec, n), delta) < 1e-15);
    Tensor c = full({n}, 2.0, DType::Float64);
    Tensor cs = zeros({n / 2 + 1, 2}, DType::Float64);
    cs.narrow(0, 0, 1).select(1, 0).fill_(2.0 * n);
    REQUIRE(max_abs_diff(rfft(c), cs) < 1e-13);
    // Y_1 = n/2 is the cosine cos(2 pi t/n); Y_1 = -i n/2 is the sine.
    Tensor Y = zeros({n / 2 + 1, 2}, DType::Float64);
    Y.narrow(0, 1, 1).select(1, 0).fill_(n / 2.0);
    Tensor Ys = zeros({n / 2 + 1, 2}, DType::Float64);
    Ys.narrow(0, 1, 1).select(1, 1).fill_(-n / 2.0);
    std::vector<double> cosv, sinv;
    for (int64_t t = 0; t < n; ++t) {
      cosv.push_back(std::cos(2 * M_PI * t / n));
      sinv.push_back(std::sin(2 * M_PI * t / n));
    }
    REQUIRE(max_abs_diff(irfft(Y, n), from_vector<double>(cosv, {n})) < 1e-15);
    REQUIRE(max_abs_diff(irfft(Ys, n), from_vector<double>(sinv, {n})) < 1e-15);
  }
  // irfft ignores the imaginary parts of bin 0 and (even n) bin n/2.
  Tensor X = rnd({5, 2}, 1);
  Tensor Xr = X.clone();
  Xr.narrow(0, 0, 1).select(1, 1).fill_(0.0);
  Xr.narrow(0, 4, 1).select(1, 1).fill_(0.0);
  REQUIRE(max_abs_diff(irfft(X, 8), irfft(Xr, 8)) < 1e-15);
}

TEST_CASE("rfft pads / truncates to n and irfft pads / truncates the bins", "[fft]") {
  Tensor x = rnd({2, 5}, 2);
  REQUIRE(max_abs_diff(rfft(x, 8), rfft(pad(x, {0, 3}))) == 0.0);
  REQUIRE(max_abs_diff(rfft(x, 3), rfft(x.narrow(1, 0, 3))) == 0.0);
  REQUIRE(rfft(x, 8).shape() == Shape{2, 5, 2});
  Tensor X = rnd({2, 4, 2}, 3);
  REQUIRE(max_abs_diff(irfft(X, 10), irfft(pad(X, {0, 0, 0, 2}), 10)) == 0.0);
  REQUIRE(max_abs_diff(irfft(X, 4), irfft(X.narrow(1, 0, 3), 4)) == 0.0);
  REQUIRE(irfft(X, 7).shape() == Shape{2, 7});
}

TEST_CASE("convolution theorem with complex_mul", "[fft]") {
  REQUIRE(max_abs_diff(complex_mul(tensor({1.0, 2.0}, DType::Float64), tensor({3.0, 4.0}, DType::Float64)),
                       tensor({-5.0, 10.0}, DType::Float64)) == 0.0);
  for (int64_t n : {16, 12, 7}) {
    Tensor a = rnd({3, n}, 4), b = rnd({n}, 5);
    // Circular convolution by FFT (b's spectrum broadcasts over a's rows).
    Tensor y = irfft(complex_mul(rfft(a), rfft(b)), n);
    auto av = a.to_vector<double>(), bv = b.to_vector<double>();
    std::vector<double> want(3 * n, 0.0);
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t t = 0; t < n; ++t)
        for (int64_t s = 0; s < n; ++s) want[r * n + t] += av[r * n + s] * bv[(t - s + n) % n];
    REQUIRE(max_abs_diff(y, from_vector<double>(want, {3, n})) < 1e-12);
  }
}

TEST_CASE("float32 FFTs are accurate and many rows run in parallel", "[fft]") {
  for (int64_t n : {1024, 1000, 257}) {
    Tensor x = rnd({64, n}, 6);
    Tensor X64 = rfft(x);
    Tensor X32 = rfft(x.to(DType::Float32)).to(DType::Float64);
    INFO("n = " << n);
    REQUIRE(max_abs_diff(X32, X64) < 1e-5 * max_abs(X64));
    Tensor y32 = irfft(X64.to(DType::Float32), n).to(DType::Float64);
    REQUIRE(max_abs_diff(y32, x) < 1e-5 * max_abs(x));
    // Rows are independent: row 17 alone gives the same spectrum.
    REQUIRE(max_abs_diff(rfft(x.narrow(0, 17, 1)), X64.narrow(0, 17, 1)) == 0.0);
  }
}

TEST_CASE("rfft / irfft / complex_mul gradients", "[fft][gradcheck][gradgradcheck]") {
  for (int64_t L : {6, 7}) {
    for (int64_t n : {L, L + 3, L - 2}) {
      INFO("L = " << L << ", n = " << n);
      Fn f = [n](const std::vector<Tensor>& v) { return rfft(v[0], n); };
      const std::vector<Tensor> in{rnd({2, L}, 7)};
      KERN_GRADCHECK(f, in);
      KERN_GRADGRADCHECK(f, in);
      // Non-linear use so second derivatives are non-trivial.
      Fn g = [n](const std::vector<Tensor>& v) { return square(rfft(v[0], n)); };
      KERN_GRADGRADCHECK(g, in);
    }
  }
  for (int64_t n : {8, 9, 6, 1, 2}) {
    for (int64_t bins : {n / 2 + 1, n / 2 + 3, std::max<int64_t>(1, n / 2 - 1)}) {
      INFO("n = " << n << ", bins = " << bins);
      Fn f = [n](const std::vector<Tensor>& v) { return irfft(v[0], n); };
      const std::vector<Tensor> in{rnd({2, bins, 2}, 8)};
      KERN_GRADCHECK(f, in);
      KERN_GRADGRADCHECK(f, in);
      Fn g = [n](const std::vector<Tensor>& v) { return square(irfft(v[0], n)); };
      KERN_GRADGRADCHECK(g, in);
    }
  }
  Fn cm = [](const std::vector<Tensor>& v) { return complex_mul(v[0], v[1]); };
  const std::vector<Tensor> pair{rnd({3, 4, 2}, 9), rnd({4, 2}, 10)};
  KERN_GRADCHECK(cm, pair);
  KERN_GRADGRADCHECK(cm, pair);
  // An FFT convolution end to end, second order in both operands.
  Fn conv = [](const std::vector<Tensor>& v) {
    return irfft(complex_mul(rfft(v[0], 10), rfft(v[1], 10)), 10);
  };
  const std::vector<Tensor> sig{rnd({2, 6}, 11), rnd({5}, 12)};
  KERN_GRADCHECK(conv, sig);
  KERN_GRADGRADCHECK(conv, sig);
}

TEST_CASE("FFT ops reject bad shapes", "[fft][errors]") {
  Tensor X = rnd({4, 5, 3}, 13);
  REQUIRE_THROWS_WITH(irfft(X, 8), Catch::Contains("irfft") && Catch::Contains("[4, 5, 3]"));
  REQUIRE_THROWS_WITH(irfft(rnd({5}, 1), 8), Catch::Contains("irfft") && Catch::Contains("[5]"));
  REQUIRE_THROWS_WITH(irfft(rnd({5, 2}, 1), 0), Catch::Contains("irfft") && Catch::Contains("n = 0"));
  REQUIRE_THROWS_WITH(rfft(rnd({2, 4}, 1), -3), Catch::Contains("rfft") && Catch::Contains("[2, 4]"));
  REQUIRE_THROWS_WITH(rfft(arange(4)), Catch::Contains("rfft") && Catch::Contains("int64"));
  REQUIRE_THROWS_WITH(complex_mul(rnd({3, 2}, 1), rnd({3, 3}, 2)),
                      Catch::Contains("complex_mul") && Catch::Contains("[3, 2]") && Catch::Contains("[3, 3]"));
  REQUIRE_THROWS_WITH(complex_mul(rnd({3, 2}, 1), rnd({4, 2}, 2)), Catch::Contains("complex_mul"));
}
