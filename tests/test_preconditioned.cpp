// tools/preconditioned: Adam's P read from the optimizer state, P^-1/2 H P^-1/2 against the
// dense P^-1 H of an explicit (finite-difference) Hessian, the 38/lr threshold against the
// frozen-preconditioner dynamics, and the tracker metric.
#include <kern/nn/nn.hpp>
#include <kern/ops.hpp>
#include <kern/optim/optim.hpp>
#include <kern/tools/preconditioned.hpp>
#include <kern/tools/tracker.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <vector>

#include "gradcheck.hpp"

using namespace kern;
namespace tools = kern::tools;
namespace fs = std::filesystem;

namespace {

using Matrix = std::vector<std::vector<double>>;

// A float64 tanh MLP 4-5-3 (43 parameters), a regression batch, and Adam with a given
// second-moment state v and step count.
struct AdamSetup {
  Generator gen{5};
  std::shared_ptr<nn::Sequential> model;
  data::Batch batch;
  std::unique_ptr<optim::Adam> opt;
  std::vector<double> v;  // the given exp_avg_sq, flat in parameter order
  static constexpr double lr = 1e-3, beta2 = 0.99, eps = 1e-4;
  static constexpr double step = 7.0;

  AdamSetup() {
    manual_seed(5);
    model = std::make_shared<nn::Sequential>(nn::Linear(4, 5), nn::Tanh(), nn::Linear(5, 3));
    model->to(DType::Float64);
    batch.x = randn({16, 4}, DType::Float64, &gen);
    batch.y = randn({16, 3}, DType::Float64, &gen);
    opt = std::make_unique<optim::Adam>(model->parameters(),
                                        optim::AdamOptions{.lr = lr, .betas = {0.9, beta2}, .eps = eps});
    // One real step creates the state; then install the given v (spanning 1e-6 .. 1e-1, so
    // eps matters for some coordinates) and step count.
    tools::half_mean_squared_error((*model)(batch.x), batch.y).backward();
    opt->step();
    optim::StateDict sd = opt->state_dict();
    Generator vg(9);
    for (auto& [key, t] : sd) {
      if (key.ends_with(".exp_avg_sq")) {
        Tensor given = exp(rand(t.shape(), DType::Float64, &vg) * (-12.0) - 2.0);
        t = given;
        for (double e : given.reshape({-1}).to_vector<double>()) v.push_back(e);
      } else if (key.ends_with(".step")) {
        t = scalar_tensor(step, DType::Float64);
      }
    }
    opt->load_state_dict(sd);
  }
  std::vector<Tensor> params() const { return model->parameters(); }
};

// The flat gradient of the batch loss at the current parameters.
std::vector<double> flat_gradient(AdamSetup& s) {
  s.model->zero_grad();
  tools::half_mean_squared_error((*s.model)(s.batch.x), s.batch.y).backward();
  std::vector<double> g;
  for (auto& p : s.params())
    for (double e : p.grad().reshape({-1}).to_vector<double>()) g.push_back(e);
  return g;
}

// The dense Hessian by central differences of the gradient (h = 1e-5: error ~1e-10), symmetrized.
Matrix fd_hessian(AdamSetup& s) {
  std::vector<double*> coords;
  for (auto& p : s.params()) {
    double* d = p.data_ptr<double>();
    for (int64_t i = 0; i < p.numel(); ++i) coords.push_back(d + i);
  }
  const size_t n = coords.size();
  const double h = 1e-5;
  Matrix H(n, std::vector<double>(n));
  for (size_t j = 0; j < n; ++j) {
    const double x0 = *coords[j];
    *coords[j] = x0 + h;
    auto gp = flat_gradient(s);
    *coords[j] = x0 - h;
    auto gm = flat_gradient(s);
    *coords[j] = x0;
    for (size_t i = 0; i < n; ++i) H[i][j] = (gp[i] - gm[i]) / (2 * h);
  }
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < i; ++j) H[i][j] = H[j][i] = 0.5 * (H[i][j] + H[j][i]);
  return H;
}

Matrix multiply(const Matrix& a, const Matrix& b) {
  const size_t n = a.size();
  Matrix c(n, std::vector<double>(n, 0.0));
  for (size_t i = 0; i < n; ++i)
    for (size_t k = 0; k < n; ++k)
      for (size_t j = 0; j < n; ++j) c[i][j] += a[i][k] * b[k][j];
  return c;
}

// The largest (real) eigenvalue of a dense, possibly non-symmetric M whose eigenvalues are
// real: shift by the Gershgorin bound c so that M + cI has eigenvalues >= 0, raise it to the
// power 2^60 by repeated squaring (normalized), and read lambda from the dominant column v.
double top_eigenvalue_dense(const Matrix& M) {
  const size_t n = M.size();
  double c = 0.0;
  for (auto& row : M) {
    double r = 0.0;
    for (double e : row) r += std::abs(e);
    c = std::max(c, r);
  }
  Matrix B = M;
  for (size_t i = 0; i < n; ++i) B[i][i] += c;
  for (int it = 0; it < 60; ++it) {
    B = multiply(B, B);
    double big = 0.0;
    for (auto& row : B)
      for (double e : row) big = std::max(big, std::abs(e));
    for (auto& row : B)
      for (double& e : row) e /= big;
  }
  size_t col = 0;
  double best = -1.0;
  for (size_t j = 0; j < n; ++j) {
    double s = 0.0;
    for (size_t i = 0; i < n; ++i) s += B[i][j] * B[i][j];
    if (s > best) best = s, col = j;
  }
  std::vector<double> v(n), Mv(n, 0.0);
  for (size_t i = 0; i < n; ++i) v[i] = B[i][col];
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) Mv[i] += M[i][j] * v[j];
    num += v[i] * Mv[i];
    den += v[i] * v[i];
  }
  return num / den;
}

}  // namespace

TEST_CASE("P^-1/2 H P^-1/2 has the top eigenvalue of the dense P^-1 H with Adam's bias-corrected P",
          "[preconditioned][tracker]") {
  AdamSetup s;
  const size_t n = s.v.size();
  REQUIRE(n == 43);
  // P from the given v, written out here: sqrt(v / (1 - beta2^t)) + eps.
  std::vector<double> P(n);
  for (size_t i = 0; i < n; ++i) P[i] = std::sqrt(s.v[i] / (1.0 - std::pow(AdamSetup::beta2, AdamSetup::step))) + AdamSetup::eps;

  REQUIRE(tools::adam_has_state(*s.opt, s.params()));
  auto d = tools::adam_inverse_preconditioner(*s.opt, s.params()).to_vector<double>();
  REQUIRE(d.size() == n);
  for (size_t i = 0; i < n; ++i) CHECK(std::abs(d[i] * P[i] - 1.0) < 1e-12);

  Matrix H = fd_hessian(s);
  Matrix M = H;  // P^-1 H
  for (size_t i = 0; i < n; ++i)
    for (double& e : M[i]) e /= P[i];
  const double expected = top_eigenvalue_dense(M);
  const double plain = top_eigenvalue_dense(H);

  tools::Hessian hess(*s.model, s.batch.x, s.batch.y, tools::half_mean_squared_error);
  tools::PreconditionedOperator op(hess, tools::adam_inverse_preconditioner(*s.opt, hess.params()));
  const double got = tools::lanczos(op, {.k = 1, .max_iters = 43, .tol = 1e-12}).eigenvalues[0];
  INFO("dense P^-1 H: " << expected << ", operator: " << got << ", plain H: " << plain);
  CHECK(std::abs(got - expected) < 1e-6 * std::abs(expected));
  CHECK(expected > 10.0 * plain);  // P really rescales (sqrt(v) << 1)

  // The tracker metric records the same value and Adam's threshold 38 / lr (beta1 = 0.9).
  const fs::path dir = fs::path(KERN_BINARY_DIR) / "test_tmp" / "preconditioned";
  fs::create_directories(dir);
  tools::Tracker tracker((dir / "adam.jsonl").string(), {.every = 1, .lr = AdamSetup::lr, .log = nullptr});
  tracker.track(tools::preconditioned_sharpness(*s.model, s.batch, tools::half_mean_squared_error, *s.opt,
                                                {.iters = 43, .tol = 1e-12}));
  tracker.step();
  const auto rec = nlohmann::json::parse(tracker.last_line());
  CHECK(std::abs(rec["preconditioned_sharpness"].get<double>() - expected) < 1e-6 * std::abs(expected));
  CHECK(std::abs(rec["preconditioned_threshold"].get<double>() - 38.0 / AdamSetup::lr) < 1e-9 * 38.0 / AdamSetup::lr);
  CHECK(std::abs(rec["preconditioned_sharpness_ratio"].get<double>() - expected * AdamSetup::lr / 38.0) < 1e-6);
  CHECK(rec.contains("time.preconditioned"));
}

TEST_CASE("Adam's threshold (2 + 2 beta1) / ((1 - beta1) lr) separates decay from growth of the frozen-P iteration",
          "[preconditioned]") {
  // Adam with a frozen preconditioner, along one eigenvector a of P^-1/2 H P^-1/2 (bias
  // corrections at their limit 1): m <- beta1 m + (1 - beta1) a u; u <- u - lr m.
  auto final_size = [](double a, double lr, double beta1) {
    double u = 1.0, m = 0.0;
    for (int t = 0; t < 20000 && std::abs(u) < 1e6; ++t) {
      m = beta1 * m + (1.0 - beta1) * a * u;
      u -= lr * m;
    }
    return std::abs(u);
  };
  for (double beta1 : {0.0, 0.5, 0.9, 0.95}) {
    for (double lr : {1e-3, 0.3}) {
      const double edge = tools::adam_stability_threshold(lr, beta1);
      INFO("beta1 " << beta1 << " lr " << lr << " threshold " << edge);
      CHECK(final_size(0.98 * edge, lr, beta1) < 1e-3);
      CHECK(final_size(1.02 * edge, lr, beta1) > 1e3);
    }
  }
  CHECK(std::abs(tools::adam_stability_threshold(0.01, 0.9) - 3800.0) < 1e-9);
  CHECK_THROWS_WITH(tools::adam_stability_threshold(0.0, 0.9), Catch::Contains("lr"));
  CHECK_THROWS_WITH(tools::adam_stability_threshold(0.1, 1.0), Catch::Contains("beta1"));
}

TEST_CASE("preconditioned sharpness: no state before the first step, bad inputs throw", "[preconditioned][errors]") {
  manual_seed(3);
  auto model = std::make_shared<nn::Sequential>(nn::Linear(3, 2));
  model->to(DType::Float64);
  optim::Adam opt(model->parameters(), {.lr = 0.01});
  data::Batch b{randn({4, 3}, DType::Float64), randn({4, 2}, DType::Float64)};
  CHECK(!tools::adam_has_state(opt, model->parameters()));
  CHECK_THROWS_WITH(tools::adam_inverse_preconditioner(opt, model->parameters()), Catch::Contains("no Adam state"));
  Tensor stranger = zeros({2}, DType::Float64).requires_grad_();
  CHECK_THROWS_WITH(tools::adam_inverse_preconditioner(opt, {stranger}), Catch::Contains("not optimized"));

  // Before the first step the metric records the threshold only.
  auto metric = tools::preconditioned_sharpness(*model, b, tools::half_mean_squared_error, opt);
  auto values = metric.fn(tools::StepInfo{});
  REQUIRE(values.size() == 1);
  CHECK(values[0].first == "preconditioned_threshold");
  CHECK(std::abs(std::get<double>(values[0].second) - 3800.0) < 1e-9);

  tools::MatrixOperator A(eye(3, DType::Float64));
  CHECK_THROWS_WITH(tools::PreconditionedOperator(A, ones({2}, DType::Float64)), Catch::Contains("[3]"));
  CHECK_THROWS_WITH(tools::PreconditionedOperator(A, from_vector<double>({1.0, 0.0, 2.0}, {3})), Catch::Contains("> 0"));
  tools::PreconditionedOperator op(A, from_vector<double>({1.0, 4.0, 9.0}, {3}));
  CHECK(op.apply(ones({3}, DType::Float64)).to_vector<double>() == std::vector<double>{1.0, 4.0, 9.0});
  CHECK_THROWS_WITH(op.apply(ones({4}, DType::Float64)), Catch::Contains("PreconditionedOperator::apply"));
}

TEST_CASE("preconditioned sharpness at lr 0 (warmup start, decay end): threshold +inf, no eigenvalue, no throw",
          "[preconditioned]") {
  manual_seed(4);
  auto model = std::make_shared<nn::Sequential>(nn::Linear(3, 2));
  model->to(DType::Float64);
  optim::Adam opt(model->parameters(), {.lr = 0.01});
  data::Batch b{randn({4, 3}, DType::Float64), randn({4, 2}, DType::Float64)};
  auto metric = tools::preconditioned_sharpness(*model, b, tools::half_mean_squared_error, opt);
  opt.set_lr(0.0);  // a warmup schedule's first step
  auto before = metric.fn(tools::StepInfo{});
  REQUIRE(before.size() == 1);
  CHECK(std::isinf(std::get<double>(before[0].second)));
  opt.set_lr(0.01);
  Tensor loss = tools::half_mean_squared_error((*model)(b.x), b.y);
  loss.backward();
  opt.step();
  CHECK(metric.fn(tools::StepInfo{}).size() == 5);  // threshold, sharpness, ratio, hvps, residual
  opt.set_lr(0.0);  // a cosine schedule's last step: P exists, lr multipliers do not
  auto after = metric.fn(tools::StepInfo{});
  REQUIRE(after.size() == 1);
  CHECK(std::isinf(std::get<double>(after[0].second)));
}
