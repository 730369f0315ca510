#pragma once
// nn::functional_call: evaluate a module with substitute parameters and buffers, as
// torch.func.functional_call. This is what makes a module a function of its parameters for
// kern's functional transforms (kern/functional.hpp):
//
//   auto names = ...;                                   // e.g. from model->named_parameters()
//   TensorFn f = [&](const std::vector<Tensor>& ps) {
//     std::map<std::string, Tensor> sub;
//     for (size_t i = 0; i < ps.size(); ++i) sub[names[i]] = ps[i];
//     return kern::mse_loss(nn::functional_call(*model, sub, x), y);
//   };
//   auto h = kern::hvp(f, params, v);                   // H v w.r.t. the parameters
//
// Semantics (torch.func.functional_call with tie_weights = true):
//   - Names are the dotted names of state_dict() (every parameter and buffer, tied tensors
//     under each of their names). The given tensors replace the module's tensors for the
//     duration of the call only; the module's own tensors are restored afterwards, also when
//     forward (or a hook) throws. Names not given keep the module's own tensors, unless
//     options.strict.
//   - The given tensors are used as they are, not copied: gradients (grad, backward, vjp, jvp,
//     hvp, create_graph to any order) flow to them, and to whatever they were computed from.
//     The module's own parameters get no gradient from the call (except those not replaced).
//   - The module is called through operator(), so forward pre-hooks and hooks run, and they
//     (and forward) see the substitutes wherever they read the module's tensors: through the
//     layers' slot handles (Linear::weight()), named_parameters(), state_dict(),
//     get_parameter(). Parameterization multipliers (kern/param) belong to the slots and keep
//     applying to the substitutes.
//   - backward() inside the call accumulates into the substitutes' .grad (when they are
//     leaves), never into the module's own parameters.
//   - Buffers updated in forward (BatchNorm2d's running statistics and num_batches_tracked in
//     training mode) are written into the given buffer tensors, in place, as PyTorch does; the
//     module's own buffers change only when they were not replaced.
//   - A tensor tied under several names is replaced under all of them when any one name is
//     given; giving two of its names different tensors is an error.
//   - Errors: unknown names, undefined tensors, shape or dtype mismatches, duplicate names, and
//     (strict) missing names are all listed together in ONE kern::Error before anything runs,
//     each with the expected and given dtype and shape.
//
// How it works: a module reads its parameters and buffers through slots (kern/nn/module.hpp).
// For the call, each replaced slot holds the given tensor as its substitute, so forward
// computes with it and the graph records it directly; afterwards (also on an exception) the
// slots' previous substitutes are restored, so calls nest. Nothing about the module's own
// tensors or any recorded graph is touched.
//
// Limits: the slots are modified while the call runs, so the module must not be used
// concurrently from another thread (as in PyTorch).
#include <kern/nn/module.hpp>

#include <concepts>
#include <functional>
#include <type_traits>

namespace kern::nn {

struct FunctionalCallOptions {
  /// Every parameter and buffer must be given (a tied tensor under at least one name).
  bool strict = false;
};

/// Calls `module(input)` with `tensors` in place of the module's parameters and buffers.
///   tensors: (dotted name, tensor) pairs, each of its target's dtype and shape.
Tensor functional_call(Module& module, const StateDict& tensors, const Tensor& input,
                       FunctionalCallOptions options = {});

/// Calls `fn(module)` with the substitution in place: for modules with several inputs, for
/// calling submodules or methods other than forward, or for computing a loss inside the call.
/// `fn` returns one tensor (stack or cat several outputs).
Tensor functional_call(Module& module, const StateDict& tensors,
                       const std::function<Tensor(Module&)>& fn,
                       FunctionalCallOptions options = {});

/// Same, from any range of (name, Tensor) pairs (std::map, std::unordered_map, ...).
template <class Range>
  requires(!std::same_as<std::remove_cvref_t<Range>, StateDict>) && requires(const Range& r) {
    StateDict(r.begin(), r.end());
  }
Tensor functional_call(Module& module, const Range& tensors, const Tensor& input,
                       FunctionalCallOptions options = {}) {
  return functional_call(module, StateDict(tensors.begin(), tensors.end()), input, options);
}

template <class Range>
  requires(!std::same_as<std::remove_cvref_t<Range>, StateDict>) && requires(const Range& r) {
    StateDict(r.begin(), r.end());
  }
Tensor functional_call(Module& module, const Range& tensors,
                       const std::function<Tensor(Module&)>& fn,
                       FunctionalCallOptions options = {}) {
  return functional_call(module, StateDict(tensors.begin(), tensors.end()), fn, options);
}

}  // namespace kern::nn
