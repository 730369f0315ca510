// Forward-mode AD (kern/forward_ad.hpp) against the double-vjp oracle, for every OpInfo
// entry (op_table.hpp): the jvp, the gradient of a jvp (create_graph), and the
// forward-over-reverse Hessian-vector product, all in float64 to 1e-12. The test also
// lists the ops whose tangent came from the local double-vjp fallback instead of a native
// rule, and fails if one is not on the allowed list below.
#include <kern/forward_ad.hpp>

#include <set>
#include <sstream>

#include "op_table.hpp"

using namespace kern;
using namespace kern::testing;

namespace {

// Ops still computed by the local double-vjp fallback (by recorded op name).
const std::set<std::string> kAllowedFallback = {};

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.detach().to_vector<double>()) m = std::max(m, std::abs(v));
  return m;
}

// |a - b| <= 1e-12 * max(1, |b|): float64 agreement up to rounding.
void require_close(const Tensor& a, const Tensor& b, const std::string& what) {
  INFO(what << ": shapes " << fmt::format("{}", a.shape()) << " vs " << fmt::format("{}", b.shape()));
  CHECK(a.shape() == b.shape());
  if (a.shape() != b.shape()) return;
  double err = max_abs(a.detach() - b.detach()), scale = std::max(1.0, max_abs(b));
  INFO(what << ": max |forward - oracle| = " << err << " (scale " << scale << ")");
  CHECK(err <= 1e-12 * scale);
}

// The entry's floating inputs are the primals; integer inputs (indices) stay fixed.
struct Split {
  std::vector<Tensor> all;
  std::vector<size_t> floating;  // positions of the primals in `all`
};
Split split(const std::vector<Tensor>& ins) {
  Split s{ins, {}};
  for (size_t i = 0; i < ins.size(); ++i)
    if (is_floating(ins[i].dtype())) s.floating.push_back(i);
  return s;
}

// f of the primals only. `shift` (optional, per primal) is added to each primal: closed-over
// leaves that the jvp's tangent stays differentiable in.
TensorFn of_primals(const OpInfo& op, const Split& s, const std::vector<Tensor>& shift = {}) {
  return [&op, s, shift](const std::vector<Tensor>& p) {
    std::vector<Tensor> all = s.all;
    for (size_t k = 0; k < s.floating.size(); ++k)
      all[s.floating[k]] = shift.empty() ? p[k] : p[k] + shift[k];
    return op.fn(all);
  };
}

std::vector<Tensor> random_like(const std::vector<Tensor>& xs, Generator& g) {
  std::vector<Tensor> out;
  for (auto& x : xs) out.push_back(randn(x.shape(), x.dtype(), &g));
  return out;
}

std::string names(const std::map<std::string, std::set<std::string>>& m) {
  std::ostringstream os;
  for (auto& [op, entries] : m) {
    os << "  " << op << " (in:";
    for (auto& e : entries) os << " '" << e << "'";
    os << ")\n";
  }
  return os.str();
}

}  // namespace

TEST_CASE("forward-mode jvp equals the double-vjp jvp for every op in the table", "[jvp]") {
  REQUIRE(op_table().size() > 40);
  std::map<std::string, std::set<std::string>> fallback;
  std::set<std::string> native;
  // One pass over the table (no sections), so the statistics cover every entry.
  for (auto& op : op_table()) {
    INFO("op table entry '" << op.name << "'");
    {
      Generator gen(7);
      Split s = split(op.inputs(gen));
      if (s.floating.empty()) continue;
      std::vector<Tensor> primals;
      for (size_t i : s.floating) primals.push_back(s.all[i]);
      Generator tg(19);
      auto tangents = random_like(primals, tg);
      auto f = of_primals(op, s);
      JvpResult oracle = jvp_double_vjp(f, primals, tangents);
      // By hand, to read the level's statistics; kern::jvp must agree.
      Tensor out, tan;
      {
        EnableGradGuard eg;
        forward_ad::DualLevel level;
        std::vector<Tensor> duals;
        for (size_t k = 0; k < primals.size(); ++k) duals.push_back(forward_ad::make_dual(primals[k], tangents[k]));
        out = f(duals);
        tan = forward_ad::tangent(out);
        auto st = forward_ad::stats();
        for (auto& [name, n] : st.fallback) fallback[name].insert(op.name);
        for (auto& [name, n] : st.native) native.insert(name);
      }
      if (!tan.defined()) tan = zeros_like(out);
      require_close(out, oracle.output, "output");
      require_close(tan, oracle.tangent_out, "tangent");
      JvpResult pub = jvp(f, primals, tangents);
      require_close(pub.tangent_out, oracle.tangent_out, "kern::jvp tangent");
    }
  }
  std::string native_list;
  for (auto& n : native) native_list += " " + n;
  UNSCOPED_INFO("ops with native forward rules:" << native_list);
  UNSCOPED_INFO("ops on the double-vjp fallback:\n" << (fallback.empty() ? std::string("  none\n") : names(fallback)));
  WARN("forward AD: " << native.size() << " ops with native rules, " << fallback.size() << " on the fallback"
                      << (fallback.empty() ? std::string() : ":\n" + names(fallback)));
  for (auto& [name, entries] : fallback) {
    INFO("op '" << name << "' used the fallback and is not on kAllowedFallback");
    CHECK(kAllowedFallback.count(name) == 1);
  }
}

TEST_CASE("gradient of a forward-mode jvp equals the gradient of the double-vjp jvp", "[jvp]") {
  for (auto& op : op_table()) {
    if (!op.gradgrad) continue;
    DYNAMIC_SECTION(op.name) {
      Generator gen(7);
      Split s = split(op.inputs(gen));
      if (s.floating.empty()) continue;
      // primals are zeros, the op sees leaf + primal: J(leaf) t is differentiable in the leaves.
      std::vector<Tensor> primals, leafs;
      for (size_t i : s.floating) {
        primals.push_back(zeros_like(s.all[i]));
        leafs.push_back(s.all[i].detach().requires_grad_(true));
      }
      Generator tg(19);
      auto tangents = random_like(primals, tg);
      auto f = of_primals(op, s, leafs);
      auto grads_of = [&](const JvpResult& r) {
        Generator cg(23);
        Tensor c = randn(r.tangent_out.shape(), r.tangent_out.dtype(), &cg);
        Tensor l = sum(r.tangent_out * c);
        std::vector<Tensor> g;
        if (l.requires_grad()) g = grad({l}, leafs, {}, {.allow_unused = true});
        else g.resize(leafs.size());
        for (size_t k = 0; k < g.size(); ++k)
          if (!g[k].defined()) g[k] = zeros_like(leafs[k].detach());
        return g;
      };
      auto fwd = grads_of(jvp(f, primals, tangents, true));
      auto ref = grads_of(jvp_double_vjp(f, primals, tangents, true));
      for (size_t k = 0; k < fwd.size(); ++k) require_close(fwd[k], ref[k], "d<Jt, c>/d input " + std::to_string(k));
    }
  }
}

TEST_CASE("forward-over-reverse hvp equals the double-backward hvp", "[jvp]") {
  for (auto& op : op_table()) {
    if (!op.gradgrad) continue;
    DYNAMIC_SECTION(op.name) {
      Generator gen(7);
      Split s = split(op.inputs(gen));
      if (s.floating.empty()) continue;
      std::vector<Tensor> primals;
      for (size_t i : s.floating) primals.push_back(s.all[i]);
      auto f = of_primals(op, s);
      Generator cg(23);
      Tensor c;
      {
        NoGradGuard ng;
        c = randn(f(primals).shape(), DType::Float64, &cg);
      }
      TensorFn scalar = [&](const std::vector<Tensor>& p) { return sum(f(p) * c); };
      Generator vg(29);
      auto v = random_like(primals, vg);
      auto fwd = hvp_forward_over_reverse(scalar, primals, v);
      auto ref = hvp(scalar, primals, v);
      for (size_t k = 0; k < fwd.hvp.size(); ++k) require_close(fwd.hvp[k], ref.hvp[k], "Hv " + std::to_string(k));
    }
  }
}

TEST_CASE("jvp: no dependence gives zeros, bad tangents name the argument, grad mode is restored", "[jvp]") {
  Tensor x = randn({3}, DType::Float64);
  Tensor c = randn({2}, DType::Float64);
  auto r = jvp([&](const std::vector<Tensor>&) { return c * 2.0; }, {x}, {ones_like(x)});
  REQUIRE(r.tangent_out.shape() == Shape{2});
  REQUIRE(max_abs(r.tangent_out) == 0.0);
  auto id = [](const std::vector<Tensor>& p) { return p[0] * 1.0; };
  REQUIRE_THROWS_WITH(jvp(id, {x}, {ones({4}, DType::Float64)}),
                      Catch::Contains("jvp: tangent 0"));
  REQUIRE_THROWS_WITH(jvp(id, {x}, {ones({3}, DType::Float32)}),
                      Catch::Contains("jvp: tangent 0"));
  {
    NoGradGuard ng;
    auto r2 = jvp([](const std::vector<Tensor>& p) { return sin(p[0]); }, {x}, {ones_like(x)});
    require_close(r2.tangent_out, cos(x), "jvp under NoGradGuard");
    REQUIRE_FALSE(grad_mode_enabled());
  }
  REQUIRE_FALSE(forward_ad::level_active());
}

namespace {
// Custom ops recorded without a forward rule: their tangents come from the fallback.
// cube(x) = x^3 (dx = 3 x^2 g);  badd(a, b) = a + b with broadcasting, whose backward returns
// gradients at the output's shape (the engine reduces them), as built-in backwards may.
Tensor cube(const Tensor& x) {
  Tensor out;
  {
    NoGradGuard ng;
    out = x * x * x;
  }
  return record_op("test_cube", out, {x}, [](const BackwardContext& c) {
    return std::vector<Tensor>{c.grad * c.inputs[0] * c.inputs[0] * 3.0};
  });
}
Tensor badd(const Tensor& a, const Tensor& b) {
  Tensor out;
  {
    NoGradGuard ng;
    out = a + b;
  }
  return record_op("test_badd", out, {a, b}, [](const BackwardContext& c) {
    return std::vector<Tensor>{c.grad, c.grad};
  });
}
}  // namespace

TEST_CASE("forward AD: ops without a rule take the local double-vjp fallback, exactly", "[jvp]") {
  Generator g(3);
  Tensor a = randn({3, 1}, DType::Float64, &g), b = randn({4}, DType::Float64, &g);
  Tensor ta = randn({3, 1}, DType::Float64, &g), tb = randn({4}, DType::Float64, &g);
  TensorFn f = [](const std::vector<Tensor>& p) { return cube(badd(p[0], p[1])) * p[1]; };
  auto ref = jvp_double_vjp(f, {a, b}, {ta, tb});
  // J t by hand: d[(a+b)^3 b] = 3 (a+b)^2 (ta+tb) b + (a+b)^3 tb
  Tensor s = a + b;
  require_close(ref.tangent_out, s * s * (ta + tb) * b * 3.0 + s * s * s * tb, "oracle vs closed form");
  forward_ad::Stats st;
  Tensor t;
  {
    EnableGradGuard eg;
    forward_ad::DualLevel level;
    Tensor out = f({forward_ad::make_dual(a, ta), forward_ad::make_dual(b, tb)});
    t = forward_ad::tangent(out);
    st = forward_ad::stats();
  }
  require_close(t, ref.tangent_out, "fallback tangent");
  REQUIRE(st.fallback.count("test_cube") == 1);
  REQUIRE(st.fallback.count("test_badd") == 1);
  REQUIRE(st.native.count("mul") == 1);
  // and second order through the fallback (create_graph): d<Jt, c>/da with a closed over
  Tensor leaf = a.detach().requires_grad_(true);
  TensorFn h = [&](const std::vector<Tensor>& p) { return cube(badd(leaf + p[0], p[1])); };
  auto grad_of = [&](const JvpResult& r) { return grad({sum(r.tangent_out)}, {leaf})[0]; };
  require_close(grad_of(jvp(h, {zeros_like(a), b}, {ta, tb}, true)),
                grad_of(jvp_double_vjp(h, {zeros_like(a), b}, {ta, tb}, true)), "grad through the fallback");
}

TEST_CASE("jvp of a function that calls jvp, and forward-over-reverse by hand", "[jvp]") {
  Generator g(5);
  Tensor x = randn({4}, DType::Float64, &g), v = randn({4}, DType::Float64, &g), u = randn({4}, DType::Float64, &g);
  TensorFn f = [](const std::vector<Tensor>& p) { return p[0] * p[0] * p[0]; };
  // inner: 3 x^2 v; outer, along u: 6 x v u
  TensorFn inner = [&](const std::vector<Tensor>& p) { return jvp(f, p, {v}).tangent_out; };
  auto r = jvp(inner, {x}, {u});
  require_close(r.output, x * x * v * 3.0, "inner jvp");
  require_close(r.tangent_out, x * v * u * 6.0, "jvp of jvp");
  // hvp of sum(sin(x) x) = jvp of its gradient: H = diag(2 cos x - x sin x)
  TensorFn gradient = [](const std::vector<Tensor>& p) {
    Tensor xi = p[0];
    xi.requires_grad_(true);
    return grad({sum(sin(xi) * xi)}, {xi}, {}, {.create_graph = true})[0];
  };
  auto h = jvp(gradient, {x}, {u});
  require_close(h.tangent_out, (cos(x) * 2.0 - x * sin(x)) * u, "forward-over-reverse by hand");
}

TEST_CASE("the gradient of a jvp in its tangents is the vjp (tools::linearize's case)", "[jvp]") {
  // d<J t, c>/dt = J^T c: the forward rules, recorded with create_graph, transpose exactly.
  for (auto& op : op_table()) {
    DYNAMIC_SECTION(op.name) {
      Generator gen(7);
      Split s = split(op.inputs(gen));
      if (s.floating.empty()) continue;
      std::vector<Tensor> primals;
      for (size_t i : s.floating) primals.push_back(s.all[i]);
      Generator tg(19);
      auto tangents = random_like(primals, tg);
      for (auto& t : tangents) t.requires_grad_(true);
      auto f = of_primals(op, s);
      JvpResult r = jvp(f, primals, tangents, true);
      Generator cg(23);
      Tensor c = randn(r.tangent_out.shape(), r.tangent_out.dtype(), &cg);
      Tensor l = sum(r.tangent_out * c);
      std::vector<Tensor> g(tangents.size());
      if (l.requires_grad()) g = grad({l}, tangents, {}, {.allow_unused = true});
      auto ref = vjp(f, primals, c);
      for (size_t k = 0; k < g.size(); ++k)
        require_close(g[k].defined() ? g[k] : zeros_like(primals[k]), ref.grads[k],
                      "d<Jt, c>/dt " + std::to_string(k));
    }
  }
}
