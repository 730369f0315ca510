#pragma once
// Per-sample gradient rules ("grad samplers" in Opacus' terms): the contract between the
// modules that know their own algebra and the tools that need per-example gradients
// (tools: per_sample_grads, the structured NTK).
//
// For a module called as y = module(x) on a batch whose samples are independent
// (x [N, ...], y [N, ...]), and an output gradient g = dL/dy [N, ...] of a loss
// L = sum_n L_n (L_n depending on sample n only), a rule returns, for each of the module's
// OWN parameters p (named_parameters(/*recurse=*/false); children have rules of their own),
// the per-sample gradients
//     grad[n] = d L_n / d p          [N, ...p.shape]
// with respect to the stored tensor, i.e. what p.grad would hold after L_n.backward():
// the parameterization's forward multiplier (Param::multiplier()) is applied. A parameter
// that does not require grad may be omitted. Summing grad over n gives autograd's p.grad.
//
// A module whose parameters live in a parameter-only child that is never called (SGConv's
// kernel_list, a ParameterList: no hook ever sees it) declares that child as COVERED when it
// registers its rule; the rule then also returns the child's parameters, under names relative
// to the module ("kernel_list.0"), and the tools attribute them to the module.
//
// Rules are registered per exact dynamic type (a subclass may change forward, so it gets no
// rule by inheritance) by the library that defines the module: kern_core registers its
// layers (Linear, Conv2d, norms), kern_models its zoo modules (layer scales, filter banks,
// long-conv kernels, embeddings). A module with no rule falls back per layer in the tools.
#include <kern/tensor.hpp>

#include <functional>
#include <string>
#include <typeindex>
#include <typeinfo>
#include <utility>
#include <vector>

namespace kern::nn {

class Module;

struct GradSample {
  std::string name;  // the module's own parameter name, e.g. "weight", or "child.name" for a covered child
  Tensor grad;       // [N, ...parameter shape]
};

/// input, output: one call of the module as its forward hook sees them; grad_output: dL/dy,
/// same shape as output. Rules run without recording a graph and must not change the module.
using GradSampleRule = std::function<std::vector<GradSample>(
    Module& module, const Tensor& input, const Tensor& output, const Tensor& grad_output)>;

/// Registers (or replaces) the rule for modules whose dynamic type is exactly `type`;
/// `covers`: names of parameter-only children whose parameters the rule also returns.
void register_grad_sample_rule(std::type_index type, GradSampleRule rule, std::vector<std::string> covers = {});
template <class M>
void register_grad_sample_rule(GradSampleRule rule, std::vector<std::string> covers = {}) {
  register_grad_sample_rule(std::type_index(typeid(M)), std::move(rule), std::move(covers));
}
/// The rule for the module's exact dynamic type, or nullptr. Thread-safe.
const GradSampleRule* find_grad_sample_rule(const Module& module);
/// The children (local names) whose parameters the module's rule covers; empty without a rule.
std::vector<std::string> grad_sample_covered_children(const Module& module);

/// Registers a rule at load time: `static const GradSampleRegistrar<MyModule> r{rule};`
/// in the .cpp that defines MyModule (`{rule, {"kernel_list"}}` with covered children).
template <class M>
struct GradSampleRegistrar {
  explicit GradSampleRegistrar(GradSampleRule rule, std::vector<std::string> covers = {}) {
    register_grad_sample_rule<M>(std::move(rule), std::move(covers));
  }
};

}  // namespace kern::nn
