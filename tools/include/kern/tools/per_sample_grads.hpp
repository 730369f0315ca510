#pragma once
// Per-sample (per-example) gradients: for a batch x [N, ...] with targets y and a loss whose
// samples are independent, L = reduce_n L_n with L_n = loss_fn(model(x), y)[n], the
// gradient of every L_n with respect to every parameter,
//     grads[p][n] = d L_n / d p            [N, ...p.shape]
// -- what p.grad would hold after L_n.backward() on sample n alone (the parameterization's
// forward multipliers included). Uses: DP-SGD (clip each row, then average), the gradient
// noise scale, the empirical Fisher diagonal sum_n grads[p][n]^2, per-example influence.
//
// How: ONE forward with hooks that capture each parameter-owning module's input and output,
// ONE backward for the gradients of those outputs (dL/dy of every call, whole batch), then
// per module its grad-sample rule (kern/nn/grad_sample.hpp: batched GEMMs / one grouped
// convolution for Linear, Conv2d, norms; the zoo's modules register theirs). A module that
// owns parameters and has no rule falls back PER LAYER: a vjp through that module alone,
// sample by sample on its captured input, for its own parameters only -- never a loop over
// the whole model. A module called several times sums its calls. A module whose calls
// cannot be used (not through operator(), or without the batch as dim 0: a long-conv
// kernel generator) has its parameters computed by the vjp through its nearest ancestor
// whose calls can.
//
// Loss scaling (Opacus' convention): loss_fn returns either
//   - per-sample losses [N] (reduction "none"): grads[n] = d L_n / d p, or
//   - a scalar, reduced over the batch as options.reduction says: Sum (L = sum_n L_n) or
//     Mean (L = mean_n L_n, the default, e.g. cross_entropy's default). Either way the
//     result is the per-sample gradient of L_n itself: with Mean, sum_n grads[n] is N times
//     the gradient of L (Opacus' loss_reduction="mean" scales its grad samples the same way).
//
// Errors (kern::Error naming the module): batch-interacting modules (BatchNorm2d on batch
// statistics, active Dropout / DropPath), a parameter registered in several modules (tied
// weights), and -- by the check, on by default -- a parameter whose per-sample gradients do
// not sum to autograd's batch gradient (it is read outside its module's forward).
#include <kern/nn/module.hpp>
#include <kern/tensor.hpp>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace kern::tools {

/// How loss_fn reduced a scalar loss over the batch (ignored when it returns [N]).
enum class LossReduction { Mean, Sum };

/// loss_fn(output [N, ...], y) -> [N] per-sample losses, or a scalar (see LossReduction).
using PerSampleLossFn = std::function<Tensor(const Tensor& output, const Tensor& y)>;

struct PerSampleGradsOptions {
  /// The parameters to differentiate (a subset of the module's). Default: every parameter
  /// that requires grad.
  PerSampleGradsOptions& params(std::vector<Tensor> v) { params_ = std::move(v); return *this; }
  PerSampleGradsOptions& reduction(LossReduction v) { reduction_ = v; return *this; }
  /// Samples per forward/backward (0: the whole batch at once). Bounds the activations and
  /// output gradients kept at once; the result [N, ...] is always whole.
  PerSampleGradsOptions& batch_chunk(int64_t v) { batch_chunk_ = v; return *this; }
  /// Verify that sum_n grads[n] equals autograd's batch gradient (computed in the same
  /// backward pass) and throw otherwise. Default on.
  PerSampleGradsOptions& check(bool v) { check_ = v; return *this; }
  const std::vector<Tensor>& params() const { return params_; }
  LossReduction reduction() const { return reduction_; }
  int64_t batch_chunk() const { return batch_chunk_; }
  bool check() const { return check_; }

 private:
  std::vector<Tensor> params_;
  LossReduction reduction_ = LossReduction::Mean;
  int64_t batch_chunk_ = 0;
  bool check_ = true;
};

/// How one parameter's per-sample gradients were computed.
struct PerSampleParamInfo {
  std::string name;    // dotted parameter name ("stages.0.blocks.0.gamma")
  std::string module;  // the owning module's path ("<root>" for the model itself)
  /// "grad_sample:<Module::name()>" (a registered rule), "vjp" (per-layer fallback: a vjp
  /// through the owning module alone, sample by sample), or "vjp:<ancestor>" (the owning
  /// module is not called through operator() with the batch first -- e.g. a kernel
  /// generator called as kernel(L) -- so the vjp runs through its nearest ancestor that is).
  std::string rule;
  int64_t calls = 0;   // how many calls of the computing module were summed
};

struct PerSampleGrads {
  /// (name, [N, ...shape]) in named_parameters() order, restricted to the chosen parameters.
  std::vector<std::pair<std::string, Tensor>> grads;
  std::vector<PerSampleParamInfo> report;  // same order
  /// The gradients of parameter `name`; throws kern::Error if absent.
  const Tensor& at(const std::string& name) const;
};

/// x [N, ...], y [N, ...] (anything loss_fn takes; sliced along dim 0 when chunking).
PerSampleGrads per_sample_grads(nn::Module& model, const PerSampleLossFn& loss_fn, const Tensor& x,
                                const Tensor& y, const PerSampleGradsOptions& options = {});

}  // namespace kern::tools
