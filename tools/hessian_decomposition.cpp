// Papyan's decomposition of the cross-entropy GGN (G = G_means + G_within) as matrix-free
// operators, the spectrum routine and the separated-eigenvalue count. Formulas: the header.
#include <kern/ops.hpp>
#include <kern/tools/hessian_decomposition.hpp>

#include <Eigen/Eigenvalues>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cmath>
#include <limits>

namespace kern::tools {

// ---- shared state ------------------------------------------------------------------------

struct GgnDecomposition::State {
  std::vector<Tensor> params;
  Tensor logits;               // z [N, C], graph to the params
  Tensor dummy;                // u, a leaf shaped like z
  std::vector<Tensor> jt_u;    // J^T u with graph (linear in u): d/du <J^T u, v> = J v
  std::vector<double> p;       // softmax(z) [N * C], row-major
  std::vector<int64_t> y;      // labels [N]
  std::vector<double> W;       // [C * C]
  int64_t N = 0, C = 0, P = 0;
  DType dtype = DType::Float32;
  double loss = 0.0, accuracy = 0.0;

  // J v -> [N * C] doubles (zeros when no parameter reaches the logits).
  std::vector<double> jvp(const Tensor& flat) {
    auto blocks = unflatten_vector(flat, params);
    std::vector<Tensor> gs, ts;
    for (size_t i = 0; i < blocks.size(); ++i)
      if (jt_u[i].requires_grad()) {
        gs.push_back(jt_u[i]);
        ts.push_back(blocks[i]);
      }
    if (gs.empty()) return std::vector<double>(static_cast<size_t>(N * C), 0.0);
    Tensor jv = grad(gs, {dummy}, ts, {.retain_graph = true, .allow_unused = true})[0];  // [N, C]
    return jv.to(DType::Float64).contiguous().to_vector<double>();
  }

  // J^T U * scale for U [N * C] doubles -> [P].
  Tensor vjp(const std::vector<double>& U, double scale) {
    Tensor u = from_vector(U, Shape{N, C}).to(dtype);
    return flatten_vectors(grad({logits}, params, {u}, {.retain_graph = true, .allow_unused = true})) * scale;
  }

  // a_{c,c'} = m_{c,c'}^T v = (1/W_{c,c'}) sum_{i in c} p_ic' s_ic'  (0 where W = 0).
  std::vector<double> mean_projections(const std::vector<double>& s) const {
    std::vector<double> a(static_cast<size_t>(C * C), 0.0);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < C; ++c) a[y[i] * C + c] += p[i * C + c] * s[i * C + c];
    for (int64_t k = 0; k < C * C; ++k) a[k] = W[k] > 0.0 ? a[k] / W[k] : 0.0;
    return a;
  }

  // The cotangent U of `part` for a flat v (header comment), then J^T U / N.
  Tensor apply(GgnPart part, const Tensor& v) {
    std::vector<double> s = jvp(v);  // t, turned into s in place
    for (int64_t i = 0; i < N; ++i) {
      double pt = 0.0;
      for (int64_t c = 0; c < C; ++c) pt += p[i * C + c] * s[i * C + c];
      for (int64_t c = 0; c < C; ++c) s[i * C + c] -= pt;
    }
    std::vector<double> U(s.size(), 0.0);
    if (part == GgnPart::Full) {
      for (size_t k = 0; k < s.size(); ++k) U[k] = p[k] * s[k];
    } else {
      const std::vector<double> a = mean_projections(s);
      for (int64_t i = 0; i < N; ++i) {
        const double* pi = &p[i * C];
        const double* ai = &a[y[i] * C];
        double b[64];  // C <= 64 is checked at construction
        for (int64_t c = 0; c < C; ++c) b[c] = part == GgnPart::ClassMeans ? ai[c] : s[i * C + c] - ai[c];
        double pb = 0.0;
        for (int64_t c = 0; c < C; ++c) pb += pi[c] * b[c];
        for (int64_t c = 0; c < C; ++c) U[i * C + c] = pi[c] * (b[c] - pb);
      }
    }
    return vjp(U, 1.0 / static_cast<double>(N));
  }
};

namespace {

class PartOperator : public SymmetricOperator {
 public:
  PartOperator(std::shared_ptr<GgnDecomposition::State> s, GgnPart part) : s_(std::move(s)), part_(part) {}
  int64_t size() const override { return s_->P; }
  DType dtype() const override { return s_->dtype; }
  Tensor apply(const Tensor& v) override {
    static const char* names[] = {"GgnDecomposition::ggn().apply", "GgnDecomposition::class_means().apply",
                                  "GgnDecomposition::within_class().apply"};
    const char* who = names[static_cast<int>(part_)];
    KERN_CHECK(v.defined() && v.dim() == 1 && v.size(0) == s_->P, who, ": expected a flat vector [", s_->P, "], got ",
               v.defined() ? fmt::format("{} {}", v.dtype(), v.shape()) : std::string("undefined"));
    KERN_CHECK(v.dtype() == s_->dtype, who, ": vector is ", v.dtype(), ", the parameters are ", s_->dtype);
    ++products_;
    NoGradGuard ng;
    return s_->apply(part_, v.detach());
  }

 private:
  std::shared_ptr<GgnDecomposition::State> s_;
  GgnPart part_;
};

std::vector<Tensor> trainable(const nn::Module& model) {
  std::vector<Tensor> ps;
  for (auto& p : model.parameters())
    if (p.requires_grad()) ps.push_back(p);
  return ps;
}

}  // namespace

// ---- GgnDecomposition ----------------------------------------------------------------------

GgnDecomposition::GgnDecomposition(const Tensor& logits, std::vector<Tensor> params, const Tensor& labels)
    : state_(std::make_shared<State>()) {
  State& s = *state_;
  s.params = std::move(params);
  KERN_CHECK(!s.params.empty(), "GgnDecomposition: no parameters given");
  s.dtype = s.params[0].dtype();
  for (size_t i = 0; i < s.params.size(); ++i) {
    const Tensor& p = s.params[i];
    KERN_CHECK(p.defined() && is_floating(p.dtype()) && p.requires_grad(), "GgnDecomposition: parameter ", i,
               " must be a defined floating tensor that requires grad");
    KERN_CHECK(p.dtype() == s.dtype, "GgnDecomposition: parameters must share one dtype; parameter 0 is ", s.dtype,
               ", parameter ", i, " is ", p.dtype());
  }
  KERN_CHECK(logits.defined() && logits.dim() == 2 && logits.size(0) > 0 && logits.size(1) >= 2,
             "GgnDecomposition: logits must be [N, C] with N >= 1 and C >= 2, got ",
             logits.defined() ? logits.shape() : Shape{});
  KERN_CHECK(logits.size(1) <= 64, "GgnDecomposition: at most 64 classes, got logits ", logits.shape());
  KERN_CHECK(logits.dtype() == s.dtype, "GgnDecomposition: logits are ", logits.dtype(), ", the parameters are ",
             s.dtype);
  KERN_CHECK(logits.requires_grad(),
             "GgnDecomposition: the logits have no graph to the parameters (computed under NoGradGuard?)");
  KERN_CHECK(labels.defined() && labels.dtype() == DType::Int64 && labels.dim() == 1 &&
                 labels.size(0) == logits.size(0),
             "GgnDecomposition: labels must be int64 [", logits.size(0), "] for logits ", logits.shape(), ", got ",
             labels.defined() ? fmt::format("{} {}", labels.dtype(), labels.shape()) : std::string("undefined"));
  s.N = logits.size(0);
  s.C = logits.size(1);
  s.P = numel(s.params);
  s.y = labels.contiguous().to_vector<int64_t>();
  for (int64_t i = 0; i < s.N; ++i)
    KERN_CHECK(s.y[i] >= 0 && s.y[i] < s.C, "GgnDecomposition: label ", s.y[i], " of sample ", i,
               " is outside [0, ", s.C, ") for logits ", logits.shape());
  {
    NoGradGuard ng;
    Tensor z = logits.detach().to(DType::Float64);
    s.p = softmax(z, 1).contiguous().to_vector<double>();
    s.loss = cross_entropy(z, labels).item();
    auto pred = argmax(z, 1).to_vector<int64_t>();
    int64_t right = 0;
    for (int64_t i = 0; i < s.N; ++i) right += pred[i] == s.y[i];
    s.accuracy = static_cast<double>(right) / static_cast<double>(s.N);
  }
  s.W.assign(static_cast<size_t>(s.C * s.C), 0.0);
  for (int64_t i = 0; i < s.N; ++i)
    for (int64_t c = 0; c < s.C; ++c) s.W[s.y[i] * s.C + c] += s.p[i * s.C + c];
  EnableGradGuard eg;
  s.logits = logits;
  s.dummy = zeros_like(logits.detach());
  s.dummy.requires_grad_(true);
  s.jt_u = grad({s.logits}, s.params, {s.dummy}, {.retain_graph = true, .create_graph = true, .allow_unused = true});
  make_operators();
}

GgnDecomposition::GgnDecomposition(nn::Module& model, const Tensor& x, const Tensor& labels, HessianOptions options)
    : GgnDecomposition(
          [&] {
            // ModeGuard restores the modes and any buffer the forward wrote (BatchNorm).
            ModeGuard guard(model, options.mode);
            EnableGradGuard eg;
            return model(x);
          }(),
          trainable(model), labels) {}

void GgnDecomposition::make_operators() {
  full_ = std::make_unique<PartOperator>(state_, GgnPart::Full);
  means_ = std::make_unique<PartOperator>(state_, GgnPart::ClassMeans);
  within_ = std::make_unique<PartOperator>(state_, GgnPart::WithinClass);
}

SymmetricOperator& GgnDecomposition::part(GgnPart p) {
  switch (p) {
    case GgnPart::Full: return *full_;
    case GgnPart::ClassMeans: return *means_;
    case GgnPart::WithinClass: return *within_;
  }
  KERN_CHECK(false, "GgnDecomposition::part: unknown part ", static_cast<int>(p));
  return *full_;
}

int64_t GgnDecomposition::num_samples() const { return state_->N; }
int64_t GgnDecomposition::num_classes() const { return state_->C; }
const std::vector<double>& GgnDecomposition::weights() const { return state_->W; }
double GgnDecomposition::loss() const { return state_->loss; }
double GgnDecomposition::accuracy() const { return state_->accuracy; }

Tensor GgnDecomposition::class_mean_factor() {
  if (factor_.defined()) return factor_;
  State& s = *state_;
  NoGradGuard ng;
  std::vector<Tensor> rows;
  rows.reserve(static_cast<size_t>(s.C * s.C));
  std::vector<double> u(static_cast<size_t>(s.N * s.C));
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t c2 = 0; c2 < s.C; ++c2) {
      const double w = s.W[c * s.C + c2];
      if (!(w > 0.0)) {
        rows.push_back(zeros({s.P}, s.dtype));
        continue;
      }
      // Row (c, c') = (1 / sqrt(N W)) J^T u, u_i = [y_i = c] p_ic' (e_c' - p_i): since
      // sum_{i in c} p_ic' delta_{i,c'} = W m, this is sqrt(W / N) m.
      std::fill(u.begin(), u.end(), 0.0);
      for (int64_t i = 0; i < s.N; ++i) {
        if (s.y[i] != c) continue;
        const double pc2 = s.p[i * s.C + c2];
        for (int64_t k = 0; k < s.C; ++k) u[i * s.C + k] = pc2 * ((k == c2 ? 1.0 : 0.0) - s.p[i * s.C + k]);
      }
      rows.push_back(s.vjp(u, 1.0 / std::sqrt(static_cast<double>(s.N) * w)));
    }
  factor_ = stack(rows, 0);
  return factor_;
}

std::vector<double> GgnDecomposition::class_means_eigenvalues() {
  NoGradGuard ng;
  Tensor S = class_mean_factor().to(DType::Float64);
  const int64_t K = S.size(0);
  auto g = matmul(S, S.t()).contiguous().to_vector<double>();  // [C^2, C^2] Gram
  Eigen::MatrixXd m(K, K);
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) m(i, j) = 0.5 * (g[i * K + j] + g[j * K + i]);
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(m, Eigen::EigenvaluesOnly);
  std::vector<double> e(es.eigenvalues().data(), es.eigenvalues().data() + K);
  std::sort(e.begin(), e.end(), std::greater<>());
  return e;
}

double GgnDecomposition::class_means_trace() {
  NoGradGuard ng;
  Tensor S = class_mean_factor().to(DType::Float64);
  return sum(S * S).item();
}

// ---- spectrum ------------------------------------------------------------------------------

Spectrum spectrum(SymmetricOperator& op, const SpectrumOptions& options) {
  KERN_CHECK(options.k >= 1, "spectrum: k must be >= 1, got ", options.k);
  KERN_CHECK(options.max_iters >= options.k, "spectrum: max_iters (", options.max_iters, ") must be >= k (",
             options.k, ")");
  KERN_CHECK(options.density_runs >= 0 && (options.density_runs == 0 || options.density_steps >= 2),
             "spectrum: density_runs must be >= 0 and density_steps >= 2, got ", options.density_runs, " and ",
             options.density_steps);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t before = op.products();
  Spectrum r;
  const int64_t P = op.size();
  if (P <= options.dense_limit) {
    // Column j = A e_j, then Eigen's symmetric solver on the symmetrized matrix.
    NoGradGuard ng;
    Eigen::MatrixXd m(P, P);
    for (int64_t j = 0; j < P; ++j) {
      Tensor e = zeros({P}, op.dtype());
      e.narrow(0, j, 1).fill_(1.0);
      auto col = op.apply(e).to(DType::Float64).contiguous().to_vector<double>();
      for (int64_t i = 0; i < P; ++i) m(i, j) = col[i];
    }
    Eigen::MatrixXd sym = 0.5 * (m + m.transpose());
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(sym, Eigen::EigenvaluesOnly);
    r.top.assign(es.eigenvalues().data(), es.eigenvalues().data() + P);
    std::sort(r.top.begin(), r.top.end(), std::greater<>());
    r.residuals.assign(r.top.size(), 0.0);
    r.exact = r.converged = true;
  } else {
    auto e = lanczos(op, {.k = std::min(options.k, P),
                          .max_iters = options.max_iters,
                          .tol = options.tol,
                          .seed = options.seed});
    r.top = e.eigenvalues;
    r.residuals = e.residuals;
    r.converged = e.converged;
    if (options.density_runs > 0)
      r.density = slq_density(op, {.runs = options.density_runs, .steps = options.density_steps,
                                   .seed = options.seed + 1});
  }
  r.products = op.products() - before;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// ---- separated eigenvalues -----------------------------------------------------------------

double Separation::ratio_at(int64_t j) const {
  return j >= 1 && j <= static_cast<int64_t>(ratios.size()) ? ratios[j - 1] : 0.0;
}

Separation separated_eigenvalues(const std::vector<double>& descending, const SeparationOptions& options) {
  KERN_CHECK(options.rank_rtol >= 0.0 && options.tail_guard >= 0,
             "separated_eigenvalues: rank_rtol and tail_guard must be >= 0, got ", options.rank_rtol, " and ",
             options.tail_guard);
  for (size_t i = 1; i < descending.size(); ++i)
    KERN_CHECK(descending[i] <= descending[i - 1], "separated_eigenvalues: eigenvalues must be sorted descending (",
               descending[i - 1], " then ", descending[i], " at ", i, ")");
  Separation s;
  if (descending.empty() || !(descending[0] > 0.0)) return s;
  const double floor = options.rank_rtol * descending[0];
  const auto n = static_cast<int64_t>(descending.size());
  int64_t m = 0;
  while (m < n && descending[m] > floor) ++m;
  s.numerical_rank = m;
  for (int64_t j = 1; j < m; ++j) s.ratios.push_back(descending[j - 1] / descending[j]);
  // Largest j allowed: below the numerical rank; away from the tail of a truncated list.
  const int64_t last = m < n ? m - 1 : std::min(m - 1, n - options.tail_guard);
  for (int64_t j = 1; j <= last; ++j)
    if (s.ratios[j - 1] > s.gap_ratio) {
      s.gap_ratio = s.ratios[j - 1];
      s.count = j;
    }
  return s;
}

}  // namespace kern::tools
