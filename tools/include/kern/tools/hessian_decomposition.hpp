#pragma once
// Where the Hessian's outliers live: Papyan's class / within-class split of the generalized
// Gauss-Newton matrix of the mean cross-entropy (Papyan 2019, "Measurements of three-level
// hierarchical structure in the outliers in the spectrum of deepnet Hessians"; Papyan 2020,
// "Traces of class/cross-class structure pervade deep learning spectra"), as matrix-free
// operators, plus a spectrum routine and a count of the eigenvalues separated from the bulk.
//
// Notation. N samples x_i with labels y_i in [0, C), logits z_i = f(x_i; theta) in R^C,
// p_i = softmax(z_i), J_i = dz_i/dtheta [C, P]. The loss is L = (1/N) sum_i CE(z_i, y_i), so
//   H = G + (1/N) sum_i sum_c (dCE/dz_ic) d^2 z_ic / dtheta^2     (the Hessian; tools::Hessian)
//   G = (1/N) sum_i J_i^T A_i J_i,   A_i = diag(p_i) - p_i p_i^T  (the GGN; PSD)
// A_i = sum_c' p_ic' (e_c' - p_i)(e_c' - p_i)^T, so with the per-sample, per-class gradients
//   delta_{i,c'} = J_i^T (e_c' - p_i)      (= -grad_theta log p_ic': the gradient of the loss
//                                            the sample would have if its label were c')
//   G = (1/N) sum_i sum_c' p_ic' delta_{i,c'} delta_{i,c'}^T.
// Group the samples by their label c and take, for each of the C^2 pairs (c, c'), the
// p-weighted mean of delta over the samples of class c:
//   W_{c,c'} = sum_{i: y_i = c} p_ic',     m_{c,c'} = (1 / W_{c,c'}) sum_{i: y_i = c} p_ic' delta_{i,c'}
// (Papyan's "class means" delta_{c,c'}). The weighted second moment splits exactly into the
// means and the scatter around them (no cross term, because the weights are the ones used
// in the means):
//   G = G_means + G_within
//   G_means  = (1/N) sum_{c,c'} W_{c,c'} m_{c,c'} m_{c,c'}^T                       rank <= C(C-1)
//   G_within = (1/N) sum_i sum_c' p_ic' (delta_{i,c'} - m_{y_i,c'})(delta_{i,c'} - m_{y_i,c'})^T
// The rank bound: for every class c, sum_c' W_{c,c'} m_{c,c'} = sum_{i in c} J_i^T (p_i - p_i)
// = 0, so the C means of one class are linearly dependent: at most C(C-1) of the C^2
// directions are independent. Papyan's claim: G_means carries the outliers of H (and of G),
// G_within the bulk. m_{c,c} (the C "class" means) and m_{c,c'}, c != c' (the C(C-1)
// "cross-class" means) are both in G_means.
//
// Products. With t_i = (J_i v) [C] (one forward-mode product through the graph, as
// tools::GaussNewton computes it), s_ic' = (e_c' - p_i)^T t_i = t_ic' - p_i^T t_i and
// a_{c,c'} = m_{c,c'}^T v = (1/W_{c,c'}) sum_{i in c} p_ic' s_ic', every part is J^T U / N for
// a cotangent U [N, C] (one reverse pass):
//   G v        : U_ic = p_ic s_ic                               (= (A_i t_i)_c)
//   G_means v  : U_ic = p_ic (a_{y_i,c} - sum_c' p_ic' a_{y_i,c'})
//   G_within v : U_ic = p_ic (b_ic - sum_c' p_ic' b_ic'),  b_ic' = s_ic' - a_{y_i,c'}
// (G_within v needs no mean-vector term because sum_{i in c} p_ic' b_ic' = 0.) A pair with
// W_{c,c'} = 0 (an empty class, or probabilities that underflowed) contributes nothing.
//
//   tools::GgnDecomposition d(model, x, y);         // one forward, graph kept
//   auto h = tools::spectrum(hessian_op, {.k = 120});
//   auto g = tools::spectrum(d.class_means(), {.k = 120});
//   auto s = tools::separated_eigenvalues(g.top);   // s.count, s.gap_ratio
//   auto exact = d.class_means_eigenvalues();       // the C^2 x C^2 Gram route, no Lanczos
//
// Like tools::Hessian, the graph is built once; the operators describe the model at the
// parameters it had then. tools::Hessian and tools::GaussNewton are used as they are.
#include <kern/nn/module.hpp>
#include <kern/tensor.hpp>
#include <kern/tools/hessian.hpp>

#include <cstdint>
#include <memory>
#include <vector>

namespace kern::tools {

/// Which part of the cross-entropy GGN an operator applies (see the header comment).
enum class GgnPart { Full, ClassMeans, WithinClass };

/// Papyan's decomposition of the GGN of the mean cross-entropy, G = G_means + G_within.
/// Holds the graph of the logits; the three operators share it.
class GgnDecomposition {
 public:
  /// `logits` [N, C] computed from `params` with grad mode on; `labels` [N] int64 in [0, C).
  GgnDecomposition(const Tensor& logits, std::vector<Tensor> params, const Tensor& labels);
  /// model(x) in `options.mode`, w.r.t. the model's parameters that require grad.
  GgnDecomposition(nn::Module& model, const Tensor& x, const Tensor& labels, HessianOptions options = {});

  /// G, G_means, G_within: matrix-free, valid while this object lives.
  SymmetricOperator& ggn() { return *full_; }
  SymmetricOperator& class_means() { return *means_; }
  SymmetricOperator& within_class() { return *within_; }
  SymmetricOperator& part(GgnPart p);

  int64_t num_samples() const;
  int64_t num_classes() const;
  /// W [C * C] row-major: W[c * C + c'] = sum_{i: y_i = c} p_ic'. Sums to N.
  const std::vector<double>& weights() const;
  /// The mean cross-entropy at the build point.
  double loss() const;
  /// Fraction of the samples whose argmax logit is their label.
  double accuracy() const;

  /// S [C * C, P], row (c, c') = sqrt(W_{c,c'} / N) m_{c,c'} (zero where W = 0), so that
  /// G_means = S^T S. Costs C^2 reverse passes through the logits' graph.
  Tensor class_mean_factor();
  /// The eigenvalues of G_means exactly (up to rounding): those of the Gram matrix S S^T
  /// [C^2, C^2], descending, C^2 of them (G_means has no other nonzero eigenvalue).
  std::vector<double> class_means_eigenvalues();
  /// tr(G_means) = sum_{c,c'} (W_{c,c'}/N) |m_{c,c'}|^2 (from the factor).
  double class_means_trace();

  struct State;  // the shared graph and softmax (defined in the .cpp)

 private:
  std::shared_ptr<State> state_;
  std::unique_ptr<SymmetricOperator> full_, means_, within_;
  Tensor factor_;  // cached class_mean_factor()
  void make_operators();
};

// ---- spectra ----------------------------------------------------------------------------

struct SpectrumOptions {
  int64_t k = 120;          // top-k eigenvalues (largest algebraic)
  int64_t max_iters = 300;  // Lanczos steps at most
  double tol = 1e-3;        // Lanczos relative residual for the k pairs
  /// SLQ density (tools::slq_density) runs and steps; runs = 0 skips the density.
  int64_t density_runs = 2;
  int64_t density_steps = 60;
  /// P <= dense_limit: the operator is materialized (P products) and fully diagonalized
  /// instead (exact, every eigenvalue; `top` then has all P, `density` is not computed).
  int64_t dense_limit = 0;
  uint64_t seed = 0;
};

struct Spectrum {
  std::vector<double> top;        // descending
  std::vector<double> residuals;  // Lanczos relative residuals (0 when exact)
  bool exact = false;             // from a full eigendecomposition
  bool converged = false;         // every Lanczos pair met tol (true when exact)
  DensityResult density;          // empty when skipped
  int64_t products = 0;           // operator products, Lanczos + SLQ (or P)
  double seconds = 0.0;
};

/// Top-k Lanczos (tools::lanczos) plus an SLQ density, or a full eigendecomposition when
/// the operator is small (P <= dense_limit).
Spectrum spectrum(SymmetricOperator& op, const SpectrumOptions& options = {});

// ---- separated eigenvalues ----------------------------------------------------------------

struct SeparationOptions {
  /// Eigenvalues <= rank_rtol * lambda_1 count as zero (the numerical rank; rounding of
  /// float32 products is ~1e-7 lambda_1).
  double rank_rtol = 1e-5;
  /// When no eigenvalue is numerically zero, gaps among the last `tail_guard` eigenvalues of
  /// a top-k list are ignored: the list ends where k did, not where the spectrum did, and
  /// its last Lanczos values are the least converged.
  int64_t tail_guard = 10;
};

struct Separation {
  /// The criterion: among the numerically nonzero eigenvalues lambda_1 >= ... >= lambda_m,
  /// count = the j (1 <= j < m, and j <= size - tail_guard when m = size) maximizing the
  /// gap ratio lambda_j / lambda_{j+1}: the eigenvalues above the largest relative gap.
  int64_t count = 0;
  double gap_ratio = 0.0;     // lambda_count / lambda_{count+1}
  int64_t numerical_rank = 0; // m: eigenvalues > rank_rtol * lambda_1 among those given
  /// ratios[j - 1] = lambda_j / lambda_{j+1} for j = 1 .. m - 1.
  std::vector<double> ratios;
  /// lambda_j / lambda_{j+1}, or 0 when j is out of range (C - 1, C, C(C-1) for a verdict).
  double ratio_at(int64_t j) const;
};

/// The count of eigenvalues separated from the bulk by the largest gap ratio (see
/// Separation). `descending`: eigenvalues sorted descending (e.g. Spectrum::top).
Separation separated_eigenvalues(const std::vector<double>& descending, const SeparationOptions& options = {});

}  // namespace kern::tools
