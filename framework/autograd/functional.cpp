// torch.func-style transforms built on the engine's grad(); every one is exact because
// backward formulas are differentiable.
#include <kern/forward_ad.hpp>
#include <kern/functional.hpp>
#include <kern/ops.hpp>

namespace kern {

namespace {
std::vector<Tensor> fresh_primals(const std::vector<Tensor>& primals) {
  std::vector<Tensor> p;
  for (size_t i = 0; i < primals.size(); ++i) {
    KERN_CHECK(primals[i].defined() && is_floating(primals[i].dtype()), "functional: primal ", i,
               " must be a defined floating tensor");
    // Under a forward level the copy keeps the primal's tangent (a jvp that calls vjp/jvp).
    Tensor tangent = forward_ad::tangent(primals[i]);
    Tensor t = tangent.defined() ? forward_ad::make_dual(primals[i], tangent) : primals[i].detach();
    t.requires_grad_(true);
    p.push_back(t);
  }
  return p;
}
}  // namespace

VjpResult vjp(const TensorFn& f, const std::vector<Tensor>& primals, const Tensor& v, bool create_graph) {
  EnableGradGuard eg;
  auto p = fresh_primals(primals);
  Tensor out = f(p);
  KERN_CHECK(out.defined(), "vjp: the function returned an undefined tensor");
  if (!out.requires_grad()) {
    std::vector<Tensor> zs;
    for (auto& t : p) zs.push_back(zeros_like(t));
    return {out, zs};
  }
  auto g = grad({out}, p, {v}, {.retain_graph = create_graph, .create_graph = create_graph, .allow_unused = true});
  return {create_graph ? out : out.detach(), g};
}

// The oracle for kern::jvp (forward_ad.cpp): exact, two reverse passes.
JvpResult jvp_double_vjp(const TensorFn& f, const std::vector<Tensor>& primals, const std::vector<Tensor>& tangents,
                         bool create_graph) {
  KERN_CHECK(tangents.size() == primals.size(), "jvp: ", tangents.size(), " tangents for ", primals.size(),
             " primals");
  for (size_t i = 0; i < primals.size(); ++i)
    KERN_CHECK(tangents[i].shape() == primals[i].shape(), "jvp: tangent ", i, " has shape ", tangents[i].shape(),
               ", primal has ", primals[i].shape());
  EnableGradGuard eg;
  auto p = fresh_primals(primals);
  Tensor out = f(p);
  if (!out.requires_grad()) return {out, zeros_like(out)};
  // g(u) = J^T u is linear in the dummy cotangent u; differentiating <g(u), t> in u gives J t.
  Tensor u = zeros_like(out).requires_grad_(true);
  auto g = grad({out}, p, {u}, {.retain_graph = true, .create_graph = true, .allow_unused = true});
  std::vector<Tensor> gs, ts;
  for (size_t i = 0; i < g.size(); ++i)
    if (g[i].requires_grad()) {
      gs.push_back(g[i]);
      ts.push_back(tangents[i]);
    }
  if (gs.empty()) return {out.detach(), zeros_like(out)};
  auto jt = grad(gs, {u}, ts, {.retain_graph = create_graph, .create_graph = create_graph, .allow_unused = true});
  return {create_graph ? out : out.detach(), jt[0]};
}

HvpResult hvp(const TensorFn& f, const std::vector<Tensor>& primals, const std::vector<Tensor>& v,
              bool create_graph) {
  KERN_CHECK(v.size() == primals.size(), "hvp: ", v.size(), " vectors for ", primals.size(), " primals");
  EnableGradGuard eg;
  auto p = fresh_primals(primals);
  Tensor out = f(p);
  KERN_CHECK(out.numel() == 1, "hvp: the function must return a scalar, got shape ", out.shape());
  auto g = grad({out}, p, {}, {.retain_graph = true, .create_graph = true, .allow_unused = true});
  Tensor gv;
  for (size_t i = 0; i < g.size(); ++i) {
    KERN_CHECK(v[i].shape() == p[i].shape(), "hvp: vector ", i, " has shape ", v[i].shape(), ", primal has ",
               p[i].shape());
    if (!g[i].requires_grad()) continue;
    Tensor term = dot(g[i], v[i]);
    gv = gv.defined() ? gv + term : term;
  }
  std::vector<Tensor> hv;
  if (!gv.defined()) {
    for (auto& t : p) hv.push_back(zeros_like(t));
  } else {
    hv = grad({gv}, p, {}, {.retain_graph = create_graph, .create_graph = create_graph, .allow_unused = true});
  }
  return {out.detach(), hv};
}

std::vector<Tensor> jacobian(const TensorFn& f, const std::vector<Tensor>& primals) {
  EnableGradGuard eg;
  auto p = fresh_primals(primals);
  Tensor out = f(p);
  const int64_t m = out.numel();
  std::vector<Tensor> rows(p.size());
  std::vector<std::vector<Tensor>> per_input(p.size());
  for (int64_t k = 0; k < m; ++k) {
    Tensor e = zeros(out.shape(), out.dtype());
    e.reshape({-1}).narrow(0, k, 1).fill_(1.0);
    std::vector<Tensor> g;
    if (out.requires_grad()) g = grad({out}, p, {e}, {.retain_graph = true, .allow_unused = true});
    else for (auto& t : p) g.push_back(zeros_like(t));
    for (size_t i = 0; i < p.size(); ++i) per_input[i].push_back(g[i].detach());
  }
  std::vector<Tensor> result;
  for (size_t i = 0; i < p.size(); ++i) {
    Shape s = out.shape();
    s.insert(s.end(), p[i].shape().begin(), p[i].shape().end());
    result.push_back(m == 0 ? zeros(s, p[i].dtype()) : reshape(stack(per_input[i], 0), s));
  }
  return result;
}

Tensor hessian(const TensorFn& f, const Tensor& primal) {
  const int64_t n = primal.numel();
  auto gradient = [&](const std::vector<Tensor>& x) {
    Tensor out = f(x);
    KERN_CHECK(out.numel() == 1, "hessian: the function must return a scalar, got shape ", out.shape());
    return reshape(grad({out}, {x[0]}, {}, {.create_graph = true, .allow_unused = true})[0], {n});
  };
  return reshape(jacobian(gradient, {primal})[0], {n, n});
}

}  // namespace kern
