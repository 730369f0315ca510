// tools/hessian: Hessian and Gauss-Newton products, eigenvalues, trace and spectral density,
// against PyTorch's exact Hessian of a tanh MLP (tests/data/mlp_tanh.safetensors, see
// /work/shared/fixtures/README.md) and against closed forms. All float64.
#include <kern/io/safetensors.hpp>
#include <kern/nn/nn.hpp>
#include <kern/tools/hessian.hpp>

#include <algorithm>
#include <cmath>

#include "gradcheck.hpp"

using namespace kern;
namespace tools = kern::tools;

namespace {

// The fixture MLP: Linear(6,16) Tanh Linear(16,16) Tanh Linear(16,3), params in PyTorch order.
struct Fixture {
  io::SafetensorsFile file = io::load_safetensors(KERN_TEST_DATA_DIR "/mlp_tanh.safetensors");
  std::vector<Tensor> params() const {
    std::vector<Tensor> p;
    for (const char* n : {"param.0.weight", "param.0.bias", "param.2.weight", "param.2.bias", "param.4.weight",
                          "param.4.bias"}) {
      Tensor t = file.get(n).clone();
      t.requires_grad_(true);
      p.push_back(t);
    }
    return p;
  }
  static Tensor forward(const std::vector<Tensor>& p, const Tensor& x) {
    Tensor h = tanh(linear(x, p[0], p[1]));
    h = tanh(linear(h, p[2], p[3]));
    return linear(h, p[4], p[5]);
  }
  Tensor target(const std::string& which) const { return which == "mse" ? file.get("y") : file.get("labels"); }
  static tools::Criterion criterion(const std::string& which) {
    return which == "mse" ? tools::Criterion(tools::half_mean_squared_error) : tools::Criterion(tools::mean_cross_entropy);
  }
  Tensor loss(const std::string& which, const std::vector<Tensor>& p) const {
    return criterion(which)(forward(p, file.get("x")), target(which));
  }
  // The fixture's eigenvalues, ranked as `which` asks.
  std::vector<double> eigvals(const std::string& loss, tools::Which which) const {
    auto e = file.get("hessian." + loss + ".eigvals").to_vector<double>();
    std::sort(e.begin(), e.end(), [&](double a, double b) {
      return which == tools::Which::LargestAlgebraic ? a > b : std::abs(a) > std::abs(b);
    });
    return e;
  }
};

// Column i of an operator: A e_i.
Tensor dense(tools::SymmetricOperator& op) {
  std::vector<Tensor> cols;
  for (int64_t i = 0; i < op.size(); ++i) {
    Tensor e = zeros({op.size()}, op.dtype());
    e.narrow(0, i, 1).fill_(1.0);
    cols.push_back(op.apply(e));
  }
  return stack(cols, 1);
}

// Q = I - 2 u u^T / |u|^2: an orthogonal (Householder) matrix [n, n].
Tensor householder(int64_t n, Generator& gen) {
  Tensor u = randn({n}, DType::Float64, &gen);
  return eye(n, DType::Float64) - outer(u, u) * (2.0 / dot(u, u).item());
}

double trapezoid(const std::vector<double>& x, const std::vector<double>& y) {
  double s = 0.0;
  for (size_t i = 1; i < x.size(); ++i) s += 0.5 * (x[i] - x[i - 1]) * (y[i] + y[i - 1]);
  return s;
}

}  // namespace

TEST_CASE("Hessian products equal the fixture's exact Hessian", "[hessian]") {
  Fixture f;
  for (std::string which : {"mse", "ce"}) {
    INFO(which);
    auto p = f.params();
    tools::Hessian H(f.loss(which, p), p);
    REQUIRE(H.size() == 435);
    REQUIRE(std::abs(H.loss().item() - f.file.get("loss." + which).item()) < 1e-12);
    REQUIRE(max_abs_diff(tools::flatten_vectors(H.gradient()), f.file.get("grad." + which)) < 1e-10);
    REQUIRE(max_abs_diff(dense(H), f.file.get("hessian." + which)) < 1e-10);
    REQUIRE(H.products() == 435);
  }
}

TEST_CASE("Top-3 Hessian eigenvalues of the fixture by power iteration and Lanczos", "[hessian]") {
  Fixture f;
  for (std::string which : {"mse", "ce"}) {
    for (auto rank : {tools::Which::LargestAlgebraic, tools::Which::LargestMagnitude}) {
      const bool algebraic = rank == tools::Which::LargestAlgebraic;
      INFO(which << (algebraic ? " largest algebraic" : " largest magnitude"));
      auto p = f.params();
      tools::Hessian H(f.loss(which, p), p);
      const auto expected = f.eigvals(which, rank);
      auto power = tools::power_iteration(H, {.k = 3, .which = rank, .max_iters = 20000, .tol = 1e-10, .seed = 1});
      auto lz = tools::lanczos(H, {.k = 3, .which = rank, .max_iters = 435, .tol = 1e-10, .seed = 2});
      REQUIRE(power.converged);
      REQUIRE(lz.converged);
      REQUIRE(power.eigenvalues.size() == 3);
      REQUIRE(lz.eigenvalues.size() == 3);
      for (int i = 0; i < 3; ++i) {
        INFO("eigenvalue " << i << ": fixture " << expected[i] << ", power " << power.eigenvalues[i]
                           << ", lanczos " << lz.eigenvalues[i]);
        CHECK(std::abs(power.eigenvalues[i] - expected[i]) < 1e-8);
        CHECK(std::abs(lz.eigenvalues[i] - expected[i]) < 1e-8);
        // The eigenvectors are eigenvectors: |H v - lambda v| small.
        Tensor hv = H.apply(lz.eigenvectors[i]);
        CHECK(max_abs_diff(hv, lz.eigenvectors[i] * lz.eigenvalues[i]) < 1e-7);
      }
      WARN(which << (algebraic ? " algebraic" : " magnitude") << ": power " << power.products << " HVPs, lanczos "
                 << lz.products << " HVPs");
    }
  }
}

TEST_CASE("Eigen-solvers rank a spectrum with a dominant negative eigenvalue as asked", "[hessian]") {
  // A = Q diag(lam) Q^T: the dominant eigenvalue is -5, the largest algebraic one 3.
  Generator gen(3);
  const std::vector<double> lam = {-5, 3, 2, 1, 0.5, 0.25, 0, -0.5, -1, -2, -2.5, -4.5};
  const auto n = static_cast<int64_t>(lam.size());
  Tensor Q = householder(n, gen);
  tools::MatrixOperator A(matmul(Q * from_vector<double>(lam, {n}), Q.t()));
  const std::vector<double> algebraic = {3, 2, 1}, magnitude = {-5, -4.5, 3};
  for (bool use_lanczos : {false, true}) {
    INFO((use_lanczos ? "lanczos" : "power iteration"));
    auto solve = [&](tools::Which w) {
      tools::EigenOptions o{.k = 3, .which = w, .max_iters = use_lanczos ? 12 : 5000, .tol = 1e-12};
      return use_lanczos ? tools::lanczos(A, o) : tools::power_iteration(A, o);
    };
    auto a = solve(tools::Which::LargestAlgebraic);
    auto m = solve(tools::Which::LargestMagnitude);
    for (int i = 0; i < 3; ++i) {
      CHECK(std::abs(a.eigenvalues[i] - algebraic[i]) < 1e-9);
      CHECK(std::abs(m.eigenvalues[i] - magnitude[i]) < 1e-9);
      // Eigenvectors are the matching columns of Q (up to sign).
      const auto col = static_cast<int64_t>(std::find(lam.begin(), lam.end(), algebraic[i]) - lam.begin());
      CHECK(std::abs(std::abs(dot(a.eigenvectors[i], Q.select(1, col)).item()) - 1.0) < 1e-8);
    }
  }
}

TEST_CASE("Power iteration from v0 with tol 0 runs exactly max_iters and records the Rayleigh quotients", "[hessian]") {
  Generator gen(4);
  const std::vector<double> lam = {4, 3, 1, -1};
  Tensor Q = householder(4, gen);
  tools::MatrixOperator A(matmul(Q * from_vector<double>(lam, {4}), Q.t()));
  Tensor v0 = randn({4}, DType::Float64, &gen);
  auto r = tools::power_iteration(A, {.k = 1, .max_iters = 20, .tol = 0.0, .v0 = v0});
  REQUIRE(r.products == 20);
  REQUIRE(r.history.at(0).size() == 20);
  // Hand-rolled loop: eig_i = v_i . A v_i, v_{i+1} = A v_i / |A v_i|.
  Tensor v = v0 / norm(v0).item();
  for (int i = 0; i < 20; ++i) {
    Tensor w = A.apply(v);
    CHECK(std::abs(r.history[0][i] - dot(v, w).item()) < 1e-12);
    v = w / norm(w).item();
  }
  CHECK(r.eigenvalues[0] == r.history[0].back());
}

TEST_CASE("ScaledOperator is D^1/2 A D^1/2 and sets gradient descent's stability threshold", "[hessian]") {
  Generator gen(12);
  const int64_t n = 6;
  Tensor Q = householder(n, gen);
  tools::MatrixOperator A(matmul(Q * from_vector<double>({5, 3, 2, 1, 0.5, 0.1}, {n}), Q.t()));
  Tensor d = from_vector<double>({1, 4, 0.25, 2, 1, 9}, {n});
  tools::ScaledOperator S(A, d);
  Tensor sd = sqrt(d);
  CHECK(max_abs_diff(dense(S), outer(sd, sd) * dense(A)) < 1e-13);
  // Gradient descent on 0.5 theta^T A theta with per-coordinate lrs lr * d: the iteration
  // matrix I - lr D A is similar to I - lr D^1/2 A D^1/2, so it is stable iff lr < 2 / top.
  const double top = tools::lanczos(S, {.k = 1, .max_iters = n, .tol = 1e-12}).eigenvalues[0];
  for (double f : {0.98, 1.02}) {
    const double lr = f * 2.0 / top;
    Tensor theta = randn({n}, DType::Float64, &gen);
    for (int it = 0; it < 3000; ++it) theta = theta - A.apply(theta) * d * lr;
    INFO("lr = " << f << " * 2/top, |theta| after 3000 steps: " << norm(theta).item());
    if (f < 1.0) CHECK(norm(theta).item() < 1e-3);
    else CHECK(norm(theta).item() > 1e6);
  }
  CHECK_THROWS_WITH(tools::ScaledOperator(A, -d), Catch::Contains("positive"));
  CHECK_THROWS_WITH(tools::ScaledOperator(A, ones({3}, DType::Float64)), Catch::Contains("[6]"));
}

TEST_CASE("Hutchinson trace of the fixture Hessians is within 3 standard errors of the exact trace", "[hessian]") {
  Fixture f;
  for (std::string which : {"mse", "ce"}) {
    INFO(which);
    auto p = f.params();
    tools::Hessian H(f.loss(which, p), p);
    auto tr = tools::hutchinson_trace(H, {.samples = 300, .seed = 7});
    const double exact = f.file.get("hessian." + which + ".trace").item();
    INFO("estimate " << tr.trace << " +- " << tr.std_error << ", exact " << exact);
    REQUIRE(tr.samples.size() == 300);
    REQUIRE(tr.std_error > 0.0);
    CHECK(std::abs(tr.trace - exact) <= 3.0 * tr.std_error);
    WARN(which << ": Hutchinson " << tr.trace << " +- " << tr.std_error << " vs exact " << exact << " ("
               << (tr.trace - exact) / tr.std_error << " SE)");
  }
  // Rademacher probes: z^T A z is exact for a diagonal matrix.
  tools::MatrixOperator D(eye(4, DType::Float64) * from_vector<double>({1, 2, 3, 4}, {4}));
  auto d = tools::hutchinson_trace(D, {.samples = 5});
  CHECK(std::abs(d.trace - 10.0) < 1e-12);
  CHECK(d.std_error < 1e-12);
}

TEST_CASE("SLQ density of the fixture Hessians integrates to 1 and has mean trace / P", "[hessian]") {
  Fixture f;
  for (std::string which : {"mse", "ce"}) {
    INFO(which);
    auto p = f.params();
    tools::Hessian H(f.loss(which, p), p);
    auto d = tools::slq_density(H, {.runs = 20, .steps = 60, .grid_points = 2000, .seed = 11});
    double wsum = 0.0;
    for (double w : d.weights) wsum += w;
    CHECK(std::abs(wsum - 1.0) < 1e-12);
    CHECK(std::abs(trapezoid(d.grid, d.density) - 1.0) < 1e-6);
    // The spectral measure's mean is exactly Hutchinson's estimate with the same probes / P ...
    auto tr = tools::hutchinson_trace(H, {.samples = 20, .seed = 11});
    CHECK(std::abs(d.mean - tr.trace / 435.0) < 1e-12);
    double mean = 0.0;
    for (size_t k = 0; k < d.nodes.size(); ++k) mean += d.weights[k] * d.nodes[k];
    CHECK(std::abs(mean - d.mean) < 1e-10);
    // ... and estimates tr(H) / P.
    const double exact = f.file.get("hessian." + which + ".trace").item() / 435.0;
    INFO("SLQ mean " << d.mean << " +- " << d.mean_std_error << ", trace / P " << exact);
    CHECK(std::abs(d.mean - exact) <= 3.0 * d.mean_std_error);
    WARN(which << ": SLQ mean " << d.mean << " +- " << d.mean_std_error << " vs trace/P " << exact << " ("
               << (d.mean - exact) / d.mean_std_error << " SE)");
    // The extreme nodes converge to the extreme eigenvalues (60 steps on 435 dimensions).
    const auto ev = f.eigvals(which, tools::Which::LargestAlgebraic);
    CHECK(std::abs(*std::max_element(d.nodes.begin(), d.nodes.end()) - ev.front()) < 1e-6);
    CHECK(std::abs(*std::min_element(d.nodes.begin(), d.nodes.end()) - ev.back()) < 1e-6);
  }
}

TEST_CASE("Linear regression: H = X^T X / N, and Gauss-Newton equals it", "[hessian]") {
  // X = first D columns of an orthogonal matrix, scaled: X^T X = diag(s^2).
  Generator gen(5);
  const int64_t N = 9, D = 4;
  const std::vector<double> s = {3, 2, 1.5, 0.5};
  Tensor X = householder(N, gen).narrow(1, 0, D).contiguous() * from_vector<double>(s, {D});
  Tensor y = randn({N}, DType::Float64, &gen);
  Tensor w = randn({D}, DType::Float64, &gen);
  Tensor b = randn({1}, DType::Float64, &gen);
  w.requires_grad_(true);
  // loss = 0.5 * mean_n (x_n . w - y_n)^2 (no bias: H is exactly X^T X / N)
  auto residual = [&] { return matmul(X, w) - y; };
  tools::Hessian H(mean(square(residual())) * 0.5, {w});
  Tensor expected = matmul(X.t(), X) / static_cast<double>(N);
  CHECK(max_abs_diff(dense(H), expected) < 1e-13);
  auto top = tools::lanczos(H, {.k = 2, .max_iters = D, .tol = 1e-12});
  CHECK(std::abs(top.eigenvalues[0] - 9.0 / N) < 1e-12);
  CHECK(std::abs(top.eigenvalues[1] - 4.0 / N) < 1e-12);
  // Gauss-Newton of a model linear in its parameters with MSE: exactly the Hessian.
  tools::GaussNewton G(matmul(X, w).reshape({N, 1}), {w}, [&](const Tensor& f) {
    return tools::half_mean_squared_error(f, y.reshape({N, 1}));
  });
  CHECK(max_abs_diff(dense(G), expected) < 1e-13);
  CHECK(std::abs(G.loss().item() - 0.5 * mean(square(residual())).item()) < 1e-14);
  (void)b;
}

TEST_CASE("Softmax cross-entropy of a linear model: closed-form Hessian", "[hessian]") {
  // logits = X W^T, loss = mean_n CE. With p_n = softmax(logits_n):
  // d2 loss / dW[c,d] dW[c',d'] = (1/N) sum_n (p_nc delta_cc' - p_nc p_nc') x_nd x_nd'.
  Generator gen(6);
  const int64_t N = 7, C = 3, D = 4;
  Tensor X = randn({N, D}, DType::Float64, &gen);
  Tensor W = randn({C, D}, DType::Float64, &gen);
  Tensor labels = randint(0, C, {N}, &gen);
  W.requires_grad_(true);
  tools::Hessian H(tools::mean_cross_entropy(matmul(X, W.t()), labels), {W});
  Tensor P = softmax(matmul(X, W.detach().t()), 1);
  auto p = P.to_vector<double>();
  auto x = X.to_vector<double>();
  std::vector<double> h(static_cast<size_t>(C * D * C * D), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t c2 = 0; c2 < C; ++c2)
          for (int64_t d2 = 0; d2 < D; ++d2) {
            const double pc = p[n * C + c], pc2 = p[n * C + c2];
            h[((c * D + d) * C + c2) * D + d2] += ((c == c2 ? pc : 0.0) - pc * pc2) * x[n * D + d] * x[n * D + d2] / N;
          }
  Tensor expected = from_vector<double>(h, {C * D, C * D});
  CHECK(max_abs_diff(dense(H), expected) < 1e-13);
  // Its Gauss-Newton matrix is the same (the model is linear in W).
  tools::GaussNewton G(matmul(X, W.t()), {W}, [&](const Tensor& f) { return tools::mean_cross_entropy(f, labels); });
  CHECK(max_abs_diff(dense(G), expected) < 1e-13);
  // Positive semi-definite with a null space (softmax shift invariance): top > 0, trace = sum diag.
  auto tr = tools::hutchinson_trace(G, {.samples = 50});
  CHECK(tr.trace > 0.0);
}

TEST_CASE("Gauss-Newton of the fixture MLP equals J^T H_L J", "[hessian]") {
  Fixture f;
  auto p = f.params();
  Tensor x = f.file.get("x"), y = f.file.get("y");
  const int64_t N = x.size(0);
  // mse = 0.5 mean_n sum_o (f - y)^2: H_L = I / N, so G = J^T J / N.
  tools::GaussNewton G(Fixture::forward(p, x), p, [&](const Tensor& out) { return tools::half_mean_squared_error(out, y); });
  auto J = jacobian([&](const std::vector<Tensor>& ps) { return Fixture::forward(ps, x); }, p);
  std::vector<Tensor> blocks;
  for (auto& j : J) blocks.push_back(j.reshape({N * 3, -1}));
  Tensor Jm = cat(blocks, 1);  // [N*O, P]
  Tensor expected = matmul(Jm.t(), Jm) / static_cast<double>(N);
  CHECK(max_abs_diff(dense(G), expected) < 1e-12);
  // PSD: its smallest eigenvalue is >= 0 (to rounding), unlike the Hessian's (-1.56).
  auto top = tools::lanczos(G, {.k = 1, .max_iters = 200, .tol = 1e-10});
  CHECK(top.eigenvalues[0] > 0.0);
  auto low = tools::slq_density(G, {.runs = 2, .steps = 100});
  CHECK(*std::min_element(low.nodes.begin(), low.nodes.end()) > -1e-8);
}

TEST_CASE("Hessian of a module: explicit eval/train mode with BatchNorm", "[hessian]") {
  manual_seed(8);
  // [N, 4] -> Linear -> [N, 6, 1, 1] -> BatchNorm2d -> [N, 6] -> Tanh -> Linear -> [N, 3]
  auto model = std::make_shared<nn::Sequential>(
      nn::Linear(4, 6), nn::Functional([](const Tensor& t) { return t.reshape({t.size(0), 6, 1, 1}); }, "To4d"),
      nn::BatchNorm2d(6), nn::Flatten(), nn::Tanh(), nn::Linear(6, 3));
  model->to(DType::Float64);
  Generator gen(9);
  Tensor x = randn({10, 4}, DType::Float64, &gen);
  Tensor labels = randint(0, 3, {10}, &gen);
  // Give the running statistics non-trivial values, then keep a copy.
  {
    NoGradGuard ng;
    (*model)(randn({10, 4}, DType::Float64, &gen) * 2.0 + 1.0);
  }
  auto bn = model->at<nn::BatchNorm2d>(2);
  Tensor rm = bn->running_mean.tensor().clone(), rv = bn->running_var.tensor().clone();
  model->train();

  tools::Hessian He(*model, x, labels, tools::mean_cross_entropy, {.mode = tools::Mode::Eval});
  tools::Hessian Ht(*model, x, labels, tools::mean_cross_entropy, {.mode = tools::Mode::Train});
  // The model is as it was: training flag and running statistics untouched.
  CHECK(model->is_training());
  CHECK(bn->is_training());
  CHECK(max_abs_diff(bn->running_mean.tensor(), rm) == 0.0);
  CHECK(max_abs_diff(bn->running_var.tensor(), rv) == 0.0);

  // The same functions written out by hand with functional batch_norm.
  auto params = model->parameters();
  auto loss_with = [&](bool batch_stats) {
    return [&, batch_stats](const std::vector<Tensor>& p) {
      Tensor h = linear(x, p[0], p[1]).reshape({10, 6, 1, 1});
      h = batch_stats ? batch_norm(h, Tensor(), Tensor(), p[2], p[3], true)
                      : batch_norm(h, rm, rv, p[2], p[3], false);
      return tools::mean_cross_entropy(linear(tanh(h.reshape({10, 6})), p[4], p[5]), labels);
    };
  };
  Tensor exact_eval = kern::hessian(
      [&](const std::vector<Tensor>& v) { return loss_with(false)(tools::unflatten_vector(v[0], params)); },
      tools::flatten_vectors(params));
  Tensor exact_train = kern::hessian(
      [&](const std::vector<Tensor>& v) { return loss_with(true)(tools::unflatten_vector(v[0], params)); },
      tools::flatten_vectors(params));
  CHECK(max_abs_diff(dense(He), exact_eval) < 1e-10);
  CHECK(max_abs_diff(dense(Ht), exact_train) < 1e-10);
  CHECK(max_abs_diff(exact_eval, exact_train) > 1e-3);  // the modes really differ
  // An eval-mode model stays in eval mode.
  model->eval();
  tools::Hessian He2(*model, x, labels, tools::mean_cross_entropy, {.mode = tools::Mode::Train});
  CHECK(!model->is_training());
  CHECK(!bn->is_training());
  CHECK(max_abs_diff(dense(He2), exact_train) < 1e-10);
}

TEST_CASE("Hessian tools reject bad input with clear errors", "[hessian][errors]") {
  Fixture f;
  auto p = f.params();
  Tensor out = Fixture::forward(p, f.file.get("x"));
  CHECK_THROWS_WITH(tools::Hessian(out, p), Catch::Contains("scalar") && Catch::Contains("[8, 3]"));
  Tensor detached = f.loss("mse", p).detach();
  CHECK_THROWS_WITH(tools::Hessian(detached, p), Catch::Contains("no graph"));
  tools::Hessian H(f.loss("mse", p), p);
  CHECK_THROWS_WITH(H.apply(zeros({10}, DType::Float64)), Catch::Contains("[435]") && Catch::Contains("[10]"));
  CHECK_THROWS_WITH(H.apply(zeros({435}, DType::Float32)), Catch::Contains("float32"));
  CHECK_THROWS_WITH(tools::power_iteration(H, {.k = 436}), Catch::Contains("k = 436"));
  CHECK_THROWS_WITH(tools::lanczos(H, {.k = 5, .max_iters = 3}), Catch::Contains("k = 5"));
  CHECK_THROWS_WITH(tools::hutchinson_trace(H, {.samples = 1}), Catch::Contains("samples"));
  CHECK_THROWS_WITH(tools::half_mean_squared_error(out, zeros({8, 2}, DType::Float64)),
                    Catch::Contains("[8, 3]") && Catch::Contains("[8, 2]"));
}
