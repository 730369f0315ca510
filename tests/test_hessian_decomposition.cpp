// tools/hessian_decomposition: Papyan's split of the cross-entropy GGN (G = G_means +
// G_within), against dense matrices built from the full Jacobian of a tiny float64 model by
// per-sample loops; the spectrum routine; the separated-eigenvalue count. All float64.
#include <kern/functional.hpp>
#include <kern/nn/functional_call.hpp>
#include <kern/nn/nn.hpp>
#include <kern/tools/hessian_decomposition.hpp>

#include <algorithm>
#include <cmath>

#include "gradcheck.hpp"

using namespace kern;
namespace tools = kern::tools;

namespace {

// Column j of an operator: A e_j -> [P, P].
Tensor dense(tools::SymmetricOperator& op) {
  std::vector<Tensor> cols;
  for (int64_t j = 0; j < op.size(); ++j) {
    Tensor e = zeros({op.size()}, op.dtype());
    e.narrow(0, j, 1).fill_(1.0);
    cols.push_back(op.apply(e));
  }
  return stack(cols, 1);
}

// The three parts written out from the definitions (header comment of
// hessian_decomposition.hpp), from the Jacobian J [N*C, P] and the logits.
struct DenseParts {
  Tensor G, G_from_A, means, within;
  int64_t rank_bound = 0;
};

DenseParts dense_parts(const Tensor& J, const Tensor& logits, const std::vector<int64_t>& y) {
  const int64_t N = logits.size(0), C = logits.size(1), P = J.size(1);
  auto z = logits.detach().contiguous().to_vector<double>();
  // p_i = softmax(z_i), by hand.
  std::vector<double> p(z.size());
  for (int64_t i = 0; i < N; ++i) {
    double mx = -1e300, s = 0.0;
    for (int64_t c = 0; c < C; ++c) mx = std::max(mx, z[i * C + c]);
    for (int64_t c = 0; c < C; ++c) s += std::exp(z[i * C + c] - mx);
    for (int64_t c = 0; c < C; ++c) p[i * C + c] = std::exp(z[i * C + c] - mx) / s;
  }
  auto prow = [&](int64_t i) { return from_vector(std::vector<double>(p.begin() + i * C, p.begin() + (i + 1) * C), {C}); };
  // delta[i] [C, P]: row c' = J_i^T (e_c' - p_i) = J_i[c'] - p_i^T J_i.
  std::vector<Tensor> delta;
  DenseParts d;
  d.G = zeros({P, P}, DType::Float64);
  d.G_from_A = zeros({P, P}, DType::Float64);
  for (int64_t i = 0; i < N; ++i) {
    Tensor Ji = J.narrow(0, i * C, C);
    Tensor pi = prow(i);
    delta.push_back(Ji - matmul(pi.reshape({1, C}), Ji));
    for (int64_t c = 0; c < C; ++c) {
      Tensor r = delta[i].narrow(0, c, 1).reshape({P});
      d.G = d.G + outer(r, r) * p[i * C + c];
    }
    Tensor A = zeros({C, C}, DType::Float64);
    for (int64_t c = 0; c < C; ++c) A.narrow(0, c, 1).narrow(1, c, 1).fill_(p[i * C + c]);
    A = A - outer(pi, pi);
    d.G_from_A = d.G_from_A + matmul(matmul(Ji.t(), A), Ji);
  }
  // Weighted class means and the two parts.
  d.means = zeros({P, P}, DType::Float64);
  d.within = zeros({P, P}, DType::Float64);
  int64_t classes_present = 0;
  for (int64_t c = 0; c < C; ++c) {
    bool present = false;
    for (int64_t c2 = 0; c2 < C; ++c2) {
      double W = 0.0;
      Tensor m = zeros({P}, DType::Float64);
      for (int64_t i = 0; i < N; ++i)
        if (y[i] == c) {
          W += p[i * C + c2];
          m = m + delta[i].narrow(0, c2, 1).reshape({P}) * p[i * C + c2];
          present = true;
        }
      if (W == 0.0) continue;
      m = m / W;
      d.means = d.means + outer(m, m) * W;
      for (int64_t i = 0; i < N; ++i)
        if (y[i] == c) {
          Tensor r = delta[i].narrow(0, c2, 1).reshape({P}) - m;
          d.within = d.within + outer(r, r) * p[i * C + c2];
        }
    }
    classes_present += present;
  }
  const double invN = 1.0 / static_cast<double>(N);
  d.G = d.G * invN;
  d.G_from_A = d.G_from_A * invN;
  d.means = d.means * invN;
  d.within = d.within * invN;
  d.rank_bound = classes_present * (C - 1);
  return d;
}

// Eigenvalues of a dense symmetric matrix, descending (tools::spectrum's exact path on a
// MatrixOperator: its own Eigen solve, no Lanczos).
std::vector<double> eigvals(const Tensor& m) {
  tools::MatrixOperator op(m);
  return tools::spectrum(op, {.k = 1, .max_iters = 1, .dense_limit = m.size(0)}).top;
}

double max_abs(const Tensor& t) { return max(abs(t)).item(); }

// Tiny float64 model: Linear(5, 7) Tanh Linear(7, 4): P = 35 + 7 + 28 + 4 = 74, C = 4.
struct Tiny {
  std::shared_ptr<nn::Sequential> model;
  Tensor x;
  Tiny(int64_t N, uint64_t seed) {
    manual_seed(seed);
    model = std::make_shared<nn::Sequential>(nn::Linear(5, 7), nn::Tanh(), nn::Linear(7, 4));
    model->to(DType::Float64);
    Generator gen(seed + 1);
    x = randn({N, 5}, DType::Float64, &gen) * 1.5;
  }
  // J [N*C, P] by kern::jacobian through functional_call (one reverse pass per output).
  Tensor jacobian_matrix() {
    auto named = model->named_parameters();
    std::vector<Tensor> primals;
    for (auto& [n, t] : named) primals.push_back(t.detach());
    auto J = jacobian(
        [&](const std::vector<Tensor>& ps) {
          nn::StateDict sd;
          for (size_t k = 0; k < ps.size(); ++k) sd.emplace_back(named[k].first, ps[k]);
          return nn::functional_call(*model, sd, x);
        },
        primals);
    std::vector<Tensor> blocks;
    for (auto& j : J) blocks.push_back(j.reshape({x.size(0) * 4, -1}));
    return cat(blocks, 1);
  }
};

}  // namespace

TEST_CASE("Papyan's split: G == G_means + G_within, each part equals its dense formula", "[hessian_decomposition]") {
  const int64_t N = 12, C = 4;
  // Labels covering every class, and labels leaving class 3 empty (its W row is zero).
  const std::vector<std::vector<int64_t>> label_sets = {{0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3},
                                                        {0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 1}};
  for (const auto& y : label_sets) {
    Tiny t(N, 3);
    Tensor labels = from_vector(y, {N});
    Tensor J = t.jacobian_matrix();
    Tensor logits;
    {
      NoGradGuard ng;
      logits = (*t.model)(t.x);
    }
    DenseParts d = dense_parts(J, logits, y);
    const double scale = max_abs(d.G);
    REQUIRE(scale > 1e-3);
    // The identity A_i = sum_c' p_ic' (e_c' - p_i)(e_c' - p_i)^T the split starts from.
    CHECK(max_abs_diff(d.G, d.G_from_A) < 1e-13 * scale);
    // The dense parts add up (the weighted scatter has no cross term).
    CHECK(max_abs_diff(d.means + d.within, d.G) < 1e-12 * scale);

    tools::GgnDecomposition dec(*t.model, t.x, labels);
    REQUIRE(dec.num_classes() == C);
    REQUIRE(dec.ggn().size() == 74);
    Tensor G = dense(dec.ggn()), Gm = dense(dec.class_means()), Gw = dense(dec.within_class());
    CHECK(max_abs_diff(G, d.G) < 1e-12 * scale);
    CHECK(max_abs_diff(Gm, d.means) < 1e-12 * scale);
    CHECK(max_abs_diff(Gw, d.within) < 1e-12 * scale);
    CHECK(max_abs_diff(Gm + Gw, G) < 1e-10 * scale);
    CHECK(dec.ggn().products() == 74);
    // G also equals the generic tools::GaussNewton of the mean cross-entropy.
    tools::GaussNewton gn(*t.model, t.x, labels, tools::mean_cross_entropy);
    CHECK(max_abs_diff(dense(gn), G) < 1e-12 * scale);
    // The within part is not trivially small here (the test separates the two parts).
    CHECK(max_abs(d.within) > 1e-2 * scale);
    CHECK(max_abs(d.means) > 1e-2 * scale);

    // Rank of G_means: C(C-1) = 12 with every class present, 3 * 3 = 9 with class 3 empty.
    auto em = eigvals(d.means);
    const int64_t rank = std::count_if(em.begin(), em.end(), [&](double e) { return e > 1e-9 * em[0]; });
    CHECK(rank == d.rank_bound);
    // The C^2 Gram route gives the same nonzero eigenvalues, and the trace.
    auto gram = dec.class_means_eigenvalues();
    REQUIRE(gram.size() == static_cast<size_t>(C * C));
    for (int64_t k = 0; k < d.rank_bound; ++k) CHECK(std::abs(gram[k] - em[k]) < 1e-11 * em[0]);
    for (int64_t k = d.rank_bound; k < C * C; ++k) CHECK(std::abs(gram[k]) < 1e-11 * em[0]);
    double tr = 0.0;
    for (int64_t k = 0; k < 74; ++k) tr += d.means.narrow(0, k, 1).narrow(1, k, 1).item();
    CHECK(std::abs(dec.class_means_trace() - tr) < 1e-12 * std::abs(tr));
    // W sums to N (each sample's probabilities sum to 1).
    double wsum = 0.0;
    for (double w : dec.weights()) wsum += w;
    CHECK(std::abs(wsum - N) < 1e-12);
    // The logits constructor is the module constructor.
    std::vector<Tensor> params = t.model->parameters();
    Tensor live;
    {
      EnableGradGuard eg;
      live = (*t.model)(t.x);
    }
    tools::GgnDecomposition dec2(live, params, labels);
    Generator gen(5);
    Tensor v = randn({74}, DType::Float64, &gen);
    CHECK(max_abs_diff(dec2.class_means().apply(v), matmul(d.means, v)) < 1e-12 * scale * 10);
  }
}

TEST_CASE("spectrum: Lanczos top-k and the exact path agree with a known spectrum", "[hessian_decomposition]") {
  // Q diag(lambda) Q^T with Q a Householder reflection: 3 outliers (50, 40, 30) over a bulk in
  // [0, 1].
  const int64_t n = 300;
  Generator gen(11);
  std::vector<double> lambda(n);
  for (int64_t i = 0; i < n; ++i) lambda[i] = static_cast<double>(i) / n;
  lambda[7] = 50.0;
  lambda[100] = 40.0;
  lambda[200] = 30.0;
  Tensor u = randn({n}, DType::Float64, &gen);
  Tensor Q = eye(n, DType::Float64) - outer(u, u) * (2.0 / dot(u, u).item());
  Tensor D = zeros({n, n}, DType::Float64);
  for (int64_t i = 0; i < n; ++i) D.narrow(0, i, 1).narrow(1, i, 1).fill_(lambda[i]);
  tools::MatrixOperator A(matmul(matmul(Q, D), Q.t()));
  std::vector<double> want = lambda;
  std::sort(want.begin(), want.end(), std::greater<>());

  auto lz = tools::spectrum(A, {.k = 5, .max_iters = 120, .tol = 1e-8, .density_runs = 2, .density_steps = 40});
  REQUIRE(lz.top.size() == 5);
  CHECK_FALSE(lz.exact);
  for (int k = 0; k < 3; ++k) CHECK(std::abs(lz.top[k] - want[k]) < 1e-8 * want[0]);
  double wsum = 0.0;
  for (double w : lz.density.weights) wsum += w;
  CHECK(std::abs(wsum - 1.0) < 1e-10);
  CHECK(lz.products == A.products());

  auto ex = tools::spectrum(A, {.k = 5, .max_iters = 5, .dense_limit = n});
  REQUIRE(ex.exact);
  REQUIRE(ex.top.size() == static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) CHECK(std::abs(ex.top[k] - want[k]) < 1e-12 * want[0]);

  // Three outliers over the bulk: counted by the largest gap ratio (30 / 1 - 1/300).
  auto sep = tools::separated_eigenvalues(ex.top);
  CHECK(sep.count == 3);
  CHECK(sep.gap_ratio == Approx(30.0 / want[3]));
}

TEST_CASE("separated_eigenvalues: largest gap ratio, numerical rank, tail guard", "[hessian_decomposition]") {
  // Gap ratios 1.25, 1.33, 60, 1.11, ...: three above the bulk.
  std::vector<double> e = {100, 80, 60, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1};
  auto s = tools::separated_eigenvalues(e, {.tail_guard = 2});
  CHECK(s.count == 3);
  CHECK(s.gap_ratio == Approx(60.0));
  CHECK(s.numerical_rank == 13);
  CHECK(s.ratio_at(1) == Approx(1.25));
  CHECK(s.ratio_at(99) == 0.0);
  // A larger gap in the last tail_guard entries is ignored (0.2 / 0.002 = 100 at j = 12 of 13).
  e.back() = 0.002;
  CHECK(tools::separated_eigenvalues(e, {.tail_guard = 2}).count == 3);
  CHECK(tools::separated_eigenvalues(e, {.tail_guard = 0}).count == 12);
  // A numerically zero tail sets the rank, and the gap search stops below it.
  std::vector<double> z = {5, 4, 3, 0.1, 0.09, 1e-12, 0.0, -1e-13};
  auto sz = tools::separated_eigenvalues(z, {.rank_rtol = 1e-9, .tail_guard = 5});
  CHECK(sz.numerical_rank == 5);
  CHECK(sz.count == 3);
  CHECK(sz.ratios.size() == 4);
  // Nothing positive: nothing separated.
  CHECK(tools::separated_eigenvalues({0.0, -1.0}).count == 0);
  CHECK_THROWS_WITH(tools::separated_eigenvalues({1.0, 2.0}), Catch::Contains("sorted descending"));
}

TEST_CASE("GgnDecomposition rejects bad input with clear errors", "[hessian_decomposition][errors]") {
  Tiny t(6, 4);
  Tensor good = from_vector(std::vector<int64_t>{0, 1, 2, 3, 0, 1}, {6});
  CHECK_THROWS_WITH(tools::GgnDecomposition(*t.model, t.x, from_vector(std::vector<int64_t>{0, 1, 2, 4, 0, 1}, {6})),
                    Catch::Contains("label 4") && Catch::Contains("[0, 4)"));
  CHECK_THROWS_WITH(tools::GgnDecomposition(*t.model, t.x, good.narrow(0, 0, 5)),
                    Catch::Contains("int64 [6]") && Catch::Contains("[5]"));
  CHECK_THROWS_WITH(tools::GgnDecomposition(*t.model, t.x, good.to(DType::Float64)), Catch::Contains("float64"));
  Tensor out;
  {
    NoGradGuard ng;
    out = (*t.model)(t.x);
  }
  CHECK_THROWS_WITH(tools::GgnDecomposition(out, t.model->parameters(), good), Catch::Contains("no graph"));
  tools::GgnDecomposition dec(*t.model, t.x, good);
  CHECK_THROWS_WITH(dec.class_means().apply(zeros({10}, DType::Float64)),
                    Catch::Contains("class_means") && Catch::Contains("[74]") && Catch::Contains("[10]"));
  CHECK_THROWS_WITH(dec.within_class().apply(zeros({74}, DType::Float32)), Catch::Contains("float32"));
  CHECK_THROWS_WITH(tools::spectrum(dec.ggn(), {.k = 10, .max_iters = 5}), Catch::Contains("max_iters"));
}
