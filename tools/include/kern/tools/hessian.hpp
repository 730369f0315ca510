#pragma once
// Loss curvature: exact Hessian-vector products, Gauss-Newton-vector products, top-k
// eigenvalues (power iteration with deflation, Lanczos with full reorthogonalization),
// Hutchinson's trace and the spectral density by stochastic Lanczos quadrature (SLQ), as
// PyHessian and hessian-eigenthings compute them.
//
// Vectors over the parameters are FLAT 1-D tensors [P] (P = total number of parameter
// elements), laid out parameter after parameter in the order given (model.parameters()
// order), row-major within each parameter, in the parameters' dtype:
//   theta = cat(p0.reshape(-1), p1.reshape(-1), ...)
//
//   nn::Sequential model(...);
//   tools::Hessian H(model, x, y, tools::mean_cross_entropy);   // one forward + gradient
//   auto top = tools::lanczos(H, {.k = 3});                     // top-3 algebraic eigenvalues
//   auto tr = tools::hutchinson_trace(H, {.samples = 100});     // tr.trace +- tr.std_error
//   auto d = tools::slq_density(H, {.runs = 10, .steps = 80});  // d.grid, d.density
//
// The gradient graph is built ONCE (create_graph) when an operator is constructed and every
// product reuses it (retain_graph); an operator therefore describes the loss at the
// parameter values it was built with. Rebuild it after the parameters change.
//
// Modes (BatchNorm, Dropout): the forward that builds the graph runs the model in an
// explicit mode (HessianOptions::mode, default Eval: running statistics, a deterministic
// function of the parameters). Mode::Train uses batch statistics (the loss as it is trained);
// BatchNorm's running statistics are saved before and restored after that forward, so
// measuring never changes the model. A Dropout mask drawn in Train mode is fixed for the
// operator's lifetime (the graph is reused). The model's own train/eval flags are restored.
//
// Which eigenvalues: Which::LargestAlgebraic (default; the "sharpness": the largest
// eigenvalues with sign, lambda_1 >= lambda_2 >= ...) or Which::LargestMagnitude (the
// largest |lambda|, what plain power iteration converges to; results keep their sign). A
// non-convex loss has negative Hessian eigenvalues, so the two differ in general.
#include <kern/generator.hpp>
#include <kern/nn/module.hpp>
#include <kern/tensor.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace kern::tools {

// ---- flat parameter vectors -------------------------------------------------------------

/// Total number of elements of `params`.
int64_t numel(const std::vector<Tensor>& params);
/// cat(t.reshape(-1) for t in ts) -> [P], detached.
Tensor flatten_vectors(const std::vector<Tensor>& ts);
/// Views of `flat` [P] shaped like each of `like` (the inverse of flatten_vectors).
std::vector<Tensor> unflatten_vector(const Tensor& flat, const std::vector<Tensor>& like);

// ---- losses usable as criteria ----------------------------------------------------------

/// A loss of the model output and the target: (output [N, O], target) -> scalar.
using Criterion = std::function<Tensor(const Tensor& output, const Tensor& target)>;
/// Mean cross-entropy; target: [N] int64 class labels.
Tensor mean_cross_entropy(const Tensor& output, const Tensor& target);
/// 0.5 * mean_n sum_o (output - target)^2 (the "MSE" of Cohen et al. and of the fixtures);
/// target: [N, O] float, or [N] int64 labels (turned into one-hot rows).
Tensor half_mean_squared_error(const Tensor& output, const Tensor& target);

// ---- operators --------------------------------------------------------------------------

/// Which model mode the graph-building forward uses (see the header comment).
enum class Mode { Eval, Train };

struct HessianOptions {
  Mode mode = Mode::Eval;
};

/// Sets every module of `model` to the requested mode and snapshots its buffers; the
/// destructor restores each module's mode and the buffers' values (BatchNorm running stats).
/// Only buffers written in between (their version changed) are copied back, so a graph that
/// read an untouched buffer (eval-mode BatchNorm) stays valid for backward.
class ModeGuard {
 public:
  ModeGuard(nn::Module& model, Mode mode);
  ~ModeGuard();
  ModeGuard(const ModeGuard&) = delete;
  ModeGuard& operator=(const ModeGuard&) = delete;

 private:
  std::vector<std::pair<std::shared_ptr<nn::Module>, bool>> modes_;
  struct SavedBuffer {
    Tensor live, saved;
    uint64_t version;  // live.version() when saved
  };
  std::vector<SavedBuffer> buffers_;
  nn::Module* root_;
  bool root_training_;
};

/// A symmetric linear map on flat parameter vectors [P]: what the eigen-solvers, the trace
/// and the density estimators work on.
class SymmetricOperator {
 public:
  virtual ~SymmetricOperator() = default;
  /// P, the length of the vectors.
  virtual int64_t size() const = 0;
  virtual DType dtype() const = 0;
  /// A v, v: [P] -> [P] (no graph is recorded).
  virtual Tensor apply(const Tensor& v) = 0;
  /// How many products apply() has computed so far.
  int64_t products() const { return products_; }

 protected:
  int64_t products_ = 0;
};

/// An explicit symmetric matrix [P, P] (analytic tests, small problems).
class MatrixOperator : public SymmetricOperator {
 public:
  explicit MatrixOperator(Tensor matrix);
  int64_t size() const override { return m_.size(0); }
  DType dtype() const override { return m_.dtype(); }
  Tensor apply(const Tensor& v) override;

 private:
  Tensor m_;
};

/// D^(1/2) A D^(1/2) for a diagonal D > 0 given as d [P]. With D the per-parameter
/// learning-rate multipliers (muP's, or any optimizer's param groups), gradient descent
/// theta <- theta - lr D grad L is stable near a minimum iff the top eigenvalue of
/// D^(1/2) H D^(1/2) is below 2 / lr: the "preconditioned sharpness" to compare with 2/lr.
/// `base` must outlive this operator.
class ScaledOperator : public SymmetricOperator {
 public:
  ScaledOperator(SymmetricOperator& base, const Tensor& d);
  int64_t size() const override { return base_.size(); }
  DType dtype() const override { return base_.dtype(); }
  Tensor apply(const Tensor& v) override;

 private:
  SymmetricOperator& base_;
  Tensor sqrt_d_;
};

/// The Hessian of a scalar loss w.r.t. a list of parameter tensors (leaves that require
/// grad), applied by double backward: H v = d/dtheta <grad L(theta), v>.
class Hessian : public SymmetricOperator {
 public:
  /// `loss`: a scalar computed from `params` with grad mode on (its graph reaches them).
  /// Computes grad L once with create_graph. Parameters the loss does not use get zero rows.
  Hessian(const Tensor& loss, std::vector<Tensor> params);
  /// criterion(model(x), y) w.r.t. the model's parameters that require grad, the forward run
  /// in `options.mode`.
  Hessian(nn::Module& model, const Tensor& x, const Tensor& y, const Criterion& criterion,
          HessianOptions options = {});

  int64_t size() const override { return size_; }
  DType dtype() const override { return dtype_; }
  /// H v for a flat v [P] -> [P].
  Tensor apply(const Tensor& v) override;
  /// H v per parameter block: v[i] shaped like params[i] -> same shapes.
  std::vector<Tensor> apply_blocks(const std::vector<Tensor>& v);

  /// The loss value (detached, 0-dim).
  Tensor loss() const { return loss_; }
  /// grad L per parameter (detached).
  std::vector<Tensor> gradient() const;
  const std::vector<Tensor>& params() const { return params_; }

 private:
  void build(const Tensor& loss);
  std::vector<Tensor> params_;
  std::vector<Tensor> grads_;  // with graph (create_graph); undefined graph for unused params
  Tensor loss_;
  int64_t size_ = 0;
  DType dtype_ = DType::Float32;
};

/// The generalized Gauss-Newton matrix G = J^T H_L J of a loss L(f(theta)): J = df/dtheta
/// (f the model output), H_L = d^2 L / df^2. G is positive semi-definite when L is convex
/// in f (MSE, cross-entropy). G v costs a J v (the double-vjp jvp: two reverse passes
/// through a graph built once), an H_L product and a J^T product.
class GaussNewton : public SymmetricOperator {
 public:
  /// `output` computed from `params` with grad mode on; `loss_of_output` maps an output
  /// tensor to the scalar loss (closing over the targets).
  GaussNewton(const Tensor& output, std::vector<Tensor> params,
              const std::function<Tensor(const Tensor&)>& loss_of_output);
  GaussNewton(nn::Module& model, const Tensor& x, const Tensor& y, const Criterion& criterion,
              HessianOptions options = {});

  int64_t size() const override { return size_; }
  DType dtype() const override { return dtype_; }
  Tensor apply(const Tensor& v) override;
  /// The loss value (detached, 0-dim).
  Tensor loss() const { return loss_; }

 private:
  void build(const Tensor& output, const std::function<Tensor(const Tensor&)>& loss_of_output);
  std::vector<Tensor> params_;
  Tensor output_;          // f, graph to the params
  Tensor dummy_;           // u, a leaf shaped like f
  std::vector<Tensor> jt_u_;  // J^T u, with graph (linear in u)
  Tensor out_leaf_;        // f detached, requires grad
  Tensor loss_grad_;       // dL/df at out_leaf_, with graph
  Tensor loss_;
  int64_t size_ = 0;
  DType dtype_ = DType::Float32;
};

// ---- eigenvalues ------------------------------------------------------------------------

enum class Which { LargestAlgebraic, LargestMagnitude };

struct EigenOptions {
  int64_t k = 1;              // how many eigenpairs
  Which which = Which::LargestAlgebraic;
  /// power_iteration: maximum products per eigenpair. lanczos: maximum Krylov dimension
  /// (capped at P).
  int64_t max_iters = 1000;
  /// Stop when every wanted pair has relative residual ||A v - lambda v|| / |lambda| <= tol
  /// (the eigenvalue's own error is then about tol^2 |lambda|^2 / gap). tol <= 0 runs
  /// exactly max_iters iterations (power iteration, benchmarks).
  double tol = 1e-6;
  uint64_t seed = 0;          // the random start vector (when v0 is undefined)
  Tensor v0;                  // optional start vector [P] (normalized inside)
};

struct EigenResult {
  /// Sorted: descending (LargestAlgebraic) or by descending |lambda| (LargestMagnitude).
  std::vector<double> eigenvalues;
  std::vector<Tensor> eigenvectors;  // unit [P] each, same order
  std::vector<double> residuals;     // ||A v - lambda v|| / max(|lambda|, tiny) per pair
  /// power_iteration: the Rayleigh quotient v_i^T A v_i at every iteration, per pair (the
  /// first pair's history is PyTorch's classic 20-iteration sharpness loop).
  /// lanczos: one entry, the top Ritz value at each convergence check (every 5 steps).
  std::vector<std::vector<double>> history;
  int64_t products = 0;   // operator applications
  bool converged = false; // every pair met tol
};

/// Power iteration with deflation. Each pair: v <- A' v / ||A' v|| from a start vector,
/// Rayleigh quotient lambda = v^T A' v, where A' = A - sigma I - sum_found (lambda_j -
/// sigma) v_j v_j^T. sigma = 0 unless LargestAlgebraic meets a dominant negative eigenvalue
/// mu: then sigma = mu makes A' positive semi-definite so that its dominant eigenvalue is the
/// largest algebraic one left (convergence rate (lambda_2 - sigma) / (lambda_1 - sigma)).
EigenResult power_iteration(SymmetricOperator& op, const EigenOptions& options = {});

/// Lanczos with full reorthogonalization (classical Gram-Schmidt, twice), Ritz pairs from
/// the tridiagonal matrix (Eigen's computeFromTridiagonal); stops when the k wanted Ritz
/// pairs' residuals beta_m |s_m| / |theta| are below tol (checked every 5 steps), or at
/// max_iters (or P) steps. Keeps all
/// Lanczos vectors: memory max_iters * P elements.
EigenResult lanczos(SymmetricOperator& op, const EigenOptions& options = {});

// ---- trace and density ------------------------------------------------------------------

struct TraceOptions {
  int64_t samples = 100;      // maximum number of Rademacher probes
  int64_t min_samples = 10;
  double rtol = 0.0;          // stop early when std_error <= rtol * |trace| (0: never)
  uint64_t seed = 0;
  Generator* gen = nullptr;   // draws the probes; a Generator(seed) when null
};

struct TraceResult {
  double trace = 0.0;          // mean of z^T A z over the probes
  double std_error = 0.0;      // sample std / sqrt(n)
  std::vector<double> samples; // z^T A z per probe
  int64_t products = 0;
};

/// Hutchinson's estimator: tr(A) = E[z^T A z] for z with i.i.d. Rademacher (+-1) entries.
TraceResult hutchinson_trace(SymmetricOperator& op, const TraceOptions& options = {});

/// A Rademacher vector [P] (entries +-1 with probability 1/2) from `gen`.
Tensor rademacher(int64_t n, DType dtype, Generator& gen);

struct DensityOptions {
  int64_t runs = 10;           // independent starting vectors (Rademacher, normalized)
  int64_t steps = 80;          // Lanczos steps per run (capped at P)
  int64_t grid_points = 1000;
  /// Gaussian smoothing width; <= 0 means 1% of the spectral range of the nodes.
  double sigma = 0.0;
  /// The grid spans [min node - pad * sigma, max node + pad * sigma].
  double pad = 8.0;
  uint64_t seed = 0;
  Generator* gen = nullptr;
};

struct DensityResult {
  /// Quadrature nodes (Ritz values) and weights (squared first components of the Ritz
  /// vectors / runs) of all runs: the density estimate is sum_k weights[k] delta(t -
  /// nodes[k]); the weights sum to 1.
  std::vector<double> nodes;
  std::vector<double> weights;
  std::vector<double> grid;     // evaluation points
  std::vector<double> density;  // sum_k w_k N(t; node_k, sigma^2) on the grid
  double sigma = 0.0;
  /// Mean of the spectral measure, sum_k w_k node_k = (1/runs) sum_r q_r^T A q_r: an
  /// estimate of tr(A) / P, with the standard error over runs.
  double mean = 0.0;
  double mean_std_error = 0.0;
  int64_t products = 0;
};

/// Spectral density by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani et
/// al. 2019; PyHessian's density). Lanczos with full reorthogonalization per run.
DensityResult slq_density(SymmetricOperator& op, const DensityOptions& options = {});

}  // namespace kern::tools
