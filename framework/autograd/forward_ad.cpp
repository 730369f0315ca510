// Forward-mode AD: the per-thread forward level (tangents keyed by tensor), the rule
// dispatch record_op calls after each op's forward, the local double-vjp fallback, and the
// transforms built on it (jvp, forward-over-reverse hvp). See kern/forward_ad.hpp.
#include <kern/ops.hpp>

#include <algorithm>
#include <optional>
#include <unordered_map>

#include "forward_ad_internal.hpp"

namespace kern {

namespace {

struct Dual {
  std::weak_ptr<TensorImpl> primal;  // tells a live primal from a freed one at the same address
  Tensor tangent;
};

struct Level {
  bool create_graph = false;
  int suspended = 0;
  std::unordered_map<const TensorImpl*, Dual> duals;
  size_t next_sweep = 256;  // drop dead primals' tangents when the map reaches this size
  forward_ad::Stats stats;
};

thread_local Level* g_level = nullptr;

Level* active() { return g_level && g_level->suspended == 0 ? g_level : nullptr; }

Tensor lookup(Level& l, const Tensor& t) {
  auto it = l.duals.find(t.impl_ptr().get());
  if (it == l.duals.end()) return {};
  if (it->second.primal.expired()) {
    l.duals.erase(it);
    return {};
  }
  return it->second.tangent;
}

// A tangent lives as long as its primal: the map is swept of freed primals whenever it has
// doubled since the last sweep (amortized O(1) per op), so a long forward holds only the
// tangents of live tensors, as forward mode should.
void set_tangent(Level& l, const Tensor& t, Tensor tangent) {
  l.duals[t.impl_ptr().get()] = Dual{t.impl_ptr(), std::move(tangent)};
  if (l.duals.size() >= l.next_sweep) {
    std::erase_if(l.duals, [](const auto& kv) { return kv.second.primal.expired(); });
    l.next_sweep = std::max<size_t>(256, 2 * l.duals.size());
  }
}

struct Suspend {
  Level& l;
  explicit Suspend(Level& lv) : l(lv) { ++l.suspended; }
  ~Suspend() { --l.suspended; }
};

// J t for an op without a native rule: its backward g(u) = J^T u is linear in the cotangent
// u, so d/du <g(u), t> = J t. Backward functions may return gradients of broadcast inputs at
// the output's shape (the engine reduces them); the tangent is expanded to match, since
// <sum_to(g), t> = <g, expand(t)>.
Tensor fallback_jvp(const BackwardFn& backward, const std::vector<Tensor>& inputs, const Tensor& output,
                    const std::vector<Tensor>& tangents, bool create_graph) {
  EnableGradGuard eg;
  Tensor u = zeros_like(output.detach());
  u.requires_grad_(true);
  std::vector<bool> needs(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) needs[i] = tangents[i].defined();
  BackwardContext ctx{u, inputs, output, needs};
  auto g = backward(ctx);
  std::vector<Tensor> gs, ts;
  for (size_t i = 0; i < inputs.size() && i < g.size(); ++i) {
    if (!needs[i] || !g[i].defined() || !g[i].requires_grad()) continue;
    gs.push_back(g[i]);
    ts.push_back(g[i].shape() == tangents[i].shape() ? tangents[i] : expand(tangents[i], g[i].shape()));
  }
  if (gs.empty()) return {};
  return grad(gs, {u}, ts, {.retain_graph = create_graph, .create_graph = create_graph, .allow_unused = true})[0];
}

}  // namespace

Tensor JvpContext::tangent_or_zeros(size_t i) const { return has(i) ? tangents[i] : zeros_like(inputs[i].detach()); }

namespace detail {

bool tangent_wanted(const std::vector<Tensor>& inputs) {
  Level* l = active();
  if (!l) return false;
  for (auto& in : inputs)
    if (in.defined() && lookup(*l, in).defined()) return true;
  return false;
}

Tensor forward_tangent(std::string_view name, const std::vector<Tensor>& inputs, const Tensor& output,
                       const BackwardFn& backward, const JvpRule* rule) {
  Level* l = active();
  if (!l || !output.defined() || !is_floating(output.dtype())) return {};
  std::vector<Tensor> tangents(inputs.size());
  bool any = false;
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].defined() && (tangents[i] = lookup(*l, inputs[i])).defined()) any = true;
  if (!any) return {};
  Suspend s(*l);
  // Without create_graph the tangents need no graph; the fallback turns grad mode back on.
  std::optional<NoGradGuard> ng;
  if (!l->create_graph) ng.emplace();
  Tensor t;
  if (rule && rule->is_self_adjoint()) {
    KERN_CHECK(inputs.size() == 1 && inputs[0].shape() == output.shape(), "forward AD: op '", name,
               "' declares a self-adjoint rule but maps ", inputs.size() == 1 ? inputs[0].shape() : Shape{},
               " to ", output.shape());
    std::vector<bool> needs{true};
    t = backward(BackwardContext{tangents[0], inputs, output, needs})[0];
    ++l->stats.native[std::string(name)];
  } else if (rule && rule->fn()) {
    t = rule->fn()(JvpContext{tangents, inputs, output});
    ++l->stats.native[std::string(name)];
  } else {
    t = fallback_jvp(backward, inputs, output, tangents, l->create_graph);
    ++l->stats.fallback[std::string(name)];
  }
  if (!t.defined()) return {};
  KERN_CHECK(t.shape() == output.shape() && t.dtype() == output.dtype(), "forward AD: the tangent of op '", name,
             "' is ", t.dtype(), " ", t.shape(), ", its output is ", output.dtype(), " ", output.shape());
  return t;
}

Tensor attach_tangent(Tensor output, const std::vector<Tensor>& inputs, Tensor tangent) {
  Level* l = active();
  if (!l || !tangent.defined()) return output;
  for (auto& in : inputs)
    if (in.defined() && in.impl_ptr() == output.impl_ptr()) {
      auto fresh = std::make_shared<TensorImpl>(output.impl());
      fresh->grad.reset();
      output = Tensor(fresh);
      break;
    }
  set_tangent(*l, output, std::move(tangent));
  return output;
}

SuspendForwardAD::SuspendForwardAD() {
  if (g_level) ++g_level->suspended;
}
SuspendForwardAD::~SuspendForwardAD() {
  if (g_level) --g_level->suspended;
}

}  // namespace detail

namespace forward_ad {

DualLevel::DualLevel(bool create_graph) {
  KERN_CHECK(g_level == nullptr, "forward_ad::DualLevel: a forward level is already active on this thread");
  g_level = new Level{.create_graph = create_graph};
}

DualLevel::~DualLevel() {
  delete g_level;
  g_level = nullptr;
}

bool level_active() { return g_level != nullptr; }
bool tracking() { return active() != nullptr; }

Tensor make_dual(const Tensor& primal, const Tensor& tangent, const std::string& what) {
  KERN_CHECK(g_level != nullptr, "forward_ad::make_dual: no forward level is active");
  KERN_CHECK(primal.defined() && is_floating(primal.dtype()), "forward_ad::make_dual: ", what,
             ": the primal must be a defined floating tensor");
  KERN_CHECK(tangent.defined(), "forward_ad::make_dual: ", what, " is undefined");
  KERN_CHECK(tangent.shape() == primal.shape() && tangent.dtype() == primal.dtype(), "forward_ad::make_dual: ",
             what, " is ", tangent.dtype(), " ", tangent.shape(), ", its primal is ", primal.dtype(), " ",
             primal.shape());
  Tensor d = primal.detach();
  set_tangent(*g_level, d, tangent);
  return d;
}

Tensor tangent(const Tensor& t) {
  if (!g_level || !t.defined()) return {};
  return lookup(*g_level, t);
}

Stats stats() { return g_level ? g_level->stats : Stats{}; }

}  // namespace forward_ad

// ---- transforms

JvpResult jvp(const TensorFn& f, const std::vector<Tensor>& primals, const std::vector<Tensor>& tangents,
              bool create_graph) {
  KERN_CHECK(tangents.size() == primals.size(), "jvp: ", tangents.size(), " tangents for ", primals.size(),
             " primals");
  // Inside another level (a jvp of a function that calls jvp): the double-vjp path, with its
  // graph (create_graph), so that the outer level's rules see every op of both reverse passes
  // and the result carries the outer tangent (the primals keep theirs, see fresh_primals).
  if (forward_ad::level_active()) return jvp_double_vjp(f, primals, tangents, true);
  EnableGradGuard eg;  // forward rules run where the graph would be recorded
  forward_ad::DualLevel level(create_graph);
  std::vector<Tensor> p;
  for (size_t i = 0; i < primals.size(); ++i) {
    KERN_CHECK(primals[i].defined() && is_floating(primals[i].dtype()), "jvp: primal ", i,
               " must be a defined floating tensor");
    p.push_back(forward_ad::make_dual(primals[i], tangents[i], "jvp: tangent " + std::to_string(i)));
  }
  Tensor out = f(p);
  KERN_CHECK(out.defined(), "jvp: the function returned an undefined tensor");
  Tensor t = forward_ad::tangent(out);
  if (!t.defined()) t = zeros_like(out.detach());
  if (!create_graph) return {out.detach(), t.detach()};
  return {out, t};
}

HvpResult hvp_forward_over_reverse(const TensorFn& f, const std::vector<Tensor>& primals,
                                   const std::vector<Tensor>& v, bool create_graph) {
  KERN_CHECK(v.size() == primals.size(), "hvp_forward_over_reverse: ", v.size(), " vectors for ", primals.size(),
             " primals");
  KERN_CHECK(!forward_ad::level_active(), "hvp_forward_over_reverse: a forward level is already active");
  EnableGradGuard eg;
  forward_ad::DualLevel level(create_graph);
  std::vector<Tensor> p;
  for (size_t i = 0; i < primals.size(); ++i) {
    KERN_CHECK(primals[i].defined() && is_floating(primals[i].dtype()), "hvp_forward_over_reverse: primal ", i,
               " must be a defined floating tensor");
    p.push_back(forward_ad::make_dual(primals[i], v[i], "hvp_forward_over_reverse: vector " + std::to_string(i)));
    p.back().requires_grad_(true);
  }
  Tensor out = f(p);
  KERN_CHECK(out.numel() == 1, "hvp_forward_over_reverse: the function must return a scalar, got shape ",
             out.shape());
  // The reverse pass records its ops (create_graph), so each computes its tangent: the
  // tangent of the gradient is H v.
  auto g = grad({out}, p, {}, {.retain_graph = true, .create_graph = true, .allow_unused = true});
  std::vector<Tensor> hv;
  for (size_t i = 0; i < p.size(); ++i) {
    Tensor t = g[i].defined() ? forward_ad::tangent(g[i]) : Tensor();
    if (!t.defined()) t = zeros_like(p[i].detach());
    hv.push_back(create_graph ? t : t.detach());
  }
  return {out.detach(), hv};
}

}  // namespace kern
