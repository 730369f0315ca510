#pragma once
// Empirical neural tangent kernel (NTK) of a module, and kernel metrics.
//
// For a model f(x; theta) with outputs f(x) in R^O (the model's output [N, ...] is flattened
// to [N, O]) and parameters theta (all parameters that require grad, or a chosen subset):
//
//   K[(n, o), (m, p)] = sum_theta  d f_o(x_n) / d theta  *  d f_p(x'_m) / d theta
//
// with row/column index n*O + o (sample-major, like neural-tangents and functorch's recipe).
//
// Three methods, which agree to rounding (tests check 1e-10 in float64):
//   - Contraction: the per-sample Jacobian J [N*O, P] (one vjp per (sample, output): each
//     sample is run on its own, so samples never mix), then K = J1 J2^T as one GEMM.
//     Memory: N*O*P. The reference method.
//   - Vector: matrix-free NTK-vector products K v = J1 (J2^T v): a vjp, then a jvp by the
//     double-vjp identity (the create_graph graph of J^T u is built once and reused), so a
//     product costs two backward passes and no [N*O]^2 or N*O*P memory. NtkOperator exposes
//     it for iterative eigensolvers; the dense kernel is built column by column.
//   - Structured: per-layer closed forms that never materialize the Jacobian. For a layer
//     y = m_w W a + m_b b applied at S positions (S = 1 for Linear on [N, in]; S = H_out*W_out
//     for Conv2d, `a` = the input patch at each position; a module called several times
//     contributes all its calls as more positions; m_w, m_b are kern::param forward
//     multipliers, 1 by default), with A_n [S, F] (inputs/patches scaled by m_w, plus a
//     column m_b for the bias) and D_{n,o} = d f_o(x_n) / d y_n [S, out]:
//         K_layer[(n,o),(m,p)] = sum_{s,t} <D_{n,o,s}, D_{m,p,t}> <A_{n,s}, A_{m,t}>
//     which for S = 1 is the dense-layer term (A A^T) (x) (D D^T) (Hadamard product over
//     sample pairs). A is captured by forward hooks, D by one backward per output o for
//     the whole batch (samples are independent; the O passes run concurrently on the
//     retained graph, so custom backward functions must be safe to call concurrently, as
//     kern's are). Per layer, the cheaper (by flop count) of two evaluations is used:
//     per-sample weight gradients G_{n,o} = D_{n,o}^T A_n (one layer, and a chunk of its
//     features, at a time; then a symmetric blocked G1 G2^T) or the position-pair form above
//     (NtkStructuredForm forces one). Grouped convolutions go group by group, except
//     depthwise ones (one channel per group), which go through Conv2d's grad-sample rule
//     below when their G fits grad_sample_budget (reported as "conv2d"). Any other
//     module with a per-sample gradient rule (kern/nn/grad_sample.hpp: LayerNorm,
//     LayerNorm2d, BatchNorm2d in eval mode, and the zoo's layer scales, filter banks, ...)
//     is a layer too: during backward pass o its rule gives G_{., o} [N, P_layer], then
//     K += G1 G2^T (GEMMs; G is rebuilt in feature chunks when it would exceed
//     grad_sample_budget). Parameters of modules without either (custom layers,
//     subclasses, modules called outside operator()) fall back to Contraction for exactly
//     those parameters. A check
//     (on by default, one extra forward/backward of sample 0) compares each layer's
//     closed-form gradient of sum_o f_o(x_0) with autograd's; a layer whose parameters are
//     also used elsewhere (tied weights) fails it and falls back too. NtkInfo reports which
//     layer took which rule ("linear", "conv2d", "grad_sample:<type>", "contraction"), and
//     the time of each phase.
//
// Batch-dependent layers: a BatchNorm2d that uses batch statistics (training mode, or
// track_running_stats off) makes one sample's output depend on the others, and an active
// Dropout makes f random; the per-sample NTK is then undefined and every entry point throws
// kern::Error naming the module and asking for model.eval().
//
// The kernel has the parameters' dtype. Computations run without recording a graph.
#include <kern/nn/module.hpp>
#include <kern/tensor.hpp>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kern::tools {

enum class NtkMethod {
  Auto,         // Structured (with its per-parameter Contraction fallback)
  Contraction,  // per-sample Jacobian, then a GEMM
  Vector,       // matrix-free K v products, dense kernel column by column
  Structured,   // per-layer closed forms for Linear / Conv2d
};

/// Structured method: how a Linear/Conv2d layer's kernel is evaluated (see above). Auto
/// picks the cheaper by flop count; the others force one (for tests and tuning). Layers with
/// S == 1 position always use the dense form (A A^T) (x) (D D^T).
enum class NtkStructuredForm { Auto, PerSample, Pairwise };

/// The output-traced kernel K_tr[n, m] = reduce_o K[(n,o),(m,o)]: Mean (neural-tangents'
/// `trace_axes` convention, the default) or Sum.
enum class NtkTrace { Mean, Sum };

struct NtkOptions {
  NtkOptions& method(NtkMethod v) { method_ = v; return *this; }
  NtkOptions& trace(NtkTrace v) { trace_ = v; return *this; }
  /// The parameters theta (a subset of the module's). Default: every parameter that
  /// requires grad.
  NtkOptions& params(std::vector<Tensor> v) { params_ = std::move(v); return *this; }
  /// Structured: verify each layer's structure against autograd (see above). Default on.
  NtkOptions& check_structure(bool v) { check_structure_ = v; return *this; }
  NtkOptions& structured_form(NtkStructuredForm v) { form_ = v; return *this; }
  /// Structured: favour memory over speed (build per-sample gradients during the backward
  /// passes whenever they are smaller than the output gradients). Default off (on
  /// automatically for layers whose output gradients would exceed 2^22 elements).
  NtkOptions& low_memory(bool v) { low_memory_ = v; return *this; }
  /// Structured: bytes a grad-sample layer's per-sample gradients G [N, O, P_layer] (both
  /// sides) may take; above it G is built in feature chunks of that size, re-running the
  /// layer's rule per chunk. Default 256 MiB.
  NtkOptions& grad_sample_budget(int64_t bytes) { grad_sample_budget_ = bytes; return *this; }
  /// Structured: use the grad-sample rules of modules other than Linear/Conv2d (default on;
  /// off: their parameters go to Contraction, as before the rules existed).
  NtkOptions& grad_sample_rules(bool v) { grad_sample_rules_ = v; return *this; }
  NtkMethod method() const { return method_; }
  NtkTrace trace() const { return trace_; }
  const std::vector<Tensor>& params() const { return params_; }
  bool check_structure() const { return check_structure_; }
  NtkStructuredForm structured_form() const { return form_; }
  bool low_memory() const { return low_memory_; }
  int64_t grad_sample_budget() const { return grad_sample_budget_; }
  bool grad_sample_rules() const { return grad_sample_rules_; }

 private:
  NtkMethod method_ = NtkMethod::Auto;
  NtkTrace trace_ = NtkTrace::Mean;
  std::vector<Tensor> params_;
  bool check_structure_ = true;
  NtkStructuredForm form_ = NtkStructuredForm::Auto;
  bool low_memory_ = false;
  int64_t grad_sample_budget_ = int64_t(1) << 28;
  bool grad_sample_rules_ = true;
};

/// Structured: how one module's parameters in theta were handled.
struct NtkLayerInfo {
  std::string layer;  // module path ("stages.0.blocks.0.norm"; "<root>" for the model)
  /// "linear" / "conv2d" (closed forms), "grad_sample:<Module::name()>" (its per-sample
  /// gradient rule), or "contraction" (Jacobian contraction for these parameters).
  std::string rule;
  std::vector<std::string> params;  // dotted parameter names
};

/// What a computation did (optional out-parameter).
struct NtkInfo {
  NtkMethod method = NtkMethod::Auto;  // the method that ran (never Auto)
  int64_t num_outputs = 0;              // O
  int64_t num_params = 0;               // P, scalar parameters in theta
  std::vector<std::string> structured;  // parameter names handled per layer (closed form or rule)
  std::vector<std::string> fallback;    // parameter names handled by contraction
  std::vector<std::string> notes;       // why a layer fell back
  std::vector<NtkLayerInfo> layers;     // structured: per module, in named_modules() order
  /// Wall time of each phase in seconds, in order (structured: "forward", "inputs",
  /// "backward", "check", "kernel:<layer>" per layer, "fallback").
  std::vector<std::pair<std::string, double>> phases;
};

/// Full kernel K(x, x): x [N, ...] -> [N*O, N*O].
Tensor ntk(nn::Module& model, const Tensor& x, const NtkOptions& options = {},
           NtkInfo* info = nullptr);
/// Cross kernel K(x1, x2): x1 [N1, ...], x2 [N2, ...] -> [N1*O, N2*O].
Tensor ntk(nn::Module& model, const Tensor& x1, const Tensor& x2, const NtkOptions& options = {},
           NtkInfo* info = nullptr);
/// Output-traced kernel (mean or sum over o, see NtkTrace): x [N, ...] -> [N, N].
Tensor ntk_traced(nn::Module& model, const Tensor& x, const NtkOptions& options = {},
                  NtkInfo* info = nullptr);
/// Cross traced kernel: -> [N1, N2].
Tensor ntk_traced(nn::Module& model, const Tensor& x1, const Tensor& x2,
                  const NtkOptions& options = {}, NtkInfo* info = nullptr);
/// Diagonal of the full kernel, K[(n,o),(n,o)] = |d f_o(x_n) / d theta|^2: x [N, ...] -> [N, O].
Tensor ntk_diagonal(nn::Module& model, const Tensor& x, const NtkOptions& options = {},
                    NtkInfo* info = nullptr);

/// Matrix-free NTK operator v -> K(x1, x2) v (the Vector method). Construction runs the
/// forward passes and records the double-vjp graph once; each product then costs two
/// backward passes. Memory: the two graphs, never [N*O]^2. The module and its parameters
/// must not change while the operator is used (it holds f at the current theta).
class NtkOperator {
 public:
  NtkOperator(nn::Module& model, const Tensor& x, std::vector<Tensor> params = {});
  NtkOperator(nn::Module& model, const Tensor& x1, const Tensor& x2, std::vector<Tensor> params = {});
  int64_t rows() const;         // N1*O
  int64_t cols() const;         // N2*O
  int64_t num_outputs() const;  // O
  /// K v: v [N2*O] or [N2, O] -> [N1*O] or [N1, O] (the same layout as v).
  Tensor matvec(const Tensor& v) const;
  /// The dense kernel [N1*O, N2*O], built column by column (N2*O products).
  Tensor dense() const;
  /// f(x1) [N1, O] at the current parameters.
  Tensor output() const;

  struct State;  // opaque: the graphs (tools/ntk_vector.cpp)

 private:
  std::shared_ptr<State> s_;
};

// ---------------------------------------------------------------------------------------
// Metrics. Kernels are square, symmetric [M, M] tensors (full [N*O, N*O] or traced [N, N]);
// results are computed in float64.

/// Eigenvalues in ascending order, [M] float64 (Eigen's SelfAdjointEigenSolver on the
/// lower triangle).
Tensor kernel_eigenvalues(const Tensor& K);
/// sum_i K_ii.
double kernel_trace(const Tensor& K);
/// lambda_max / lambda_min; +infinity when lambda_min <= 0 (singular or indefinite).
double kernel_condition_number(const Tensor& K);

enum class EffectiveRank {
  ParticipationRatio,  // (sum lambda)^2 / sum lambda^2, in [1, M] (the default)
  Entropy,             // exp(H(p)), p_i = lambda_i / sum lambda (Roy & Vetterli 2007)
};
/// Effective rank of the spectrum (negative rounding-noise eigenvalues are clamped to 0).
double kernel_effective_rank(const Tensor& K, EffectiveRank kind = EffectiveRank::ParticipationRatio);
/// ||K_t - K_0||_F / ||K_0||_F.
double kernel_relative_change(const Tensor& K_t, const Tensor& K_0);
/// 1 - <K1, K2>_F / (||K1||_F ||K2||_F) (Fort et al. 2020): 0 for kernels equal up to scale.
double kernel_distance(const Tensor& K1, const Tensor& K2);
/// Centered kernel-target alignment (Cortes, Mohri & Rostamizadeh 2012):
///   <H K H, H Y Y^T H>_F / (||H K H||_F ||H Y Y^T H||_F),  H = I - 1 1^T / M.
/// targets: int64 labels [M] (one-hot encoded over max(label)+1 classes), or float targets
/// [M, d], or float [M] (or any float shape with M elements, e.g. [N, O] for the full kernel).
double kernel_target_alignment(const Tensor& K, const Tensor& targets);
/// Label-Gradient Alignment (Baratin et al. 2021): the Pearson correlation between the
/// off-diagonal kernel entries K_ij and Y_ij = +1 if labels_i == labels_j else -1, over all
/// pairs i != j. K: [N, N] (traced), labels: int64 [N]. NaN when all labels are equal.
double label_gradient_alignment(const Tensor& K, const Tensor& labels);

/// All of the above at once (one eigendecomposition). Fields that need labels or a
/// reference kernel are NaN when those are not given.
struct KernelSummary {
  double trace = 0, eig_max = 0, eig_min = 0, condition_number = 0;
  double effective_rank = 0;          // participation ratio
  double effective_rank_entropy = 0;  // exp(entropy)
  double relative_change = 0;         // vs reference
  double distance = 0;                // vs reference
  double target_alignment = 0;        // centered KTA vs targets
  double label_gradient_alignment = 0;  // needs int64 labels and a square [N, N] kernel
  Tensor eigenvalues;                 // ascending, float64
};
KernelSummary summarize_kernel(const Tensor& K, const Tensor& targets = {},
                               const Tensor& reference = {});

}  // namespace kern::tools
