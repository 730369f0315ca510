// Eigenvalues (power iteration with deflation, Lanczos with full reorthogonalization),
// Hutchinson's trace and stochastic Lanczos quadrature on any SymmetricOperator.
// Vectors are flat tensors [P] in the operator's dtype; scalars are accumulated in double.
// Eigen appears here only for the small tridiagonal eigenproblems (m x m, m = Lanczos steps).
#include <kern/ops.hpp>
#include <kern/tools/hessian.hpp>

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace kern::tools {

namespace {

constexpr double kTiny = 1e-300;

double dotd(const Tensor& a, const Tensor& b) { return dot(a, b).item(); }
double norm2(const Tensor& a) { return std::sqrt(std::max(0.0, dotd(a, a))); }

Tensor random_unit(int64_t n, DType dt, Generator& gen) {
  Tensor v = randn({n}, dt, &gen);
  return v / norm2(v);
}

// Applies `op` and checks what came back.
Tensor apply_checked(SymmetricOperator& op, const Tensor& v) {
  Tensor w = op.apply(v);
  KERN_CHECK(w.dim() == 1 && w.size(0) == op.size() && w.dtype() == op.dtype(),
             "curvature operator returned ", w.dtype(), " ", w.shape(), " for a vector [", op.size(), "]");
  return w;
}

// Ranks eigenvalues: true when a comes before b.
bool before(double a, double b, Which which) {
  return which == Which::LargestAlgebraic ? a > b : std::abs(a) > std::abs(b);
}

void sort_result(EigenResult& r, Which which) {
  std::vector<size_t> idx(r.eigenvalues.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](size_t a, size_t b) { return before(r.eigenvalues[a], r.eigenvalues[b], which); });
  EigenResult s;
  for (size_t i : idx) {
    s.eigenvalues.push_back(r.eigenvalues[i]);
    s.eigenvectors.push_back(r.eigenvectors[i]);
    s.residuals.push_back(r.residuals[i]);
    if (i < r.history.size()) s.history.push_back(std::move(r.history[i]));
  }
  s.products = r.products;
  s.converged = r.converged;
  r = std::move(s);
}

// Lanczos vectors as the rows of a matrix that grows by doubling: [rows, P].
class Basis {
 public:
  Basis(int64_t n, DType dt, int64_t max_rows) : n_(n), dt_(dt), max_rows_(max_rows) {}
  int64_t rows() const { return rows_; }
  Tensor row(int64_t i) const { return q_.select(0, i); }
  Tensor active() const { return q_.narrow(0, 0, rows_); }  // [rows, P]
  void push(const Tensor& v) {
    if (rows_ == capacity_) {
      const int64_t cap = std::min(max_rows_, std::max<int64_t>(16, 2 * capacity_));
      Tensor grown = empty({cap, n_}, dt_);
      if (rows_ > 0) grown.narrow(0, 0, rows_).copy_(active());
      q_ = grown;
      capacity_ = cap;
    }
    q_.select(0, rows_++).copy_(v);
  }
  // w - Q (Q^T w), twice ("twice is enough", Parlett): w stays orthogonal to every row.
  Tensor orthogonalize(Tensor w) const {
    if (rows_ == 0) return w;
    Tensor q = active();
    for (int pass = 0; pass < 2; ++pass) w = w - matmul(matmul(q, w), q);
    return w;
  }
  // Q^T s for s over the rows: [P].
  Tensor combine(const std::vector<double>& s) const {
    Tensor c = from_vector<double>(s, {static_cast<int64_t>(s.size())}).to(dt_);
    return matmul(c, active());
  }

 private:
  int64_t n_;
  DType dt_;
  int64_t max_rows_;
  int64_t rows_ = 0, capacity_ = 0;
  Tensor q_;
};

struct Tridiagonal {
  std::vector<double> alpha;  // diagonal, m
  std::vector<double> beta;   // off-diagonal, m - 1 (beta[j] couples j and j + 1)
};

// Ritz values (ascending) and the eigenvectors of T (columns).
Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> tridiagonal_eigen(const Tridiagonal& t) {
  const auto m = static_cast<Eigen::Index>(t.alpha.size());
  Eigen::VectorXd d = Eigen::Map<const Eigen::VectorXd>(t.alpha.data(), m);
  Eigen::VectorXd e = m > 1 ? Eigen::VectorXd(Eigen::Map<const Eigen::VectorXd>(t.beta.data(), m - 1))
                            : Eigen::VectorXd(0);
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es;
  es.computeFromTridiagonal(d, e, Eigen::ComputeEigenvectors);
  KERN_CHECK(es.info() == Eigen::Success, "lanczos: the tridiagonal eigensolver did not converge (m = ", m, ")");
  return es;
}

// One Lanczos step from the last basis row; returns beta (0 on breakdown, after which the
// caller decides whether to continue with a fresh orthogonal vector). `next` gets the
// normalized new vector.
double lanczos_step(SymmetricOperator& op, const Basis& basis, Tridiagonal& t, Tensor& next) {
  const int64_t j = basis.rows() - 1;
  Tensor q = basis.row(j);
  Tensor w = apply_checked(op, q);
  const double a = dotd(q, w);
  t.alpha.push_back(a);
  w = w - q * a;
  if (j > 0) w = w - basis.row(j - 1) * t.beta[static_cast<size_t>(j - 1)];
  w = basis.orthogonalize(w);
  const double b = norm2(w);
  // Breakdown: the Krylov space is invariant (to rounding, relative to the spectrum's scale).
  double scale = 0.0;
  for (double x : t.alpha) scale = std::max(scale, std::abs(x));
  for (double x : t.beta) scale = std::max(scale, std::abs(x));
  if (b <= 1e-12 * std::max(scale, kTiny) || b < kTiny) return 0.0;
  next = w / b;
  return b;
}

}  // namespace

Tensor rademacher(int64_t n, DType dtype, Generator& gen) {
  std::vector<double> z(static_cast<size_t>(n));
  uint64_t bits = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i % 64 == 0) bits = gen.next_u64();
    z[static_cast<size_t>(i)] = (bits >> (i % 64)) & 1 ? 1.0 : -1.0;
  }
  return from_vector<double>(z, {n}).to(dtype);
}

// ---- power iteration ---------------------------------------------------------------------

EigenResult power_iteration(SymmetricOperator& op, const EigenOptions& options) {
  const int64_t n = op.size();
  KERN_CHECK(options.k >= 1 && options.k <= n, "power_iteration: k = ", options.k, " must be in [1, ", n, "]");
  KERN_CHECK(options.max_iters >= 1, "power_iteration: max_iters must be >= 1, got ", options.max_iters);
  NoGradGuard ng;
  const DType dt = op.dtype();
  const int64_t start_products = op.products();
  Generator gen(options.seed);
  EigenResult r;
  r.converged = true;
  double sigma = 0.0;  // shift (see the header)
  const double cancellation_floor = 10.0 * std::sqrt(dt == DType::Float32 ? 1.2e-7 : 2.3e-16);

  // A' v = A v - sigma v - sum_j (lambda_j - sigma) (v_j . v) v_j
  auto apply_deflated = [&](const Tensor& v) {
    Tensor w = apply_checked(op, v);
    if (sigma != 0.0) w = w - v * sigma;
    for (size_t j = 0; j < r.eigenvalues.size(); ++j)
      w = w - r.eigenvectors[j] * ((r.eigenvalues[j] - sigma) * dotd(r.eigenvectors[j], v));
    return w;
  };
  auto orthogonal_to_found = [&](Tensor v) {
    for (auto& u : r.eigenvectors) v = v - u * dotd(u, v);
    return v;
  };

  for (int64_t pair = 0; pair < options.k; ++pair) {
    Tensor start;
    if (pair == 0 && options.v0.defined()) {
      KERN_CHECK(options.v0.dim() == 1 && options.v0.size(0) == n, "power_iteration: v0 must be [", n, "], got ",
                 options.v0.shape());
      start = options.v0.detach().to(dt);
    } else {
      start = randn({n}, dt, &gen);
    }
    for (int attempt = 0; attempt < 2; ++attempt) {
      Tensor v = orthogonal_to_found(start);
      const double nv = norm2(v);
      KERN_CHECK(nv > 0.0, "power_iteration: the start vector is zero (or lies in the found eigenvectors' span)");
      v = v / nv;
      std::vector<double> hist;
      double lam = 0.0, res = std::numeric_limits<double>::infinity();
      bool done = false;
      for (int64_t it = 0; it < options.max_iters; ++it) {
        Tensor w = apply_deflated(v);
        lam = dotd(v, w);                    // Rayleigh quotient of A' at v
        hist.push_back(lam + sigma);
        const double nw = norm2(w);
        const double scale = std::max(std::abs(lam + sigma), kTiny);
        // |w - lam v|^2 = |w|^2 - lam^2 for a unit v: free, but it cancels below about
        // sqrt(eps) relative; the residual is computed explicitly only when it may matter.
        res = std::sqrt(std::max(0.0, nw * nw - lam * lam)) / scale;
        const bool last = it + 1 == options.max_iters;
        if (last || (options.tol > 0.0 && res <= 100.0 * options.tol + cancellation_floor))
          res = norm2(w - v * lam) / scale;
        if (nw < kTiny) {                    // A' v = 0: v is an eigenvector of A' for 0
          res = 0.0;
          done = true;
          break;
        }
        if (options.tol > 0.0 && res <= options.tol) {
          done = true;
          break;
        }
        if (!last) v = w / nw;
      }
      // A dominant negative eigenvalue mu is not the largest algebraic one: shift by it and
      // look again; every eigenvalue left is in [mu, -mu], so A' = A - mu I (deflated) is
      // positive semi-definite and its dominant eigenvalue is lambda_max - mu.
      if (options.which == Which::LargestAlgebraic && sigma == 0.0 && lam < 0.0 && attempt == 0) {
        sigma = lam;
        continue;
      }
      r.eigenvalues.push_back(lam + sigma);
      r.eigenvectors.push_back(v);
      r.residuals.push_back(res);
      r.history.push_back(std::move(hist));
      r.converged = r.converged && (done || options.tol <= 0.0);
      break;
    }
  }
  r.products = op.products() - start_products;
  sort_result(r, options.which);
  return r;
}

// ---- Lanczos -----------------------------------------------------------------------------

EigenResult lanczos(SymmetricOperator& op, const EigenOptions& options) {
  const int64_t n = op.size();
  KERN_CHECK(options.k >= 1 && options.k <= n, "lanczos: k = ", options.k, " must be in [1, ", n, "]");
  KERN_CHECK(std::min(options.max_iters, n) >= options.k, "lanczos: max_iters = ", options.max_iters,
             " Krylov steps cannot give k = ", options.k, " eigenpairs");
  NoGradGuard ng;
  const DType dt = op.dtype();
  const int64_t start_products = op.products();
  const int64_t m_max = std::min(options.max_iters, n);
  Generator gen(options.seed);

  Tensor q;
  if (options.v0.defined()) {
    KERN_CHECK(options.v0.dim() == 1 && options.v0.size(0) == n, "lanczos: v0 must be [", n, "], got ",
               options.v0.shape());
    q = options.v0.detach().to(dt);
    const double nq = norm2(q);
    KERN_CHECK(nq > 0.0, "lanczos: v0 is zero");
    q = q / nq;
  } else {
    q = random_unit(n, dt, gen);
  }
  Basis basis(n, dt, m_max);
  Tridiagonal t;
  basis.push(q);
  EigenResult r;
  std::vector<double> top_history;
  std::vector<int64_t> wanted;        // indices into the ascending Ritz values
  std::vector<double> res_wanted;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es;

  // Picks the k wanted Ritz pairs of the current T and their residuals beta_m |s_m,i|.
  auto evaluate = [&](double beta_m) {
    es = tridiagonal_eigen(t);
    const auto m = static_cast<int64_t>(t.alpha.size());
    std::vector<int64_t> order(static_cast<size_t>(m));
    std::iota(order.begin(), order.end(), 0);
    const auto& vals = es.eigenvalues();
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return before(vals(a), vals(b), options.which); });
    wanted.assign(order.begin(), order.begin() + std::min<int64_t>(options.k, m));
    res_wanted.clear();
    bool ok = static_cast<int64_t>(wanted.size()) == options.k;
    for (int64_t i : wanted) {
      const double res = std::abs(beta_m * es.eigenvectors()(m - 1, i)) / std::max(std::abs(vals(i)), kTiny);
      res_wanted.push_back(res);
      ok = ok && options.tol > 0.0 && res <= options.tol;
    }
    top_history.push_back(vals(order[0]));
    return ok;
  };

  bool converged = false;
  for (int64_t j = 0; j < m_max; ++j) {
    Tensor next;
    const double b = lanczos_step(op, basis, t, next);
    bool stop = j + 1 == m_max;
    if (b == 0.0 && !stop) {
      // Invariant subspace: its Ritz pairs are exact, but eigenvalues outside it (a repeated
      // eigenvalue's other copies, or directions v0 misses) are not seen yet. Continue in the
      // orthogonal complement; T gets a zero off-diagonal.
      Tensor fresh = basis.orthogonalize(random_unit(n, dt, gen));
      const double nf = norm2(fresh);
      if (nf < 1e-8) stop = true;  // the basis spans the whole space: T is similar to A
      else next = fresh / nf;
    }
    if (stop) {
      converged = evaluate(b);
      break;
    }
    // Convergence check every 5 steps (each is an m x m tridiagonal eigenproblem).
    if (b > 0.0 && j + 1 >= options.k && (j + 1) % 5 == 0 && evaluate(b)) {
      converged = true;
      break;
    }
    t.beta.push_back(b);
    basis.push(next);
  }

  const auto m = static_cast<int64_t>(t.alpha.size());
  for (size_t i = 0; i < wanted.size(); ++i) {
    std::vector<double> s(static_cast<size_t>(m));
    for (int64_t row = 0; row < m; ++row) s[static_cast<size_t>(row)] = es.eigenvectors()(row, wanted[i]);
    Tensor y = basis.combine(s);
    r.eigenvalues.push_back(es.eigenvalues()(wanted[i]));
    r.eigenvectors.push_back(y / norm2(y));
    r.residuals.push_back(res_wanted[i]);
  }
  r.history.push_back(std::move(top_history));
  r.converged = converged;
  r.products = op.products() - start_products;
  return r;
}

// ---- Hutchinson --------------------------------------------------------------------------

TraceResult hutchinson_trace(SymmetricOperator& op, const TraceOptions& options) {
  KERN_CHECK(options.samples >= 2, "hutchinson_trace: samples must be >= 2 (for a standard error), got ",
             options.samples);
  NoGradGuard ng;
  Generator own(options.seed);
  Generator& gen = options.gen ? *options.gen : own;
  const int64_t start_products = op.products();
  TraceResult r;
  double sum = 0.0, sumsq = 0.0;
  for (int64_t i = 0; i < options.samples; ++i) {
    Tensor z = rademacher(op.size(), op.dtype(), gen);
    const double s = dotd(z, apply_checked(op, z));
    r.samples.push_back(s);
    sum += s;
    sumsq += s * s;
    const auto k = static_cast<double>(i + 1);
    r.trace = sum / k;
    if (i >= 1) {
      const double var = std::max(0.0, (sumsq - k * r.trace * r.trace) / (k - 1.0));
      r.std_error = std::sqrt(var / k);
    }
    if (options.rtol > 0.0 && i + 1 >= std::max<int64_t>(2, options.min_samples) &&
        r.std_error <= options.rtol * std::abs(r.trace))
      break;
  }
  r.products = op.products() - start_products;
  return r;
}

// ---- stochastic Lanczos quadrature -------------------------------------------------------

DensityResult slq_density(SymmetricOperator& op, const DensityOptions& options) {
  KERN_CHECK(options.runs >= 1 && options.steps >= 1, "slq_density: runs (", options.runs, ") and steps (",
             options.steps, ") must be >= 1");
  KERN_CHECK(options.grid_points >= 2, "slq_density: grid_points must be >= 2, got ", options.grid_points);
  NoGradGuard ng;
  const int64_t n = op.size();
  const DType dt = op.dtype();
  const int64_t m_max = std::min(options.steps, n);
  Generator own(options.seed);
  Generator& gen = options.gen ? *options.gen : own;
  const int64_t start_products = op.products();
  DensityResult r;
  std::vector<double> run_means;

  for (int64_t run = 0; run < options.runs; ++run) {
    Tensor z = rademacher(n, dt, gen);
    Basis basis(n, dt, m_max);
    basis.push(z / std::sqrt(static_cast<double>(n)));
    Tridiagonal t;
    for (int64_t j = 0; j < m_max; ++j) {
      Tensor next;
      const double b = lanczos_step(op, basis, t, next);
      if (b == 0.0 || j + 1 == m_max) break;  // breakdown: the quadrature is exact
      t.beta.push_back(b);
      basis.push(next);
    }
    auto es = tridiagonal_eigen(t);
    const auto m = static_cast<int64_t>(t.alpha.size());
    for (int64_t i = 0; i < m; ++i) {
      const double s0 = es.eigenvectors()(0, i);
      r.nodes.push_back(es.eigenvalues()(i));
      r.weights.push_back(s0 * s0 / static_cast<double>(options.runs));
    }
    run_means.push_back(t.alpha[0]);  // e1^T T e1 = q1^T A q1 = sum_i s0i^2 theta_i
  }

  const auto runs = static_cast<double>(options.runs);
  for (double x : run_means) r.mean += x / runs;
  if (options.runs > 1) {
    double var = 0.0;
    for (double x : run_means) var += (x - r.mean) * (x - r.mean);
    r.mean_std_error = std::sqrt(var / (runs - 1.0) / runs);
  }

  const auto [lo_it, hi_it] = std::minmax_element(r.nodes.begin(), r.nodes.end());
  const double lo = *lo_it, hi = *hi_it;
  double sigma = options.sigma;
  if (sigma <= 0.0) {
    sigma = 0.01 * (hi - lo);
    if (sigma <= 0.0) sigma = std::max(1e-3 * std::abs(hi), 1e-8);
  }
  r.sigma = sigma;
  const double a = lo - options.pad * sigma, b = hi + options.pad * sigma;
  const int64_t g = options.grid_points;
  const double norm = 1.0 / (sigma * std::sqrt(2.0 * M_PI));
  r.grid.resize(static_cast<size_t>(g));
  r.density.assign(static_cast<size_t>(g), 0.0);
  for (int64_t i = 0; i < g; ++i) {
    const double x = a + (b - a) * static_cast<double>(i) / static_cast<double>(g - 1);
    r.grid[static_cast<size_t>(i)] = x;
    double d = 0.0;
    for (size_t k = 0; k < r.nodes.size(); ++k) {
      const double u = (x - r.nodes[k]) / sigma;
      d += r.weights[k] * std::exp(-0.5 * u * u);
    }
    r.density[static_cast<size_t>(i)] = d * norm;
  }
  r.products = op.products() - start_products;
  return r;
}

}  // namespace kern::tools
