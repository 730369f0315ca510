// kern::limits predictions (nt.predict): NTK gradient flow mean/covariance and kernel
// regression against hand-computed and integrated references.
#include <kern/kern.hpp>
#include <kern/tools/limits/predict.hpp>
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

namespace L = kern::limits;
using kern::Tensor;

namespace {

std::vector<double> vec(const Tensor& t) {
  Tensor c = t.to(kern::DType::Float64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

Tensor mat(const std::vector<double>& v, int64_t r, int64_t c) { return kern::from_vector(v, {r, c}); }

// A random SPD kernel [n, n] (G G^T / n + 0.1 I) and a test-train block from the same features.
struct Problem {
  std::vector<double> ktt, kst, kss;
  int64_t n, m;
};

Problem random_problem(int64_t n, int64_t m, uint64_t seed) {
  kern::Generator g(seed);
  std::vector<double> f = vec(kern::randn({n + m, 6}, kern::DType::Float64, &g));
  auto k = [&](int64_t a, int64_t b) {
    double s = 0;
    for (int d = 0; d < 6; ++d) s += f[a * 6 + d] * f[b * 6 + d];
    return s / 6 + (a == b ? 0.1 : 0.0);
  };
  Problem p{{}, {}, {}, n, m};
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) p.ktt.push_back(k(i, j));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) p.kst.push_back(k(n + i, j));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j) p.kss.push_back(k(n + i, n + j));
  return p;
}

}  // namespace

TEST_CASE("limits::predict: a 2x2 case computed by hand", "[limits]") {
  // Theta = [[2, 1], [1, 2]] (eigenvalues 3 on (1,1), 1 on (1,-1)), y = (1, 0), eta = 1,
  // N O = 2: rate 1/2. y = (1,1)/2 + (1,-1)/2, so
  //   f_train(t) = (1 - e^{-3t/2}) (1,1)/2 + (1 - e^{-t/2}) (1,-1)/2
  //   f(x*, t) with Theta_* = (1, 1/2): (1 - e^{-3t/2})/4 + (1 - e^{-t/2})/4.
  L::GradientDescentMse gd(mat({2, 1, 1, 2}, 2, 2), mat({1, 0}, 2, 1));
  for (double t : {0.0, 0.3, 2.0, 11.0}) {
    const double a = -std::expm1(-1.5 * t), b = -std::expm1(-0.5 * t);
    auto tr = vec(gd.mean_train(t));
    CHECK(std::abs(tr[0] - (a + b) / 2) < 1e-14);
    CHECK(std::abs(tr[1] - (a - b) / 2) < 1e-14);
    auto te = vec(gd.mean(mat({1, 0.5}, 1, 2), t));
    CHECK(std::abs(te[0] - (a + b) / 4) < 1e-14);
  }
  // t = inf: Theta_* Theta^{-1} y = (1, 1/2) [[2,-1],[-1,2]]/3 (1, 0) = (2 - 1/2)/3 = 1/2
  CHECK(std::abs(vec(gd.mean(mat({1, 0.5}, 1, 2), L::kInfinity))[0] - 0.5) < 1e-14);
}

TEST_CASE("limits::predict: t = 0 is the zero initial mean, t = inf is NTK kernel regression",
          "[limits]") {
  Problem p = random_problem(7, 3, 11);
  kern::Generator g(3);
  Tensor y = kern::randn({7, 2}, kern::DType::Float64, &g);
  L::GradientDescentMse gd(mat(p.ktt, 7, 7), y, {.learning_rate = 0.7});
  for (double v : vec(gd.mean(mat(p.kst, 3, 7), 0.0))) CHECK(v == 0.0);
  for (double v : vec(gd.mean_train(0.0))) CHECK(v == 0.0);
  auto inf = vec(gd.mean(mat(p.kst, 3, 7), L::kInfinity));
  auto reg = vec(L::kernel_regression(mat(p.ktt, 7, 7), y, mat(p.kst, 3, 7)));
  for (size_t i = 0; i < inf.size(); ++i) CHECK(std::abs(inf[i] - reg[i]) < 1e-10);
  // the training points are fitted at t = inf
  auto tr = vec(gd.mean_train(L::kInfinity)), yv = vec(y);
  for (size_t i = 0; i < tr.size(); ++i) CHECK(std::abs(tr[i] - yv[i]) < 1e-10);
  // kernel regression on the training points themselves interpolates
  auto self = vec(L::kernel_regression(mat(p.ktt, 7, 7), y, mat(p.ktt, 7, 7)));
  for (size_t i = 0; i < self.size(); ++i) CHECK(std::abs(self[i] - yv[i]) < 1e-10);
}

TEST_CASE("limits::predict: the mean follows explicit Euler integration of the gradient flow",
          "[limits]") {
  // df_train/dt = -c Theta (f_train - y), df_test/dt = -c Theta_* (f_train - y), c = eta/(N O)
  const int64_t n = 6, m = 2, o = 2;
  Problem p = random_problem(n, m, 5);
  kern::Generator g(9);
  std::vector<double> y = vec(kern::randn({n, o}, kern::DType::Float64, &g));
  const double eta = 1.5, c = eta / (n * o), T = 4.0, dt = 1e-4;
  std::vector<double> ftr(n * o, 0.0), fte(m * o, 0.0);
  for (int64_t step = 0; step < static_cast<int64_t>(T / dt + 0.5); ++step) {
    std::vector<double> r(n * o);
    for (int64_t i = 0; i < n * o; ++i) r[i] = ftr[i] - y[i];
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < o; ++k) {
        double s = 0;
        for (int64_t j = 0; j < n; ++j) s += p.ktt[i * n + j] * r[j * o + k];
        ftr[i * o + k] -= dt * c * s;
      }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t k = 0; k < o; ++k) {
        double s = 0;
        for (int64_t j = 0; j < n; ++j) s += p.kst[i * n + j] * r[j * o + k];
        fte[i * o + k] -= dt * c * s;
      }
  }
  L::GradientDescentMse gd(mat(p.ktt, n, n), kern::from_vector(y, {n, o}), {.learning_rate = eta});
  auto tr = vec(gd.mean_train(T)), te = vec(gd.mean(mat(p.kst, m, n), T));
  // Euler's global error is O(dt): 1e-4 relative is far above it and far below any mistake
  for (int64_t i = 0; i < n * o; ++i) CHECK(std::abs(tr[i] - ftr[i]) < 1e-4 * (1 + std::abs(ftr[i])));
  for (int64_t i = 0; i < m * o; ++i) CHECK(std::abs(te[i] - fte[i]) < 1e-4 * (1 + std::abs(fte[i])));
}

TEST_CASE("limits::predict: covariance is the prior at t = 0 and the GP posterior at t = inf "
          "when NTK = NNGP", "[limits]") {
  Problem p = random_problem(5, 3, 21);
  L::GradientDescentMse gd(mat(p.ktt, 5, 5), mat(std::vector<double>(5, 1.0), 5, 1));
  auto c0 = vec(gd.cov(mat(p.kst, 3, 5), mat(p.ktt, 5, 5), mat(p.kst, 3, 5), mat(p.kss, 3, 3), 0.0));
  for (size_t i = 0; i < c0.size(); ++i) CHECK(std::abs(c0[i] - p.kss[i]) < 1e-12);
  auto ci = vec(gd.cov(mat(p.kst, 3, 5), mat(p.ktt, 5, 5), mat(p.kst, 3, 5), mat(p.kss, 3, 3), L::kInfinity));
  auto post = vec(L::kernel_regression_cov(mat(p.ktt, 5, 5), mat(p.kst, 3, 5), mat(p.kss, 3, 3)));
  for (size_t i = 0; i < ci.size(); ++i) CHECK(std::abs(ci[i] - post[i]) < 1e-10);
  // diag_reg: relative to the mean diagonal
  const double md = (p.ktt[0] + p.ktt[6] + p.ktt[12] + p.ktt[18] + p.ktt[24]) / 5;
  std::vector<double> kreg = p.ktt;
  for (int i = 0; i < 5; ++i) kreg[i * 6] += 0.3 * md;
  Tensor y = mat({1, -1, 2, 0, 1}, 5, 1);
  auto a = vec(L::kernel_regression(mat(p.ktt, 5, 5), y, mat(p.kst, 3, 5), {.diag_reg = 0.3}));
  auto b = vec(L::kernel_regression(mat(kreg, 5, 5), y, mat(p.kst, 3, 5)));
  for (size_t i = 0; i < a.size(); ++i) CHECK(std::abs(a[i] - b[i]) < 1e-12);
  CHECK_THROWS_WITH(L::kernel_regression(mat(p.ktt, 5, 5), y, mat(p.kss, 3, 3)),
                    Catch::Contains("k_test_train has shape [3, 3], expected [*, 5]"));
}

TEST_CASE("limits::kernel_regression: the Cholesky path solves K alpha = y (Gaussian elimination)", "[limits]") {
  Problem p = random_problem(9, 4, 33);
  std::vector<double> y = {1, -1, 2, 0, 1, 0.5, -2, 3, 1};
  // alpha = K^{-1} y by Gaussian elimination with partial pivoting, written here
  const int n = 9;
  std::vector<double> a = p.ktt, b = y;
  for (int c = 0; c < n; ++c) {
    int piv = c;
    for (int r = c + 1; r < n; ++r)
      if (std::abs(a[r * n + c]) > std::abs(a[piv * n + c])) piv = r;
    for (int k = 0; k < n; ++k) std::swap(a[c * n + k], a[piv * n + k]);
    std::swap(b[c], b[piv]);
    for (int r = c + 1; r < n; ++r) {
      const double f = a[r * n + c] / a[c * n + c];
      for (int k = c; k < n; ++k) a[r * n + k] -= f * a[c * n + k];
      b[r] -= f * b[c];
    }
  }
  std::vector<double> alpha(n);
  for (int r = n - 1; r >= 0; --r) {
    double s = b[r];
    for (int k = r + 1; k < n; ++k) s -= a[r * n + k] * alpha[k];
    alpha[r] = s / a[r * n + r];
  }
  auto chol = vec(L::kernel_regression(mat(p.ktt, 9, 9), mat(y, 9, 1), mat(p.kst, 4, 9), {.cholesky = true}));
  auto eig = vec(L::kernel_regression(mat(p.ktt, 9, 9), mat(y, 9, 1), mat(p.kst, 4, 9)));
  for (int m = 0; m < 4; ++m) {
    double ref = 0;
    for (int k = 0; k < n; ++k) ref += p.kst[m * n + k] * alpha[k];
    CHECK(std::abs(chol[m] - ref) < 1e-10 * (1 + std::abs(ref)));
    CHECK(std::abs(eig[m] - ref) < 1e-10 * (1 + std::abs(ref)));
  }
  // an indefinite kernel is an error on the Cholesky path
  std::vector<double> bad = p.ktt;
  bad[0] = -1.0;
  CHECK_THROWS_WITH(L::kernel_regression(mat(bad, 9, 9), mat(y, 9, 1), mat(p.kst, 4, 9), {.cholesky = true}),
                    Catch::Contains("not positive definite"));
}
