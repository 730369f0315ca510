// nn::Module machinery (registration, names, state dicts, hooks, modes, dtype), containers,
// Linear, activations, DropPath and nn::init. Uses only elementwise/linalg/movement ops, so it
// does not depend on the conv/norm/pool/random/loss families (those are in test_nn_layers.cpp).
#include "gradcheck.hpp"

#include <kern/nn/functional_call.hpp>
#include <kern/nn/nn.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <numbers>

using namespace kern;
namespace init = kern::nn::init;

namespace {

// A nested model with timm-like names: stem, stages.{i}.blocks.{j}.{conv_dw, gamma}, head.
struct Block : nn::Module {
  explicit Block(int64_t dim) {
    conv_dw = register_module("conv_dw", std::make_shared<nn::Linear>(dim, dim));
    gamma = register_parameter("gamma", full({dim}, 0.5));
    register_buffer("steps", zeros({}, DType::Int64));
  }
  Tensor forward(const Tensor& x) override { return x + (*conv_dw)(x) * gamma(); }
  std::string name() const override { return "Block"; }
  std::shared_ptr<nn::Linear> conv_dw;
  nn::Param gamma;
};

struct Stage : nn::Module {
  Stage(int64_t dim, int depth) {
    blocks = register_module("blocks", std::make_shared<nn::Sequential>());
    for (int i = 0; i < depth; ++i) blocks->push_back(std::make_shared<Block>(dim));
  }
  Tensor forward(const Tensor& x) override { return (*blocks)(x); }
  std::string name() const override { return "Stage"; }
  std::shared_ptr<nn::Sequential> blocks;
};

struct Net : nn::Module {
  Net() {
    stem = register_module("stem", std::make_shared<nn::Linear>(3, 4));
    stages = register_module("stages", std::make_shared<nn::ModuleList>());
    stages->push_back(std::make_shared<Stage>(4, 2));
    stages->push_back(std::make_shared<Stage>(4, 1));
    head = register_module("head", std::make_shared<nn::Linear>(nn::LinearOptions(4, 2).bias(false)));
    register_buffer("scale", ones({1}));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = (*stem)(x);
    for (auto& s : *stages) h = (*s)(h);
    return (*head)(h);
  }
  std::string name() const override { return "Net"; }
  std::shared_ptr<nn::Linear> stem, head;
  std::shared_ptr<nn::ModuleList> stages;
};

std::vector<std::string> keys(const std::vector<std::pair<std::string, Tensor>>& v) {
  std::vector<std::string> out;
  for (auto& [k, t] : v) out.push_back(k);
  return out;
}

double variance(const Tensor& t) {
  auto v = t.contiguous().to_vector<double>();
  double m = 0, s = 0;
  for (double x : v) m += x;
  m /= static_cast<double>(v.size());
  for (double x : v) s += (x - m) * (x - m);
  return s / static_cast<double>(v.size());
}

}  // namespace

TEST_CASE("named_parameters gives dotted names in registration order", "[nn]") {
  manual_seed(0);
  auto net = std::make_shared<Net>();
  const std::vector<std::string> expected = {
      "stem.weight",
      "stem.bias",
      "stages.0.blocks.0.gamma",
      "stages.0.blocks.0.conv_dw.weight",
      "stages.0.blocks.0.conv_dw.bias",
      "stages.0.blocks.1.gamma",
      "stages.0.blocks.1.conv_dw.weight",
      "stages.0.blocks.1.conv_dw.bias",
      "stages.1.blocks.0.gamma",
      "stages.1.blocks.0.conv_dw.weight",
      "stages.1.blocks.0.conv_dw.bias",
      "head.weight",
  };
  REQUIRE(keys(net->named_parameters()) == expected);
  for (auto& p : net->parameters()) {
    REQUIRE(p.is_leaf());
    REQUIRE(p.requires_grad());
  }
  REQUIRE(keys(net->named_parameters(false)).empty());
  REQUIRE(keys(net->named_buffers()) == std::vector<std::string>{
                                            "scale", "stages.0.blocks.0.steps",
                                            "stages.0.blocks.1.steps", "stages.1.blocks.0.steps"});
  REQUIRE(keys(net->state_dict()).size() == expected.size() + 4);

  std::vector<std::string> children;
  for (auto& [n, m] : net->named_children()) children.push_back(n);
  REQUIRE(children == std::vector<std::string>{"stem", "stages", "head"});
  std::vector<std::string> mods;
  for (auto& [n, m] : net->named_modules()) mods.push_back(n);
  REQUIRE(mods == std::vector<std::string>{
                      "", "stem", "stages", "stages.0", "stages.0.blocks", "stages.0.blocks.0",
                      "stages.0.blocks.0.conv_dw", "stages.0.blocks.1",
                      "stages.0.blocks.1.conv_dw", "stages.1", "stages.1.blocks",
                      "stages.1.blocks.0", "stages.1.blocks.0.conv_dw", "head"});
  REQUIRE(net->named_modules()[0].second.get() == net.get());

  // Dotted lookups reach the same tensors and modules.
  auto blk = std::dynamic_pointer_cast<Block>(net->get_submodule("stages.0.blocks.1"));
  REQUIRE(blk != nullptr);
  REQUIRE(net->get_parameter("stages.0.blocks.1.conv_dw.weight").impl_ptr() ==
          blk->conv_dw->weight.tensor().impl_ptr());
  REQUIRE(net->get_buffer("scale").numel() == 1);
  REQUIRE_THROWS_WITH(net->get_submodule("stages.2"), Catch::Contains("no child '2'"));
  REQUIRE_THROWS_WITH(net->get_parameter("stem.gamma"), Catch::Contains("no parameter 'gamma'"));

  // Forward runs through the whole tree.
  Tensor y = (*net)(randn({5, 3}));
  REQUIRE(y.shape() == Shape{5, 2});
}

TEST_CASE("tied parameters appear once in named_parameters, under every name in state_dict",
          "[nn]") {
  auto a = std::make_shared<nn::Linear>(4, 4);
  auto b = std::make_shared<nn::Linear>(4, 4);
  b->weight = b->register_parameter("weight", a->weight.tensor());  // tie
  nn::Sequential seq(a, b);
  REQUIRE(keys(seq.named_parameters()) ==
          std::vector<std::string>{"0.weight", "0.bias", "1.bias"});
  REQUIRE(keys(seq.state_dict()) ==
          std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias"});
}

TEST_CASE("registration rejects bad names and clashes", "[nn][errors]") {
  nn::Module m;
  m.register_parameter("w", zeros({2}));
  REQUIRE_THROWS_WITH(m.register_buffer("w", zeros({2})), Catch::Contains("already a parameter"));
  REQUIRE_THROWS_WITH(m.register_module("w", std::make_shared<nn::ReLU>()),
                      Catch::Contains("already a parameter"));
  REQUIRE_THROWS_WITH(m.register_parameter("a.b", zeros({2})), Catch::Contains("must not contain '.'"));
  REQUIRE_THROWS_WITH(m.register_parameter("", zeros({2})), Catch::Contains("must not be empty"));
  REQUIRE_THROWS_WITH(m.register_parameter("i", zeros({2}, DType::Int64)),
                      Catch::Contains("floating point"));
  // Re-registering a parameter replaces it in place (same position).
  m.register_parameter("v", zeros({3}));
  m.register_parameter("w", ones({5}));
  REQUIRE(keys(m.named_parameters()) == std::vector<std::string>{"w", "v"});
  REQUIRE(m.get_parameter("w").shape() == Shape{5});
  // A non-leaf is detached into a leaf.
  Tensor base = randn({2}).requires_grad_();
  Tensor p = m.register_parameter("derived", base * 2.0).tensor();
  REQUIRE(p.is_leaf());
  REQUIRE(p.requires_grad());
  REQUIRE_THROWS_WITH(m(zeros({1})), Catch::Contains("forward() is not implemented"));
}

TEST_CASE("state_dict round trip copies values in place", "[nn]") {
  manual_seed(1);
  auto a = std::make_shared<Net>();
  manual_seed(2);
  auto b = std::make_shared<Net>();
  a->get_buffer("stages.1.blocks.0.steps").fill_(7);
  Tensor b_stem = b->stem->weight.tensor();
  REQUIRE(max_abs_diff(a->stem->weight.tensor(), b->stem->weight.tensor()) > 0);

  auto sd = a->state_dict();
  // Own parameters and buffers first (Net has the buffer "scale"), then each child's.
  REQUIRE(sd[0].first == "scale");
  REQUIRE(sd[1].first == "stem.weight");
  REQUIRE_FALSE(sd[1].second.requires_grad());  // detached views
  REQUIRE(sd[1].second.shares_storage(a->stem->weight.tensor()));
  auto result = b->load_state_dict(sd);
  REQUIRE(result.ok());
  auto sa = a->state_dict(), sb = b->state_dict();
  REQUIRE(keys(sa) == keys(sb));
  for (size_t i = 0; i < sa.size(); ++i) {
    INFO(sa[i].first);
    REQUIRE(sa[i].second.dtype() == sb[i].second.dtype());
    REQUIRE(max_abs_diff(sa[i].second, sb[i].second) == 0.0);
  }
  // In place: b's tensors keep their identity and requires_grad; storage is not shared with a.
  REQUIRE(b->stem->weight.tensor().impl_ptr() == b_stem.impl_ptr());
  REQUIRE(b->stem->weight.tensor().requires_grad());
  REQUIRE_FALSE(b->stem->weight.tensor().shares_storage(a->stem->weight.tensor()));
  REQUIRE(b->get_buffer("stages.1.blocks.0.steps").item() == 7);

  // Outputs agree.
  Tensor x = randn({4, 3});
  REQUIRE(max_abs_diff((*a)(x), (*b)(x)) == 0.0);

  // A std::map (any range of pairs) loads too.
  std::map<std::string, Tensor> as_map(sd.begin(), sd.end());
  REQUIRE(b->load_state_dict(as_map).ok());
}

TEST_CASE("strict load_state_dict reports every missing, unexpected and mis-shaped key at once",
          "[nn][errors]") {
  manual_seed(3);
  auto net = std::make_shared<Net>();
  const Tensor before = net->stem->weight.tensor().clone().detach();
  nn::StateDict sd;
  for (auto& [k, t] : net->state_dict()) {
    if (k == "stages.0.blocks.1.gamma") continue;                         // missing
    if (k == "head.weight") sd.emplace_back(k, zeros({3, 4}));            // wrong shape
    else if (k == "stem.weight") sd.emplace_back(k, zeros_like(t));       // valid, must not load
    else sd.emplace_back(k, t);
  }
  sd.emplace_back("stages.0.blocks.1.extra", zeros({2}));  // unexpected

  try {
    net->load_state_dict(sd);
    FAIL("load_state_dict should have thrown");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    REQUIRE_THAT(msg, Catch::Contains("missing keys (1): stages.0.blocks.1.gamma"));
    REQUIRE_THAT(msg, Catch::Contains("unexpected keys (1): stages.0.blocks.1.extra"));
    REQUIRE_THAT(msg, Catch::Contains("head.weight: expected shape [2, 4], got [3, 4]"));
  }
  // Nothing was copied (validation happens first).
  REQUIRE(max_abs_diff(net->stem->weight.tensor(), before) == 0.0);

  // Non-strict: missing/unexpected are returned; a shape mismatch still throws.
  REQUIRE_THROWS_WITH(net->load_state_dict(sd, false),
                      Catch::Contains("head.weight: expected shape [2, 4], got [3, 4]") &&
                          !Catch::Contains("missing keys"));
  for (auto& [k, t] : sd)
    if (k == "head.weight") t = zeros({2, 4});
  auto r = net->load_state_dict(sd, false);
  REQUIRE(r.missing_keys == std::vector<std::string>{"stages.0.blocks.1.gamma"});
  REQUIRE(r.unexpected_keys == std::vector<std::string>{"stages.0.blocks.1.extra"});
  REQUIRE(net->stem->weight.tensor().abs().sum().item() == 0.0);  // the valid keys loaded

  // Duplicate keys are an error in both modes.
  nn::StateDict dup = net->state_dict();
  dup.push_back(dup[1]);
  REQUIRE_THROWS_WITH(net->load_state_dict(dup, false), Catch::Contains("duplicate keys (1): stem.weight"));
}

TEST_CASE("forward hooks fire in order, may replace values and can be removed", "[nn]") {
  auto fc = std::make_shared<nn::Linear>(2, 2);
  auto act = std::make_shared<nn::Tanh>();
  auto seq = std::make_shared<nn::Sequential>(fc, act);
  std::vector<std::string> log;
  auto pre1 = seq->register_forward_pre_hook([&](nn::Module& m, const Tensor&) { log.push_back("pre1:" + m.name()); });
  auto pre2 = seq->register_forward_pre_hook([&](nn::Module&, const Tensor& x) {
    log.push_back("pre2");
    return x * 0.0;  // replaces the input
  });
  auto post1 = seq->register_forward_hook([&](nn::Module&, const Tensor& in, const Tensor& out) {
    log.push_back("post1");
    REQUIRE(in.abs().sum().item() == 0.0);  // sees the replaced input
    return out + 1.0;
  });
  auto post2 = seq->register_forward_hook([&](nn::Module&, const Tensor&, const Tensor& out) {
    log.push_back(fmt::format("post2:{}", out.shape()));
  });
  auto child = fc->register_forward_hook([&](nn::Module& m, const Tensor&, const Tensor&) { log.push_back("child:" + m.name()); });

  Tensor x = ones({1, 2});
  Tensor y = (*seq)(x);
  REQUIRE(log == std::vector<std::string>{"pre1:Sequential", "pre2", "child:Linear", "post1", "post2:[1, 2]"});
  // tanh(fc(0)) + 1 = tanh(bias) + 1.
  REQUIRE(max_abs_diff(y, tanh(fc->bias.tensor()).reshape({1, 2}) + 1.0) < 1e-6);

  // forward() bypasses this module's hooks (children called via operator() still fire).
  log.clear();
  seq->forward(x);
  REQUIRE(log == std::vector<std::string>{"child:Linear"});

  REQUIRE(seq->remove_hook(pre2));
  REQUIRE(seq->remove_hook(post1));
  REQUIRE_FALSE(seq->remove_hook(post1));
  REQUIRE_FALSE(seq->remove_hook(child));  // belongs to fc
  REQUIRE(fc->remove_hook(child));
  log.clear();
  Tensor y2 = (*seq)(x);
  REQUIRE(log == std::vector<std::string>{"pre1:Sequential", "post2:[1, 2]"});
  REQUIRE(max_abs_diff(y2, seq->forward(x)) == 0.0);
  REQUIRE(pre1 != post2);

  // A hook may remove itself while running.
  log.clear();
  nn::HookId self_id = 0;
  self_id = seq->register_forward_hook([&](nn::Module& m, const Tensor&, const Tensor&) {
    log.push_back("once");
    m.remove_hook(self_id);
  });
  (*seq)(x);
  (*seq)(x);
  REQUIRE(std::count(log.begin(), log.end(), "once") == 1);
}

TEST_CASE("train/eval recurse and DropPath is the identity in eval", "[nn]") {
  manual_seed(4);
  auto drop = std::make_shared<nn::DropPath>(0.5);
  auto inner = std::make_shared<nn::Sequential>(std::make_shared<nn::Linear>(3, 3), drop);
  auto outer = std::make_shared<nn::Sequential>(inner, nn::Tanh());
  for (auto& m : outer->modules()) REQUIRE(m->is_training());

  Tensor x = ones({200, 3});
  Tensor y = (*drop)(x);
  // Each sample is dropped whole (all zeros) or kept and scaled by 1 / keep = 2.
  auto v = y.to_vector<double>();
  int dropped = 0;
  for (int i = 0; i < 200; ++i) {
    const double a = v[3 * i];
    REQUIRE((a == 0.0 || a == 2.0));
    REQUIRE(v[3 * i + 1] == a);
    REQUIRE(v[3 * i + 2] == a);
    dropped += a == 0.0;
  }
  REQUIRE(dropped > 60);
  REQUIRE(dropped < 140);

  outer->eval();
  for (auto& m : outer->modules()) REQUIRE_FALSE(m->is_training());
  REQUIRE(max_abs_diff((*drop)(x), x) == 0.0);
  outer->train();
  REQUIRE(drop->is_training());
  REQUIRE(max_abs_diff(nn::DropPath(0.0)(x), x) == 0.0);
  REQUIRE_THROWS_WITH(nn::DropPath(1.5), Catch::Contains("drop_prob must be in [0, 1]"));
}

TEST_CASE("Sequential and ModuleList construction, naming and errors", "[nn]") {
  // By value (moved in), by shared_ptr, and from a vector; children named 0, 1, ...
  nn::Sequential a(nn::Flatten(), nn::Linear(12, 5), nn::ReLU(), std::make_shared<nn::Linear>(5, 2));
  REQUIRE(a.size() == 4);
  REQUIRE(keys(a.named_parameters()) ==
          std::vector<std::string>{"1.weight", "1.bias", "3.weight", "3.bias"});
  REQUIRE(a.at<nn::Linear>(1)->options().in_features() == 12);
  REQUIRE_THROWS_WITH(a.at<nn::Linear>(2), Catch::Contains("not the requested type"));
  REQUIRE_THROWS_WITH(a[9], Catch::Contains("index out of range"));
  REQUIRE((*a[0])(zeros({2, 3, 4})).shape() == Shape{2, 12});
  REQUIRE(a(zeros({2, 3, 4})).shape() == Shape{2, 2});

  nn::Sequential b({std::make_shared<nn::Linear>(2, 3), std::make_shared<nn::Tanh>()});
  auto added = b.push_back(nn::Linear(3, 1));
  REQUIRE(added->options().out_features() == 1);
  REQUIRE(b.get_submodule("2").get() == added.get());

  auto list = std::make_shared<nn::ModuleList>(nn::Linear(2, 2), nn::Linear(2, 2));
  REQUIRE(keys(list->named_parameters()).front() == "0.weight");
  REQUIRE_THROWS_WITH((*list)(zeros({1, 2})), Catch::Contains("ModuleList: forward() is not implemented"));

  nn::Sequential f(nn::Functional([](const Tensor& x) { return x * 3.0; }, "Triple"));
  REQUIRE(f(ones({2})).sum().item() == 6.0);
}

TEST_CASE("repr prints the module tree like PyTorch", "[nn]") {
  auto model = std::make_shared<nn::Sequential>(
      nn::Flatten(), nn::Linear(784, 128), nn::GELU("tanh"),
      nn::Sequential(nn::Linear(nn::LinearOptions(128, 10).bias(false)), nn::Identity()));
  const std::string expected =
      "Sequential(\n"
      "  (0): Flatten(start_dim=1, end_dim=-1)\n"
      "  (1): Linear(in_features=784, out_features=128, bias=True)\n"
      "  (2): GELU(approximate='tanh')\n"
      "  (3): Sequential(\n"
      "    (0): Linear(in_features=128, out_features=10, bias=False)\n"
      "    (1): Identity()\n"
      "  )\n"
      ")";
  REQUIRE(model->repr() == expected);
  REQUIRE(fmt::format("{}", *model) == expected);
  REQUIRE(fmt::format("{}", *model->at<nn::Linear>(1)) ==
          "Linear(in_features=784, out_features=128, bias=True)");
}

TEST_CASE("to(dtype) converts parameters and buffers in place; apply and zero_grad", "[nn]") {
  manual_seed(5);
  auto net = std::make_shared<Net>();
  Tensor w = net->stem->weight.tensor();  // a handle held elsewhere (e.g. by an optimizer)
  const Tensor w32 = w.clone().detach();
  (*net)(randn({2, 3})).sum().backward();
  REQUIRE(w.grad().defined());

  net->to(DType::Float64);
  for (auto& p : net->parameters()) {
    REQUIRE(p.dtype() == DType::Float64);
    REQUIRE(p.requires_grad());
    REQUIRE(p.is_leaf());
  }
  REQUIRE(w.dtype() == DType::Float64);
  REQUIRE(w.grad().dtype() == DType::Float64);
  REQUIRE(max_abs_diff(w.to(DType::Float32), w32) == 0.0);
  REQUIRE(net->get_buffer("scale").dtype() == DType::Float64);
  REQUIRE(net->get_buffer("stages.0.blocks.0.steps").dtype() == DType::Int64);  // int kept
  REQUIRE((*net)(randn({2, 3}, DType::Float64)).dtype() == DType::Float64);
  REQUIRE_THROWS_WITH(net->to(DType::Int64), Catch::Contains("floating dtypes only"));

  net->zero_grad();
  for (auto& p : net->parameters()) REQUIRE_FALSE(p.grad().defined());

  // apply: children before parents, every module once.
  std::vector<std::string> order;
  net->stages->apply([&](nn::Module& m) { order.push_back(m.name()); });
  REQUIRE(order == std::vector<std::string>{"Linear", "Block", "Linear", "Block", "Sequential",
                                            "Stage", "Linear", "Block", "Sequential", "Stage",
                                            "ModuleList"});
  net->apply([](nn::Module& m) {
    if (auto* lin = dynamic_cast<nn::Linear*>(&m)) init::zeros_(lin->weight.tensor());
  });
  REQUIRE(net->head->weight.tensor().abs().sum().item() == 0.0);
}

TEST_CASE("gradcheck of a Sequential MLP with respect to its parameters", "[nn][gradcheck]") {
  manual_seed(6);
  auto mlp = std::make_shared<nn::Sequential>(nn::Linear(3, 5), nn::Tanh(), nn::Linear(5, 4),
                                              nn::SiLU(), nn::Linear(4, 2));
  mlp->to(DType::Float64);
  std::vector<std::shared_ptr<nn::Linear>> lins = {mlp->at<nn::Linear>(0), mlp->at<nn::Linear>(2),
                                                   mlp->at<nn::Linear>(4)};
  const Tensor x = randn({4, 3}, DType::Float64);
  std::vector<Tensor> inputs = {x};
  for (auto& l : lins) {
    inputs.push_back(l->weight.tensor());
    inputs.push_back(l->bias.tensor());
  }
  // The gradcheck's tensors go into the layers' slots for each call (functional_call).
  const std::vector<std::string> names = {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"};
  testing::Fn f = [&](const std::vector<Tensor>& ps) {
    nn::StateDict sub;
    for (size_t i = 0; i < names.size(); ++i) sub.emplace_back(names[i], ps[1 + i]);
    return nn::functional_call(*mlp, sub, ps[0]);
  };
  KERN_GRADCHECK(f, inputs);

  // The registered parameters themselves: backward fills .grad matching central differences.
  Generator gen(7);
  Tensor v = randn({4, 2}, DType::Float64, &gen);
  auto objective = [&] { return dot((*mlp)(x), v); };
  mlp->zero_grad();
  objective().backward();
  for (auto& [name, p] : mlp->named_parameters()) {
    Tensor flat = p.reshape({-1});
    auto analytic = p.grad().reshape({-1}).to_vector<double>();
    for (int64_t e = 0; e < flat.numel(); e += 3) {
      NoGradGuard ng;
      const double old = flat.select(0, e).item();
      const double h = 1e-6;
      flat.narrow(0, e, 1).fill_(old + h);
      const double up = objective().item();
      flat.narrow(0, e, 1).fill_(old - h);
      const double down = objective().item();
      flat.narrow(0, e, 1).fill_(old);
      INFO(name << "[" << e << "]");
      REQUIRE(analytic[e] == Approx((up - down) / (2 * h)).margin(1e-7));
    }
  }
}

TEST_CASE("Linear: layout, default init bounds, forward and options", "[nn]") {
  manual_seed(8);
  nn::Linear lin(nn::LinearOptions(400, 300));
  REQUIRE(lin.weight.shape() == Shape{300, 400});
  REQUIRE(lin.bias.shape() == Shape{300});
  const double bound = 1.0 / std::sqrt(400.0);  // kaiming_uniform(a = sqrt 5) on fan_in 400
  for (const Tensor& t : {lin.weight.tensor(), lin.bias.tensor()}) {
    REQUIRE(max(t).item() <= bound);
    REQUIRE(min(t).item() >= -bound);
  }
  REQUIRE(max(lin.weight.tensor()).item() > 0.99 * bound);
  REQUIRE(min(lin.weight.tensor()).item() < -0.99 * bound);
  REQUIRE(variance(lin.weight.tensor()) == Approx(bound * bound / 3).epsilon(0.02));
  REQUIRE(variance(lin.bias.tensor()) == Approx(bound * bound / 3).epsilon(0.25));

  Tensor x = randn({2, 7, 400});
  REQUIRE(max_abs_diff(lin(x), matmul(x, lin.weight.tensor().t()) + lin.bias.tensor()) < 1e-5);
  REQUIRE_THROWS_WITH(lin(randn({2, 399})), Catch::Contains("Linear(400 -> 300)") && Catch::Contains("[2, 399]"));

  nn::Linear nobias(nn::LinearOptions(4, 3).bias(false));
  REQUIRE(keys(nobias.named_parameters()) == std::vector<std::string>{"weight"});
  REQUIRE_FALSE(nobias.bias.defined());
  REQUIRE_FALSE(nobias.options().bias());

  // Same seed, same parameters.
  manual_seed(9);
  nn::Linear l1(5, 6);
  manual_seed(9);
  nn::Linear l2(5, 6);
  REQUIRE(max_abs_diff(l1.weight.tensor(), l2.weight.tensor()) == 0.0);
  Generator g(10);
  l2.reset_parameters(&g);
  REQUIRE(max_abs_diff(l1.weight.tensor(), l2.weight.tensor()) > 0.0);
}

TEST_CASE("init: kaiming, xavier, normal and trunc_normal statistics", "[nn]") {
  Generator gen(11);
  Tensor w = empty({256, 1024});  // fan_in 1024, fan_out 256
  // kaiming_uniform: bound = gain * sqrt(3 / fan), gain(relu) = sqrt 2.
  init::kaiming_uniform_(w, 0.0, "fan_in", "relu", &gen);
  double bound = std::sqrt(2.0) * std::sqrt(3.0 / 1024);
  REQUIRE(max(w).item() <= bound);
  REQUIRE(min(w).item() >= -bound);
  REQUIRE(max(w).item() > 0.999 * bound);
  REQUIRE(variance(w) == Approx(bound * bound / 3).epsilon(0.01));
  init::kaiming_uniform_(w, std::sqrt(5.0), "fan_out", "leaky_relu", &gen);
  bound = std::sqrt(2.0 / 6.0) * std::sqrt(3.0 / 256);
  REQUIRE(max(w).item() <= bound);
  REQUIRE(min(w).item() >= -bound);
  REQUIRE(variance(w) == Approx(bound * bound / 3).epsilon(0.01));

  init::kaiming_normal_(w, 0.0, "fan_in", "relu", &gen);
  REQUIRE(variance(w) == Approx(2.0 / 1024).epsilon(0.01));
  REQUIRE(std::abs(mean(w).item()) < 1e-3);
  init::xavier_uniform_(w, 2.0, &gen);
  bound = 2.0 * std::sqrt(6.0 / (1024 + 256));
  REQUIRE(max(w).item() <= bound);
  REQUIRE(variance(w) == Approx(bound * bound / 3).epsilon(0.01));
  init::xavier_normal_(w, 1.0, &gen);
  REQUIRE(variance(w) == Approx(2.0 / (1024 + 256)).epsilon(0.01));
  init::normal_(w, 3.0, 0.5, &gen);
  REQUIRE(mean(w).item() == Approx(3.0).margin(5e-3));
  REQUIRE(variance(w) == Approx(0.25).epsilon(0.01));
  init::uniform_(w, -1.0, 3.0, &gen);
  REQUIRE(min(w).item() >= -1.0);
  REQUIRE(max(w).item() < 3.0);
  REQUIRE(mean(w).item() == Approx(1.0).epsilon(1e-2));

  // trunc_normal: all values in [a, b]; variance of N(0, 1) truncated to [-2, 2] is
  // 1 - 2 * 2 phi(2) / (Phi(2) - Phi(-2)).
  init::trunc_normal_(w, 0.0, 1.0, -2.0, 2.0, &gen);
  REQUIRE(min(w).item() >= -2.0);
  REQUIRE(max(w).item() <= 2.0);
  const double phi2 = std::exp(-2.0) / std::sqrt(2 * std::numbers::pi);
  const double Z = std::erf(2.0 / std::sqrt(2.0));
  REQUIRE(variance(w) == Approx(1.0 - 4.0 * phi2 / Z).epsilon(0.01));
  init::trunc_normal_(w, 0.0, 0.02, -0.04, 0.04, &gen);  // timm's ViT/ConvNeXt style
  REQUIRE(min(w).item() >= -0.04);
  REQUIRE(max(w).item() <= 0.04);
  REQUIRE(max(w).item() > 0.039);
  init::trunc_normal_(w, 0.0, 1.0, 3.0, 3.5, &gen);  // a far tail
  REQUIRE(min(w).item() >= 3.0);
  REQUIRE(max(w).item() <= 3.5);

  // Constant fills, slices and float64.
  Tensor d = empty({4, 6}, DType::Float64);
  init::ones_(d);
  init::zeros_(d.narrow(1, 0, 3));
  REQUIRE(sum(d).item() == 12.0);
  init::constant_(d, 2.5);
  REQUIRE(sum(d).item() == 60.0);
  // Works on parameters that require grad (under NoGradGuard inside).
  Tensor p = zeros({3, 3}).requires_grad_();
  init::xavier_uniform_(p);
  REQUIRE(p.is_leaf());
  REQUIRE(p.abs().sum().item() > 0.0);

  // Reproducible with the same generator seed.
  Generator g1(12), g2(12);
  Tensor a = empty({10, 10}), b = empty({10, 10});
  init::trunc_normal_(a, 0, 1, -2, 2, &g1);
  init::trunc_normal_(b, 0, 1, -2, 2, &g2);
  REQUIRE(max_abs_diff(a, b) == 0.0);
}

TEST_CASE("init: fans and gains", "[nn]") {
  auto f = init::calculate_fan_in_and_fan_out(empty({8, 4, 3, 3}));
  REQUIRE(f.fan_in == 36);
  REQUIRE(f.fan_out == 72);
  auto [fi, fo] = init::calculate_fan_in_and_fan_out(empty({10, 20}));
  REQUIRE(fi == 20);
  REQUIRE(fo == 10);
  REQUIRE(init::calculate_gain("linear") == 1.0);
  REQUIRE(init::calculate_gain("conv2d") == 1.0);
  REQUIRE(init::calculate_gain("sigmoid") == 1.0);
  REQUIRE(init::calculate_gain("tanh") == Approx(5.0 / 3.0));
  REQUIRE(init::calculate_gain("relu") == Approx(std::sqrt(2.0)));
  REQUIRE(init::calculate_gain("leaky_relu") == Approx(std::sqrt(2.0 / (1 + 0.01 * 0.01))));
  REQUIRE(init::calculate_gain("leaky_relu", std::sqrt(5.0)) == Approx(std::sqrt(1.0 / 3.0)));
  REQUIRE(init::calculate_gain("selu") == 0.75);
}

TEST_CASE("init: bad arguments throw", "[nn][errors]") {
  REQUIRE_THROWS_WITH(init::calculate_fan_in_and_fan_out(empty({5})),
                      Catch::Contains(">= 2 dims") && Catch::Contains("[5]"));
  REQUIRE_THROWS_WITH(init::kaiming_uniform_(empty({5})), Catch::Contains(">= 2 dims"));
  REQUIRE_THROWS_WITH(init::calculate_gain("swish"), Catch::Contains("unsupported nonlinearity 'swish'"));
  REQUIRE_THROWS_WITH(init::kaiming_normal_(empty({2, 2}), 0, "fan_avg"),
                      Catch::Contains("mode must be 'fan_in' or 'fan_out'"));
  REQUIRE_THROWS_WITH(init::uniform_(empty({2}, DType::Int64)), Catch::Contains("floating point"));
  REQUIRE_THROWS_WITH(init::trunc_normal_(empty({2}), 0, 1, 2, -2), Catch::Contains("a < b"));
  REQUIRE_THROWS_WITH(nn::GELU("fast"), Catch::Contains("'none' or 'tanh'"));
}

TEST_CASE("activation modules match their ops", "[nn]") {
  Tensor x = randn({3, 4});
  REQUIRE(max_abs_diff(nn::ReLU()(x), relu(x)) == 0.0);
  REQUIRE(max_abs_diff(nn::Tanh()(x), tanh(x)) == 0.0);
  REQUIRE(max_abs_diff(nn::SiLU()(x), silu(x)) == 0.0);
  REQUIRE(max_abs_diff(nn::Sigmoid()(x), sigmoid(x)) == 0.0);
  REQUIRE(max_abs_diff(nn::GELU()(x), gelu(x)) == 0.0);
  REQUIRE(max_abs_diff(nn::GELU(nn::GELUOptions().approximate("tanh"))(x), gelu(x, "tanh")) == 0.0);
  REQUIRE(nn::Identity()(x).impl_ptr() == x.impl_ptr());
  REQUIRE(nn::Flatten(0)(x).shape() == Shape{12});
  REQUIRE(nn::Flatten(nn::FlattenOptions().start_dim(0).end_dim(0))(x).shape() == Shape{3, 4});
  REQUIRE(nn::ReLU().named_parameters().empty());
}
