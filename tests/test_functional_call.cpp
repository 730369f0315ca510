// nn::functional_call: a module evaluated with substitute parameters and buffers
// (torch.func.functional_call), and derivatives with respect to the substitutes.
#include "gradcheck.hpp"

#include <kern/functional.hpp>
#include <kern/nn/nn.hpp>
#include <kern/param/param.hpp>

#include <map>
#include <stdexcept>

using namespace kern;

namespace {

// [N, 3] -> [N, 2]; names 0.weight, 0.bias, 2.weight, 2.bias.
std::shared_ptr<nn::Sequential> mlp(DType dtype = DType::Float32) {
  auto m = std::make_shared<nn::Sequential>(nn::Linear(3, 5), nn::Tanh(), nn::Linear(5, 2));
  m->to(dtype);
  return m;
}

// [N, 2, 4, 4] -> [N, 2]; names 0.weight, 0.bias, 3.weight, 3.bias.
std::shared_ptr<nn::Sequential> convnet(DType dtype = DType::Float32) {
  auto m = std::make_shared<nn::Sequential>(nn::Conv2d(nn::Conv2dOptions(2, 3, 3).padding(1)), nn::Tanh(),
                                            nn::Flatten(), nn::Linear(3 * 4 * 4, 2));
  m->to(dtype);
  return m;
}

// Fresh random tensors shaped like the module's parameters (detached, no grad).
std::map<std::string, Tensor> random_like_params(const nn::Module& m, uint64_t seed) {
  Generator gen(seed);
  std::map<std::string, Tensor> out;
  for (auto& [n, p] : m.named_parameters()) out[n] = randn(p.shape(), p.dtype(), &gen) * 0.5;
  return out;
}

// Deep copies of the module's current values, to compare against after a call.
std::vector<std::pair<std::string, Tensor>> snapshot(const nn::Module& m) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [n, t] : m.state_dict()) out.emplace_back(n, t.clone());
  return out;
}

void require_unchanged(const nn::Module& m, const std::vector<std::pair<std::string, Tensor>>& before) {
  auto now = m.state_dict();
  REQUIRE(now.size() == before.size());
  for (size_t i = 0; i < now.size(); ++i) {
    INFO(now[i].first);
    REQUIRE(now[i].second.shape() == before[i].second.shape());
    REQUIRE(now[i].second.dtype() == before[i].second.dtype());
    REQUIRE(max_abs_diff(now[i].second, before[i].second) == 0.0);
  }
  for (auto& [n, p] : m.named_parameters()) {
    INFO(n);
    REQUIRE(p.is_leaf());
    REQUIRE(p.requires_grad());
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no kern::Error thrown)";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("functional_call: the module's own tensors give the ordinary forward", "[nn][functional_call]") {
  manual_seed(0);
  auto m = mlp();
  Tensor x = randn({4, 3});
  Tensor want = (*m)(x);
  // The live handles (identity: no swap at all) ...
  std::map<std::string, Tensor> own;
  for (auto& [n, p] : m->named_parameters()) own[n] = p;
  REQUIRE(max_abs_diff(nn::functional_call(*m, own, x), want) == 0.0);
  // ... and the detached state_dict handles (a real swap), strict.
  Tensor got = nn::functional_call(*m, m->state_dict(), x, {.strict = true});
  REQUIRE(max_abs_diff(got, want) == 0.0);
  REQUIRE_FALSE(got.requires_grad());  // state_dict tensors are detached: no graph to anything
  // Nothing given: the plain forward.
  REQUIRE(max_abs_diff(nn::functional_call(*m, nn::StateDict{}, x), want) == 0.0);
}

TEST_CASE("functional_call: substitutes give the output of a module loaded with them", "[nn][functional_call]") {
  manual_seed(1);
  for (auto make : {&mlp, &convnet}) {
    auto a = make(DType::Float32);
    auto b = make(DType::Float32);
    auto sub = random_like_params(*a, 7);
    b->load_state_dict(sub);
    const bool conv = a->size() == 4;
    Tensor x = conv ? randn({2, 2, 4, 4}) : randn({4, 3});
    auto before = snapshot(*a);
    Tensor got = nn::functional_call(*a, sub, x);
    REQUIRE(max_abs_diff(got, (*b)(x)) < 1e-6);
    require_unchanged(*a, before);
    // The module computes with its own tensors again.
    REQUIRE(max_abs_diff((*a)(x), nn::functional_call(*a, a->state_dict(), x)) == 0.0);
  }
}

TEST_CASE("functional_call: gradients reach the substitutes, not the module's parameters", "[nn][functional_call]") {
  manual_seed(2);
  auto a = convnet(DType::Float64);
  auto b = convnet(DType::Float64);
  auto sub = random_like_params(*a, 11);
  b->load_state_dict(sub);
  for (auto& [n, t] : sub) t.requires_grad_(true);
  Tensor x = randn({3, 2, 4, 4}, DType::Float64);
  Tensor y = randn({3, 2}, DType::Float64);

  mse_loss(nn::functional_call(*a, sub, x), y).backward();
  mse_loss((*b)(x), y).backward();
  for (auto& [n, p] : b->named_parameters()) {
    INFO(n);
    REQUIRE(sub[n].grad().defined());
    REQUIRE(max_abs_diff(sub[n].grad(), p.grad()) < 1e-12);
  }
  for (auto& [n, p] : a->named_parameters()) {
    INFO(n);
    REQUIRE_FALSE(p.grad().defined());
  }

  // kern::grad with the substitutes as inputs gives the same.
  std::vector<Tensor> ps;
  for (auto& [n, p] : b->named_parameters()) ps.push_back(sub[n]);
  auto g = grad({mse_loss(nn::functional_call(*a, sub, x), y)}, ps);
  size_t i = 0;
  for (auto& [n, p] : b->named_parameters()) REQUIRE(max_abs_diff(g[i++], p.grad()) < 1e-12);
}

TEST_CASE("functional_call: names not given keep the module's own tensors (and get gradients)",
          "[nn][functional_call]") {
  manual_seed(3);
  auto a = mlp(DType::Float64);
  auto b = mlp(DType::Float64);
  b->load_state_dict(a->state_dict());
  Tensor w = randn({2, 5}, DType::Float64).requires_grad_(true);
  {
    NoGradGuard ng;
    b->get_parameter("2.weight").copy_(w);
  }
  Tensor x = randn({4, 3}, DType::Float64);
  Tensor out = nn::functional_call(*a, std::map<std::string, Tensor>{{"2.weight", w}}, x);
  REQUIRE(max_abs_diff(out, (*b)(x)) < 1e-12);
  sum(out * out).backward();
  sum((*b)(x) * (*b)(x)).backward();
  REQUIRE(max_abs_diff(w.grad(), b->get_parameter("2.weight").grad()) < 1e-12);
  REQUIRE_FALSE(a->get_parameter("2.weight").grad().defined());
  REQUIRE(max_abs_diff(a->get_parameter("0.weight").grad(), b->get_parameter("0.weight").grad()) < 1e-12);
}

TEST_CASE("functional_call: substitutes computed from the module's own parameters", "[nn][functional_call]") {
  // w' = w + d: the gradient must reach both d and (through the pre-existing graph of w') the
  // module's own w, exactly once.
  manual_seed(4);
  auto a = mlp(DType::Float64);
  Tensor x = randn({4, 3}, DType::Float64);
  Tensor d = randn({5, 3}, DType::Float64).requires_grad_(true);
  Tensor w = a->get_parameter("0.weight");
  Tensor out = nn::functional_call(*a, std::map<std::string, Tensor>{{"0.weight", w + d}}, x);
  auto g = grad({sum(out)}, {d, w});
  REQUIRE(max_abs_diff(g[0], g[1]) < 1e-12);
  // Reference: a module whose 0.weight holds w + d.
  auto b = mlp(DType::Float64);
  b->load_state_dict(a->state_dict());
  {
    NoGradGuard ng;
    b->get_parameter("0.weight").copy_(w + d);
  }
  sum((*b)(x)).backward();
  REQUIRE(max_abs_diff(g[0], b->get_parameter("0.weight").grad()) < 1e-12);

  // An input computed from the module's own weight before the call keeps that dependency
  // (the graph recorded before the call is not redirected to the substitute).
  Tensor s = randn({5, 3}, DType::Float64).requires_grad_(true);
  Tensor xw = x * mean(w);
  Tensor out2 = nn::functional_call(*a, std::map<std::string, Tensor>{{"0.weight", s}}, xw);
  auto g2 = grad({sum(out2)}, {w, s});
  auto c = mlp(DType::Float64);
  c->load_state_dict(a->state_dict());
  {
    NoGradGuard ng;
    c->get_parameter("0.weight").copy_(s);
  }
  Tensor wc = w.detach().clone().requires_grad_(true);
  Tensor outc = (*c)(x * mean(wc));
  auto gc = grad({sum(outc)}, {wc, c->get_parameter("0.weight")});
  REQUIRE(max_abs_diff(out2, outc) < 1e-12);
  REQUIRE(max_abs_diff(g2[0], gc[0]) < 1e-12);
  REQUIRE(max_abs_diff(g2[1], gc[1]) < 1e-12);
}

TEST_CASE("functional_call: float64 gradcheck and gradgradcheck w.r.t. the parameters", "[nn][functional_call][gradcheck][gradgradcheck]") {
  manual_seed(5);
  for (auto make : {&mlp, &convnet}) {
    auto m = make(DType::Float64);
    const bool conv = m->size() == 4;
    Tensor x = conv ? randn({2, 2, 4, 4}, DType::Float64) : randn({3, 3}, DType::Float64);
    std::vector<std::string> names;
    std::vector<Tensor> params;
    for (auto& [n, p] : m->named_parameters()) {
      names.push_back(n);
      params.push_back(p.detach().clone());
    }
    testing::Fn f = [&](const std::vector<Tensor>& ps) {
      nn::StateDict sd;
      for (size_t i = 0; i < ps.size(); ++i) sd.emplace_back(names[i], ps[i]);
      return nn::functional_call(*m, sd, x, {.strict = true});
    };
    KERN_GRADCHECK(f, params);
    KERN_GRADGRADCHECK(f, params);
    for (auto& p : m->parameters()) REQUIRE_FALSE(p.grad().defined());
  }
}

TEST_CASE("functional_call: kern::hvp and jvp w.r.t. the parameters match finite differences", "[nn][functional_call]") {
  manual_seed(6);
  auto m = convnet(DType::Float64);
  Tensor x = randn({3, 2, 4, 4}, DType::Float64);
  Tensor y = randn({3, 2}, DType::Float64);
  std::vector<std::string> names;
  std::vector<Tensor> params, v;
  Generator gen(99);
  for (auto& [n, p] : m->named_parameters()) {
    names.push_back(n);
    params.push_back(p.detach().clone());
    v.push_back(randn(p.shape(), DType::Float64, &gen));
  }
  auto loss_at = [&](const std::vector<Tensor>& ps) {
    std::map<std::string, Tensor> sub;
    for (size_t i = 0; i < ps.size(); ++i) sub[names[i]] = ps[i];
    return mse_loss(nn::functional_call(*m, sub, x), y);
  };
  auto grads_at = [&](double t) {
    std::vector<Tensor> ps;
    for (size_t i = 0; i < params.size(); ++i) ps.push_back((params[i] + v[i] * t).detach().requires_grad_(true));
    return grad({loss_at(ps)}, ps);
  };
  auto h = hvp(loss_at, params, v);
  const double eps = 1e-5;
  auto gp = grads_at(eps), gm = grads_at(-eps);
  for (size_t i = 0; i < params.size(); ++i) {
    INFO(names[i]);
    Tensor fd = (gp[i] - gm[i]) / (2 * eps);
    REQUIRE(max_abs_diff(h.hvp[i], fd) < 1e-6 * (1 + max_abs_diff(fd, zeros_like(fd))));
  }
  REQUIRE(max_abs_diff(h.output, loss_at(params)) < 1e-12);

  // jvp of the network output along v: central differences of the output.
  TensorFn out_at = [&](const std::vector<Tensor>& ps) {
    std::map<std::string, Tensor> sub;
    for (size_t i = 0; i < ps.size(); ++i) sub[names[i]] = ps[i];
    return nn::functional_call(*m, sub, x);
  };
  auto jv = jvp(out_at, params, v);
  std::vector<Tensor> pp, pm;
  for (size_t i = 0; i < params.size(); ++i) {
    pp.push_back(params[i] + v[i] * eps);
    pm.push_back(params[i] - v[i] * eps);
  }
  Tensor fd = (out_at(pp) - out_at(pm)) / (2 * eps);
  REQUIRE(max_abs_diff(jv.tangent_out, fd) < 1e-7);
  for (auto& p : m->parameters()) REQUIRE_FALSE(p.grad().defined());
}

TEST_CASE("functional_call: the module is restored when forward or a hook throws", "[nn][functional_call][errors]") {
  manual_seed(7);
  auto m = mlp();
  Tensor x = randn({4, 3});
  Tensor want = (*m)(x);
  auto before = snapshot(*m);
  auto sub = random_like_params(*m, 3);
  for (auto& [n, t] : sub) t.requires_grad_(true);
  // Forward throws: the input has the wrong width for the first Linear.
  std::string msg = error_of([&] { nn::functional_call(*m, sub, randn({4, 7})); });
  REQUIRE(contains(msg, "Linear"));
  require_unchanged(*m, before);
  REQUIRE(max_abs_diff((*m)(x), want) == 0.0);

  // A hook throws a non-kern exception after forward ran with the substitutes.
  const nn::HookId id = (*m)[2]->register_forward_hook([](nn::Module&, const Tensor&, const Tensor&) {
    throw std::runtime_error("hook failed");
  });
  REQUIRE_THROWS_AS(nn::functional_call(*m, sub, x), std::runtime_error);
  require_unchanged(*m, before);
  REQUIRE((*m)[2]->remove_hook(id));
  REQUIRE(max_abs_diff((*m)(x), want) == 0.0);
  // ... and the module still works with substitutes afterwards.
  auto b = mlp();
  b->load_state_dict(sub);
  REQUIRE(max_abs_diff(nn::functional_call(*m, sub, x), (*b)(x)) < 1e-6);
}

TEST_CASE("functional_call: hooks run and see the substitutes", "[nn][functional_call]") {
  manual_seed(8);
  auto m = mlp();
  auto sub = random_like_params(*m, 5);
  Tensor x = randn({2, 3});
  int pre = 0, post = 0;
  double seen_diff = -1;
  auto lin = (*m)[0];
  lin->register_forward_pre_hook([&](nn::Module& mod, const Tensor&) {
    ++pre;
    seen_diff = max_abs_diff(mod.get_parameter("weight"), sub["0.weight"]);
  });
  // A post hook that changes the output: the result must include it.
  m->register_forward_hook([&](nn::Module&, const Tensor&, const Tensor& y) {
    ++post;
    return y * 2.0;
  });
  auto b = mlp();
  b->load_state_dict(sub);
  Tensor got = nn::functional_call(*m, sub, x);
  REQUIRE(pre == 1);
  REQUIRE(post == 1);
  REQUIRE(seen_diff == 0.0);
  REQUIRE(max_abs_diff(got, (*b)(x) * 2.0) < 1e-6);
}

TEST_CASE("functional_call: a callable for other entry points and losses", "[nn][functional_call]") {
  manual_seed(9);
  auto m = mlp(DType::Float64);
  auto sub = random_like_params(*m, 21);
  for (auto& [n, t] : sub) t.requires_grad_(true);
  Tensor x = randn({4, 3}, DType::Float64);
  auto b = mlp(DType::Float64);
  b->load_state_dict(sub);
  // Call only the first layer, through the parent's substitution.
  Tensor h = nn::functional_call(*m, sub, [&](nn::Module&) { return (*m->at<nn::Linear>(0))(x); });
  REQUIRE(max_abs_diff(h, (*(*b)[0])(x)) < 1e-12);
  // A loss computed inside, returning a parameter directly works too.
  Tensor w = nn::functional_call(*m, sub, [](nn::Module& mm) { return mm.get_parameter("2.weight"); });
  REQUIRE(w.impl_ptr() == sub["2.weight"].impl_ptr());
  Tensor l = nn::functional_call(*m, sub, [&](nn::Module& mm) { return sum(mm(x)) + sum(mm.get_parameter("2.bias")); });
  l.backward();
  (sum((*b)(x)) + sum(b->get_parameter("2.bias"))).backward();
  REQUIRE(max_abs_diff(sub["2.bias"].grad(), b->get_parameter("2.bias").grad()) < 1e-12);
  REQUIRE(max_abs_diff(sub["0.weight"].grad(), b->get_parameter("0.weight").grad()) < 1e-12);
}

TEST_CASE("functional_call: BatchNorm running statistics go to the given buffers", "[nn][functional_call]") {
  manual_seed(10);
  auto make = [] {
    return std::make_shared<nn::Sequential>(nn::Conv2d(nn::Conv2dOptions(2, 3, 3).padding(1)),
                                            nn::BatchNorm2d(3));
  };
  auto a = make();
  auto b = make();
  b->load_state_dict(a->state_dict());
  Tensor x = randn({4, 2, 5, 5});
  auto before = snapshot(*a);

  // Training mode, buffers given: updates land in the given buffers, the module's stay put.
  std::map<std::string, Tensor> bufs{{"1.running_mean", zeros({3})},
                                     {"1.running_var", ones({3})},
                                     {"1.num_batches_tracked", zeros({}, DType::Int64)}};
  Tensor got = nn::functional_call(*a, bufs, x);
  Tensor want = (*b)(x);  // b updates its own buffers the same way
  REQUIRE(max_abs_diff(got, want) < 1e-6);
  require_unchanged(*a, before);
  REQUIRE(max_abs_diff(bufs["1.running_mean"], b->get_buffer("1.running_mean")) < 1e-7);
  REQUIRE(max_abs_diff(bufs["1.running_var"], b->get_buffer("1.running_var")) < 1e-7);
  REQUIRE(bufs["1.num_batches_tracked"].item() == 1);
  REQUIRE(max_abs_diff(b->get_buffer("1.running_mean"), zeros({3})) > 0);

  // Buffers not given: the module's own are updated, as by a plain forward.
  std::map<std::string, Tensor> sub;
  for (auto& [n, p] : a->named_parameters()) sub[n] = p.detach().clone().requires_grad_(true);
  nn::functional_call(*a, sub, x);
  REQUIRE(a->get_buffer("1.num_batches_tracked").item() == 1);
  REQUIRE(max_abs_diff(a->get_buffer("1.running_mean"), b->get_buffer("1.running_mean")) < 1e-7);

  // Eval mode reads the given statistics.
  a->eval();
  b->eval();
  std::map<std::string, Tensor> stats{{"1.running_mean", randn({3})}, {"1.running_var", rand({3}) + 0.5}};
  b->load_state_dict(stats, false);
  REQUIRE(max_abs_diff(nn::functional_call(*a, stats, x), (*b)(x)) < 1e-5);
}

TEST_CASE("functional_call: parameterization multipliers keep applying", "[nn][functional_call]") {
  manual_seed(11);
  for (auto preset : {param::Preset::ntk(), param::Preset::mup(64, 16)}) {
    auto make = [] {
      return std::make_shared<nn::Sequential>(nn::Conv2d(nn::Conv2dOptions(2, 64, 3).padding(1)), nn::ReLU(),
                                              nn::Flatten(), nn::Linear(64 * 16, 64), nn::ReLU(),
                                              nn::Linear(64, 3));
    };
    auto a = make(), b = make();
    param::apply(*a, preset);
    param::apply(*b, preset);
    auto rs = param::records(*a);
    bool non_unit = false;
    for (auto& [n, r] : rs) non_unit = non_unit || r.forward_multiplier() != 1.0;
    REQUIRE(non_unit);
    Tensor x = randn({2, 2, 4, 4});
    REQUIRE(max_abs_diff(nn::functional_call(*a, a->state_dict(), x), (*a)(x)) == 0.0);
    auto sub = random_like_params(*a, 13);
    b->load_state_dict(sub);
    REQUIRE(max_abs_diff(nn::functional_call(*a, sub, x), (*b)(x)) < 1e-5);
  }
}

TEST_CASE("functional_call: tied tensors are replaced under every name", "[nn][functional_call]") {
  struct Tied : nn::Module {
    Tied() {
      enc = register_module("enc", std::make_shared<nn::Linear>(nn::LinearOptions(3, 3).bias(false)));
      dec = register_module("dec", std::make_shared<nn::Linear>(nn::LinearOptions(3, 3).bias(false)));
      dec->weight = dec->register_parameter("weight", enc->weight.tensor());  // tied
    }
    Tensor forward(const Tensor& x) override { return (*dec)((*enc)(x)); }
    std::shared_ptr<nn::Linear> enc, dec;
  };
  manual_seed(12);
  Tied m;
  REQUIRE(m.named_parameters().size() == 1);
  Tensor x = randn({2, 3});
  Tensor w = randn({3, 3});
  Tensor want = matmul(matmul(x, w.t()), w.t());
  REQUIRE(max_abs_diff(nn::functional_call(m, std::map<std::string, Tensor>{{"dec.weight", w}}, x), want) < 1e-6);
  REQUIRE(max_abs_diff(nn::functional_call(m, nn::StateDict{{"enc.weight", w}, {"dec.weight", w}}, x, {.strict = true}),
                       want) < 1e-6);
  std::string msg = error_of(
      [&] { nn::functional_call(m, nn::StateDict{{"enc.weight", w}, {"dec.weight", w.clone()}}, x); });
  REQUIRE(contains(msg, "enc.weight"));
  REQUIRE(contains(msg, "dec.weight"));
  REQUIRE(contains(msg, "tied"));
}

TEST_CASE("functional_call: bad names, shapes and dtypes are listed in one error", "[nn][functional_call][errors]") {
  manual_seed(13);
  auto m = mlp();
  Tensor x = randn({2, 3});
  auto before = snapshot(*m);

  std::string msg = error_of([&] {
    nn::functional_call(*m, std::map<std::string, Tensor>{{"0.wieght", randn({5, 3})}}, x);
  });
  INFO(msg);
  CHECK(contains(msg, "functional_call"));
  CHECK(contains(msg, "unknown names"));
  CHECK(contains(msg, "0.wieght"));

  msg = error_of([&] {
    nn::functional_call(*m, std::map<std::string, Tensor>{{"0.weight", randn({3, 5})}, {"2.bias", randn({2}, DType::Float64)}}, x);
  });
  INFO(msg);
  CHECK(contains(msg, "0.weight: expected float32 [5, 3], got float32 [3, 5]"));
  CHECK(contains(msg, "2.bias: expected float32 [2], got float64 [2]"));

  msg = error_of([&] { nn::functional_call(*m, std::map<std::string, Tensor>{{"2.bias", Tensor()}}, x); });
  INFO(msg);
  CHECK(contains(msg, "2.bias"));
  CHECK(contains(msg, "undefined"));

  auto partial = random_like_params(*m, 1);
  partial.erase("2.bias");
  msg = error_of([&] { nn::functional_call(*m, partial, x, {.strict = true}); });
  INFO(msg);
  CHECK(contains(msg, "missing names (1"));
  CHECK(contains(msg, "2.bias"));
  CHECK_FALSE(contains(msg, "0.weight"));

  msg = error_of([&] { nn::functional_call(*m, nn::StateDict{{"2.bias", zeros({2})}, {"2.bias", zeros({2})}}, x); });
  INFO(msg);
  CHECK(contains(msg, "duplicate names"));
  CHECK(contains(msg, "2.bias"));

  // Several problems in one message; nothing ran, nothing changed.
  msg = error_of([&] {
    nn::functional_call(*m, nn::StateDict{{"nope", zeros({1})}, {"0.bias", zeros({4})}}, x, {.strict = true});
  });
  INFO(msg);
  CHECK(contains(msg, "nope"));
  CHECK(contains(msg, "0.bias: expected float32 [5], got float32 [4]"));
  CHECK(contains(msg, "missing names"));
  require_unchanged(*m, before);
}
