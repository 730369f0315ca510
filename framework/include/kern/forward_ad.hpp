#pragma once
// Forward-mode AD by dual tensors (PyTorch's torch.autograd.forward_ad, JAX's jvp).
//
// While a forward level is active on a thread, a tensor may carry a tangent. Every op that
// calls record_op (with grad mode on) computes its output's tangent right after its forward,
// from its inputs' tangents, by the op's forward rule:
//   - a native rule, passed to the record_op overload below next to the op's backward
//     (e.g. mul: t_a * b + a * t_b; a linear op applies itself to the tangents);
//   - JvpRule::self_adjoint(): one input, and a symmetric Jacobian (elementwise ops: diagonal;
//     softmax: diag(y) - y y^T), so J t = J^T t is the backward function applied to grad = t;
//   - no rule (the plain record_op): a local double-vjp through that op's own backward,
//     J t = d/du <J^T u, t>, always exact but about twice the backward's cost.
// Rules are written with differentiable kern ops. Under a level created with create_graph,
// they run with grad mode on, so the tangents are differentiable (grad of a jvp, hvp as jvp
// of grad); otherwise they run without recording. A tangent is zero when absent (undefined).
//
// Tangents are keyed by tensor identity (TensorImpl), as PyTorch's are: in-place writes into
// a tensor do not update its tangent, and neither does anything that bypasses record_op.
// Grad mode gates tangents as it gates recording: kern::jvp turns it on for f, and what f
// computes under NoGradGuard is a constant, as it is for reverse mode (the ops' internal
// NoGradGuard scopes thus cost no tangent work). Levels are per thread; a tangent lives as
// long as its primal.
#include <kern/autograd.hpp>
#include <kern/functional.hpp>

#include <concepts>
#include <map>
#include <string>
#include <type_traits>

namespace kern {

/// What a forward rule receives. tangents[i] is undefined when inputs[i] has no tangent.
struct JvpContext {
  const std::vector<Tensor>& tangents;
  const std::vector<Tensor>& inputs;  // as recorded
  const Tensor& output;               // the primal output
  bool has(size_t i) const { return i < tangents.size() && tangents[i].defined(); }
  /// tangents[i], or zeros shaped like inputs[i] when it has none.
  Tensor tangent_or_zeros(size_t i) const;
};

/// Returns the output's tangent (shaped like the output), or undefined for zero.
using JvpFn = std::function<Tensor(const JvpContext&)>;

class JvpRule {
 public:
  JvpRule(JvpFn fn) : fn_(std::move(fn)) {}  // NOLINT: implicit, so lambdas pass directly
  template <typename F>
    requires std::is_invocable_r_v<Tensor, F, const JvpContext&> && (!std::same_as<std::decay_t<F>, JvpRule>)
  JvpRule(F f) : fn_(std::move(f)) {}  // NOLINT
  /// One input, symmetric Jacobian (see the file comment): J t = backward(grad = t).
  static JvpRule self_adjoint() {
    JvpRule r{JvpFn{}};
    r.self_adjoint_ = true;
    return r;
  }
  const JvpFn& fn() const { return fn_; }
  bool is_self_adjoint() const { return self_adjoint_; }

 private:
  JvpFn fn_;
  bool self_adjoint_ = false;
};

/// record_op with a native forward rule (see the file comment).
Tensor record_op(std::string_view name, Tensor output, std::vector<Tensor> inputs, BackwardFn backward,
                 SavedValues saved, JvpRule jvp);

namespace forward_ad {

/// Activates a forward level on this thread for its scope. Levels do not nest: entering
/// one while another is active throws (kern::jvp nests by taking the double-vjp path).
class DualLevel {
 public:
  explicit DualLevel(bool create_graph = false);
  ~DualLevel();
  DualLevel(const DualLevel&) = delete;
  DualLevel& operator=(const DualLevel&) = delete;
};

/// Is a level active on this thread (even while a rule runs)?
bool level_active();
/// Is a level active and taking tangents (no rule running)? Ops with a raw path that
/// bypasses record_op take their differentiable path then, as they do when recording.
bool tracking();
/// A new tensor sharing primal's data, carrying `tangent` (same shape and dtype; a
/// kern::Error names `what` otherwise). Needs an active level.
Tensor make_dual(const Tensor& primal, const Tensor& tangent, const std::string& what = "tangent");
/// The tangent of t in the active level; undefined when it has none (zero).
Tensor tangent(const Tensor& t);

/// How the active level computed tangents, per op name (for tests and diagnostics).
struct Stats {
  std::map<std::string, int64_t> native;    // native or elementwise rules
  std::map<std::string, int64_t> fallback;  // local double-vjp
};
Stats stats();

}  // namespace forward_ad

/// The previous jvp: two reverse passes (double-vjp identity). The oracle for kern::jvp.
JvpResult jvp_double_vjp(const TensorFn& f, const std::vector<Tensor>& primals, const std::vector<Tensor>& tangents,
                         bool create_graph = false);

/// Hessian-vector product by forward-over-reverse: the jvp (dual tensors) of the gradient.
HvpResult hvp_forward_over_reverse(const TensorFn& f, const std::vector<Tensor>& primals,
                                   const std::vector<Tensor>& v, bool create_graph = false);

}  // namespace kern
