#pragma once
#ifndef KERN_BUILDING_TOOLS  // private to kern_tools: see CMakeLists.txt (layering)
#error "tools/ntk_internal.hpp is private to kern_tools; include <kern/tools/...> instead"
#endif
// Internal helpers shared by the NTK methods (tools/ntk*.cpp). Not installed.
#include <kern/kern.hpp>
#include <kern/tools/ntk.hpp>

#include <omp.h>

#include <string>
#include <vector>

namespace kern::tools::detail {

/// Runs the calling thread's parallel regions (kern ops, oneDNN) on one thread in a scope:
/// for batches of tiny ops (one-sample passes), where thread wake-ups cost more than the work.
class SerialScope {
 public:
  SerialScope() : prev_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SerialScope() { omp_set_num_threads(prev_); }
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;

 private:
  int prev_;
};

/// What to compute: the full kernel [N1*O, N2*O], its output trace summed over o [N1, N2]
/// (the Mean scaling is applied by the caller), or the diagonal [N1, O] (x2 == x1).
enum class Kind { Full, TracedSum, Diagonal };

struct ParamSet {
  std::vector<Tensor> tensors;
  std::vector<std::string> names;  // dotted names from named_parameters()
  int64_t numel() const;
  /// Index of `t` in `tensors` (same TensorImpl), or -1.
  int64_t find(const Tensor& t) const;
};

/// The module's parameters that require grad, or `requested` (each must belong to the
/// module and require grad), with their names.
ParamSet resolve_params(nn::Module& model, const std::vector<Tensor>& requested);

/// Throws kern::Error for modules that make samples interact or f random (BatchNorm2d on
/// batch statistics, Dropout/DropPath in training mode).
void check_batch_independent(nn::Module& model, const char* who);

/// Removes the forward hooks it was given when it goes out of scope (also on exceptions), so
/// a failed NTK or per-sample computation leaves the model's hooks as they were.
class HookScope {
 public:
  HookScope() = default;
  HookScope(const HookScope&) = delete;
  HookScope& operator=(const HookScope&) = delete;
  ~HookScope() {
    for (auto& [m, id] : ids_) m->remove_hook(id);
  }
  void add(nn::Module* m, nn::HookId id) { ids_.emplace_back(m, id); }

 private:
  std::vector<std::pair<nn::Module*, nn::HookId>> ids_;
};

/// Model output [N, ...] -> [N, O].
Tensor flatten_output(const Tensor& out, int64_t n, const char* who);

/// Per-sample Jacobian rows d f_o(x_n) / d params, [N*O, P] (row n*O + o, columns the
/// parameters flattened in order). Each sample is run on its own (batch of one) and one
/// vjp is taken per output. Sets `num_outputs`.
Tensor jacobian_rows(nn::Module& model, const Tensor& x, const std::vector<Tensor>& params,
                     int64_t& num_outputs);

/// The kernel of `kind` from per-sample Jacobians J1 [N1*O, P], J2 [N2*O, P] (J2 may be
/// the same tensor as J1).
Tensor contract_jacobians(const Tensor& J1, const Tensor& J2, int64_t num_outputs, Kind kind);

/// Full [N1*O, N2*O] -> traced (summed over o) [N1, N2].
Tensor trace_outputs(const Tensor& K, int64_t num_outputs);
/// Full [N*O, N*O] -> its diagonal as [N, O].
Tensor diagonal_outputs(const Tensor& K, int64_t num_outputs);

// Accumulation kernels (tools/ntk_blas.cpp); K must be contiguous.
/// K [M1, M2] += G1 G2^T, each entry scaled by Q[row / O, col / O] when Q is given.
/// symmetric: G2 is G1 and only the lower block triangle is multiplied (then mirrored); K
/// must be symmetric on entry (without Q its strict upper triangle is rewritten from the
/// lower one).
void add_gram(Tensor& K, const Tensor& G1, const Tensor& G2, bool symmetric, const Tensor& Q = {},
              int64_t O = 1);
/// K += part.
void add_into(Tensor& K, const Tensor& part);
/// out[b] = a[b] b[b] for every b: a [B, M, K], b [B, K, N] (any strides), out [B, M, N]
/// (unit stride in its last dim; may be a view). One parallel region, Eigen inside.
void batched_matmul(const Tensor& a, const Tensor& b, Tensor& out);
/// Pairwise form: K[(n,o),(m,p)] += sum_{s,t} Q[(n,s),(m,t)] sum_c D1[n,s,c,o] D2[m,t,c,p].
/// Q [N1*S, N2*S], D1 [N1, S, og, O], D2 [N2, S, og, O], K [N1*O, N2*O], all contiguous.
/// sym: D2 is D1 and Q is symmetric (only n >= m is computed, then mirrored).
void add_pairwise(Tensor& K, const Tensor& Q, const Tensor& D1, const Tensor& D2, bool sym);

// The methods. `x2` is undefined for K(x1, x1) (symmetric shortcuts apply); Diagonal
// needs x2 undefined. They fill info->method/num_outputs/structured/fallback/notes.
Tensor contraction_ntk(nn::Module& model, const Tensor& x1, const Tensor& x2, const ParamSet& ps,
                       Kind kind, NtkInfo& info);
Tensor vector_ntk(nn::Module& model, const Tensor& x1, const Tensor& x2, const ParamSet& ps,
                  Kind kind, NtkInfo& info);
Tensor structured_ntk(nn::Module& model, const Tensor& x1, const Tensor& x2, const ParamSet& ps,
                      Kind kind, const NtkOptions& options, NtkInfo& info);

}  // namespace kern::tools::detail
