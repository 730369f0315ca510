#pragma once
// Functional transforms in the style of torch.func, on functions of tensors:
//   vjp: (f(x), v^T J)      jvp: (f(x), J t)      hvp: (f(x), H v)      jacobian: J
// The primals are detached copies inside (as torch.func does), so callers pass plain
// tensors. With create_graph the results stay differentiable with respect to whatever the
// function closes over (e.g. module parameters) -- that is how higher orders compose.
#include <kern/autograd.hpp>

#include <functional>
#include <vector>

namespace kern {

using TensorFn = std::function<Tensor(const std::vector<Tensor>&)>;

struct VjpResult {
  Tensor output;
  std::vector<Tensor> grads;  // one per primal: v^T d f / d primal
};
/// Reverse mode: cotangent `v` has the output's shape (omit it for a scalar output).
VjpResult vjp(const TensorFn& f, const std::vector<Tensor>& primals, const Tensor& v = {},
              bool create_graph = false);

struct JvpResult {
  Tensor output;
  Tensor tangent_out;  // J t, shaped like the output
};
/// Forward mode (dual tensors, kern/forward_ad.hpp): one pass computing f and J t together,
/// each op's tangent by its forward rule; about one extra forward pass. A tangent must match
/// its primal's shape and dtype. Called inside another forward level (a jvp of a function
/// that calls jvp) it takes the double-vjp path (jvp_double_vjp, the test oracle) with graph.
JvpResult jvp(const TensorFn& f, const std::vector<Tensor>& primals, const std::vector<Tensor>& tangents,
              bool create_graph = false);

struct HvpResult {
  Tensor output;
  std::vector<Tensor> hvp;  // one per primal
};
/// Hessian-vector product of a scalar function by double backward.
HvpResult hvp(const TensorFn& f, const std::vector<Tensor>& primals, const std::vector<Tensor>& v,
              bool create_graph = false);

/// Jacobian of f with respect to each primal: [output shape..., primal shape...], one
/// reverse pass per output element.
std::vector<Tensor> jacobian(const TensorFn& f, const std::vector<Tensor>& primals);

/// The full Hessian of a scalar function of one primal: [n, n] for a primal of n elements.
Tensor hessian(const TensorFn& f, const Tensor& primal);

}  // namespace kern
