#pragma once
// The hooks record_op (engine.cpp) calls into the forward level (forward_ad.cpp).
#include <kern/forward_ad.hpp>

namespace kern::detail {

/// Is a level taking tangents, and does one of `inputs` have a tangent?
bool tangent_wanted(const std::vector<Tensor>& inputs);

/// The output's tangent under the active level, by `rule` (nullptr: the local double-vjp
/// fallback through `backward`); undefined when there is no level, it is suspended (a rule
/// is running), or no input has a tangent.
Tensor forward_tangent(std::string_view name, const std::vector<Tensor>& inputs, const Tensor& output,
                       const BackwardFn& backward, const JvpRule* rule);

/// Attaches `tangent` (if defined) to `output` in the active level and returns the tensor
/// that carries it: a fresh alias when `output` is one of `inputs` (an op that returned its
/// input unchanged), so that input keeps its own tangent.
Tensor attach_tangent(Tensor output, const std::vector<Tensor>& inputs, Tensor tangent);

/// Suspends the active level in a scope (record_op with a rule calls the plain record_op).
class SuspendForwardAD {
 public:
  SuspendForwardAD();
  ~SuspendForwardAD();
  SuspendForwardAD(const SuspendForwardAD&) = delete;
  SuspendForwardAD& operator=(const SuspendForwardAD&) = delete;
};

}  // namespace kern::detail
