// Optimizers against PyTorch trajectories (tests/data/mlp_tanh.safetensors), hand-derived
// update rules, param groups, lr schedules, gradient clipping, state_dict round trips, errors.
#include <catch2/catch.hpp>
#include <kern/io/safetensors.hpp>
#include <kern/kern.hpp>
#include <kern/optim/optim.hpp>

#include <cmath>
#include <functional>
#include <numbers>

using namespace kern;
namespace optim = kern::optim;

namespace {

const std::vector<std::string> kParamNames = {"param.0.weight", "param.0.bias", "param.2.weight",
                                              "param.2.bias",   "param.4.weight", "param.4.bias"};

struct Mlp {
  std::vector<Tensor> params;  // float64 leaves in kParamNames order
  Tensor x, y;
  // 0.5 * mean_n sum_o (f - y)^2 of Linear(6,16) Tanh Linear(16,16) Tanh Linear(16,3)
  Tensor loss() const {
    Tensor h = tanh(linear(x, params[0], params[1]));
    h = tanh(linear(h, params[2], params[3]));
    Tensor d = linear(h, params[4], params[5]) - y;
    return (d * d).sum({1}).mean() * 0.5;
  }
};

io::SafetensorsFile& fixture() {
  static io::SafetensorsFile f = io::load_safetensors(KERN_TEST_DATA_DIR "/mlp_tanh.safetensors");
  return f;
}

Mlp make_mlp() {
  Mlp m;
  for (const auto& n : kParamNames) m.params.push_back(fixture().get(n).clone().requires_grad_());
  m.x = fixture().get("x").clone();
  m.y = fixture().get("y").clone();
  return m;
}

// Runs `steps` full-batch steps; returns the loss before each step.
std::vector<double> train(const Mlp& m, optim::Optimizer& opt, int steps) {
  std::vector<double> losses;
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    Tensor l = m.loss();
    losses.push_back(l.item());
    l.backward();
    opt.step();
  }
  return losses;
}

std::vector<Tensor> snapshot(const std::vector<Tensor>& ps) {
  std::vector<Tensor> out;
  for (auto& p : ps) out.push_back(p.detach().clone());
  return out;
}

void restore(const std::vector<Tensor>& ps, const std::vector<Tensor>& saved) {
  NoGradGuard ng;
  for (size_t i = 0; i < ps.size(); ++i) Tensor(ps[i]).copy_(saved[i]);
}

Tensor leaf(std::initializer_list<double> v) { return tensor(v, DType::Float64).requires_grad_(); }

}  // namespace

TEST_CASE("optimizers reproduce PyTorch's 20-step MLP trajectories", "[optim]") {
  Mlp m = make_mlp();
  std::string name;
  std::unique_ptr<optim::Optimizer> opt;
  SECTION("sgd") {
    name = "sgd";
    opt = std::make_unique<optim::SGD>(m.params, optim::SGDOptions{.lr = 0.1});
  }
  SECTION("sgd_momentum_nesterov_wd") {
    name = "sgd_momentum_nesterov_wd";
    opt = std::make_unique<optim::SGD>(
        m.params, optim::SGDOptions{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3, .nesterov = true});
  }
  SECTION("adam") {
    name = "adam";
    opt = std::make_unique<optim::Adam>(m.params, optim::AdamOptions{.lr = 1e-2});
  }
  SECTION("adamw") {
    name = "adamw";
    opt = std::make_unique<optim::AdamW>(m.params, optim::AdamWOptions{.lr = 1e-2, .weight_decay = 0.1});
  }
  INFO("optimizer " << name);
  auto losses = train(m, *opt, 20);
  auto expected = fixture().get("opt." + name + ".losses").to_vector<double>();
  REQUIRE(expected.size() == 20);
  for (int i = 0; i < 20; ++i) {
    INFO("step " << i);
    REQUIRE(std::abs(losses[i] - expected[i]) <= 1e-10);
  }
  REQUIRE(losses.back() < losses.front());
  for (size_t i = 0; i < kParamNames.size(); ++i) {
    INFO(kParamNames[i]);
    Tensor want = fixture().get("opt." + name + ".final." + kParamNames[i].substr(6));  // "0.weight"
    REQUIRE(m.params[i].shape() == want.shape());
    REQUIRE(max_abs_diff(m.params[i], want) <= 1e-10);
  }
}

TEST_CASE("SGD momentum buffer starts at the first gradient; dampening and Nesterov", "[optim]") {
  // One scalar parameter, gradients fed by hand: g0 = 1, g1 = 2, g2 = -1.
  const double lr = 0.1, mu = 0.9, damp = 0.25;
  const std::vector<double> gs = {1.0, 2.0, -1.0};
  SECTION("momentum with dampening") {
    Tensor p = leaf({1.0});
    optim::SGD opt({p}, {.lr = lr, .momentum = mu, .dampening = damp});
    double w = 1.0, buf = 0.0;
    for (size_t k = 0; k < gs.size(); ++k) {
      p.set_grad(tensor({gs[k]}, DType::Float64));
      opt.step();
      buf = k == 0 ? gs[k] : mu * buf + (1 - damp) * gs[k];  // no dampening on the first step
      w -= lr * buf;
      REQUIRE(p.item() == Approx(w).epsilon(1e-14));
    }
  }
  SECTION("nesterov with weight decay") {
    Tensor p = leaf({1.0});
    const double wd = 0.01;
    optim::SGD opt({p}, {.lr = lr, .momentum = mu, .weight_decay = wd, .nesterov = true});
    double w = 1.0, buf = 0.0;
    for (size_t k = 0; k < gs.size(); ++k) {
      p.set_grad(tensor({gs[k]}, DType::Float64));
      opt.step();
      const double d = gs[k] + wd * w;
      buf = k == 0 ? d : mu * buf + d;
      w -= lr * (d + mu * buf);
      REQUIRE(p.item() == Approx(w).epsilon(1e-14));
    }
  }
}

TEST_CASE("Adam bias correction, amsgrad and AdamW's decoupled decay by hand", "[optim]") {
  const double lr = 0.01, b1 = 0.8, b2 = 0.9, eps = 1e-3, wd = 0.5;
  const std::vector<double> gs = {1.0, 0.1, -0.5, 0.05};
  for (int variant = 0; variant < 3; ++variant) {  // 0 Adam+wd, 1 Adam amsgrad, 2 AdamW
    INFO("variant " << variant);
    Tensor p = leaf({2.0});
    std::unique_ptr<optim::Optimizer> opt;
    if (variant == 0) opt = std::make_unique<optim::Adam>(std::vector<Tensor>{p}, optim::AdamOptions{.lr = lr, .betas = {b1, b2}, .eps = eps, .weight_decay = wd});
    if (variant == 1) opt = std::make_unique<optim::Adam>(std::vector<Tensor>{p}, optim::AdamOptions{.lr = lr, .betas = {b1, b2}, .eps = eps, .amsgrad = true});
    if (variant == 2) opt = std::make_unique<optim::AdamW>(std::vector<Tensor>{p}, optim::AdamWOptions{.lr = lr, .betas = {b1, b2}, .eps = eps, .weight_decay = wd});
    double w = 2.0, m = 0, v = 0, vmax = 0;
    for (size_t k = 0; k < gs.size(); ++k) {
      p.set_grad(tensor({gs[k]}, DType::Float64));
      opt->step();
      const double t = static_cast<double>(k + 1);
      double g = gs[k];
      if (variant == 0) g += wd * w;
      if (variant == 2) w *= 1 - lr * wd;
      m = b1 * m + (1 - b1) * g;
      v = b2 * v + (1 - b2) * g * g;
      vmax = std::max(vmax, v);
      const double vv = variant == 1 ? vmax : v;
      w -= lr / (1 - std::pow(b1, t)) * m / (std::sqrt(vv) / std::sqrt(1 - std::pow(b2, t)) + eps);
      REQUIRE(p.item() == Approx(w).epsilon(1e-13));
    }
    auto sd = opt->state_dict();
    bool found_step = false;
    for (auto& [k, t] : sd)
      if (k == "state.0.step") {
        found_step = true;
        REQUIRE(t.dim() == 0);
        REQUIRE(t.dtype() == DType::Float64);
        REQUIRE(t.item() == 4.0);
      }
    REQUIRE(found_step);
  }
}

TEST_CASE("param groups, lr multipliers, zero_grad and params without grad", "[optim]") {
  Tensor a = leaf({1.0, 2.0}), b = leaf({3.0}), c = leaf({5.0});
  optim::SGD opt(std::vector<optim::ParamGroup>{{.params = {a, b}, .lr_mult = {1.0, 2.0}},
                                                {.params = {c}, .lr = 0.5}},
                 {.lr = 0.1});
  REQUIRE(opt.num_groups() == 2);
  REQUIRE(opt.num_params() == 3);
  REQUIRE(opt.lr(0) == 0.1);
  REQUIRE(opt.lr(1) == 0.5);
  a.set_grad(tensor({1.0, -1.0}, DType::Float64));
  b.set_grad(tensor({1.0}, DType::Float64));
  // c has no gradient: it must be skipped.
  opt.step();
  REQUIRE(max_abs_diff(a, tensor({0.9, 2.1}, DType::Float64)) < 1e-15);
  REQUIRE(b.item() == Approx(3.0 - 0.2));
  REQUIRE(c.item() == 5.0);
  opt.set_lr(1, 0.25);
  REQUIRE(opt.lr(1) == 0.25);
  c.set_grad(tensor({2.0}, DType::Float64));
  opt.step();
  REQUIRE(c.item() == Approx(4.5));
  opt.zero_grad();
  REQUIRE_FALSE(a.grad().defined());
  REQUIRE_FALSE(c.grad().defined());
  opt.step();  // no gradients: nothing moves
  REQUIRE(c.item() == Approx(4.5));

  // The update is in place: the parameter keeps its storage.
  Tensor f = randn({4, 5}, DType::Float32).requires_grad_();
  const void* before = f.raw_data();
  optim::Adam adam({f}, {.lr = 0.1});
  f.set_grad(ones({4, 5}, DType::Float32));
  adam.step();
  REQUIRE(f.raw_data() == before);
  REQUIRE(f.is_leaf());

  // A non-contiguous parameter (a transposed view) is updated through its strides.
  Tensor base = randn({3, 4}, DType::Float64);
  Tensor pt = base.t().requires_grad_();
  Tensor pc = base.t().contiguous().requires_grad_();
  REQUIRE_FALSE(pt.is_contiguous());
  optim::SGD st({pt}, {.lr = 0.1, .momentum = 0.5});
  optim::SGD sc({pc}, {.lr = 0.1, .momentum = 0.5});
  for (int k = 0; k < 2; ++k) {
    Tensor g = randn({4, 3}, DType::Float64);
    pt.set_grad(g);
    pc.set_grad(g);
    st.step();
    sc.step();
  }
  REQUIRE(max_abs_diff(pt, pc) == 0.0);
  REQUIRE(max_abs_diff(base.t(), pc) == 0.0);  // written into the viewed storage
}

TEST_CASE("float32 Adam tracks float64 Adam", "[optim]") {
  Tensor p64 = randn({3, 7}, DType::Float64).requires_grad_();
  Tensor p32 = p64.detach().to(DType::Float32).requires_grad_();
  optim::Adam o64({p64}, {.lr = 0.05, .weight_decay = 0.01, .amsgrad = true});
  optim::Adam o32({p32}, {.lr = 0.05, .weight_decay = 0.01, .amsgrad = true});
  for (int k = 0; k < 10; ++k) {
    Tensor g = randn({3, 7}, DType::Float64);
    p64.set_grad(g);
    p32.set_grad(g.to(DType::Float32));
    o64.step();
    o32.step();
  }
  REQUIRE(max_abs_diff(p32.to(DType::Float64), p64) < 1e-5);
}

TEST_CASE("optimizer state_dict round trip resumes identically", "[optim]") {
  Mlp m = make_mlp();
  for (int which = 0; which < 3; ++which) {
    INFO("optimizer " << which);
    restore(m.params, snapshot(make_mlp().params));
    std::unique_ptr<optim::Optimizer> opt;
    if (which == 0) opt = std::make_unique<optim::SGD>(m.params, optim::SGDOptions{.lr = 0.05, .momentum = 0.9});
    if (which == 1) opt = std::make_unique<optim::Adam>(m.params, optim::AdamOptions{.lr = 1e-2, .amsgrad = true});
    if (which == 2) opt = std::make_unique<optim::AdamW>(m.params, optim::AdamWOptions{.lr = 1e-2});
    train(m, *opt, 2);
    opt->set_lr(0, opt->lr(0) * 0.5);
    // Through safetensors bytes, as a checkpoint would store it.
    auto bytes = io::save_safetensors_to_bytes(opt->state_dict());
    auto saved_params = snapshot(m.params);
    auto first = train(m, *opt, 3);
    auto first_params = snapshot(m.params);

    restore(m.params, saved_params);
    train(m, *opt, 1);  // disturb the state, then restore it
    restore(m.params, saved_params);
    opt->load_state_dict(io::load_safetensors_from_bytes(bytes).tensors);
    REQUIRE(opt->lr(0) == Approx(which == 0 ? 0.025 : 5e-3).epsilon(1e-15));
    auto second = train(m, *opt, 3);
    REQUIRE(first == second);
    for (size_t i = 0; i < m.params.size(); ++i) REQUIRE(max_abs_diff(m.params[i], first_params[i]) == 0.0);

    // A fresh optimizer loaded from the state behaves the same too.
    restore(m.params, saved_params);
    std::unique_ptr<optim::Optimizer> fresh;
    if (which == 0) fresh = std::make_unique<optim::SGD>(m.params, optim::SGDOptions{.lr = 0.05, .momentum = 0.9});
    if (which == 1) fresh = std::make_unique<optim::Adam>(m.params, optim::AdamOptions{.lr = 1e-2, .amsgrad = true});
    if (which == 2) fresh = std::make_unique<optim::AdamW>(m.params, optim::AdamWOptions{.lr = 1e-2});
    fresh->load_state_dict(io::load_safetensors_from_bytes(bytes).tensors);
    REQUIRE(train(m, *fresh, 3) == first);
  }
}

TEST_CASE("optimizer state_dict keys", "[optim]") {
  Tensor a = leaf({1.0, 2.0}), b = leaf({3.0});
  optim::Adam opt({a, b}, {.lr = 0.1});
  a.set_grad(tensor({1.0, 1.0}, DType::Float64));
  opt.step();  // b has no grad: no state for it
  std::vector<std::string> keys;
  for (auto& [k, t] : opt.state_dict()) keys.push_back(k);
  REQUIRE(keys == std::vector<std::string>{"group.0.lr", "group.0.weight_decay", "state.0.step",
                                           "state.0.exp_avg", "state.0.exp_avg_sq"});
  // state_dict copies: stepping does not change a saved dict.
  auto sd = opt.state_dict();
  a.set_grad(tensor({1.0, 1.0}, DType::Float64));
  opt.step();
  REQUIRE(sd[2].second.item() == 1.0);
}

TEST_CASE("lr schedules follow their closed forms", "[optim]") {
  Tensor p = leaf({1.0});
  const double pi = std::numbers::pi;
  auto run_to = [](optim::LRScheduler& s, int64_t step) {
    while (s.last_step() < step) s.step();
  };
  SECTION("StepLR") {
    optim::SGD opt({p}, {.lr = 0.1});
    optim::StepLR s(opt, 3, 0.5);
    REQUIRE(opt.lr() == 0.1);
    run_to(s, 2);
    REQUIRE(opt.lr() == Approx(0.1));
    run_to(s, 3);
    REQUIRE(opt.lr() == Approx(0.05));
    run_to(s, 7);
    REQUIRE(opt.lr() == Approx(0.025));
  }
  SECTION("ConstantLR") {
    optim::SGD opt({p}, {.lr = 0.3});
    optim::ConstantLR s(opt, 0.5, 4);
    REQUIRE(opt.lr() == Approx(0.15));
    run_to(s, 3);
    REQUIRE(opt.lr() == Approx(0.15));
    run_to(s, 4);
    REQUIRE(opt.lr() == Approx(0.3));
  }
  SECTION("WarmupCosine") {
    optim::SGD opt({p}, {.lr = 1.0});
    optim::WarmupCosine s(opt, 10, 110, 0.1);
    REQUIRE(opt.lr() == 0.0);
    run_to(s, 5);
    REQUIRE(opt.lr() == Approx(0.5));
    run_to(s, 10);
    REQUIRE(opt.lr() == Approx(1.0));
    run_to(s, 35);  // a quarter of the cosine: 0.1 + 0.9 * (1 + cos(pi/4)) / 2
    REQUIRE(opt.lr() == Approx(0.1 + 0.9 * (1 + std::cos(pi / 4)) / 2));
    run_to(s, 60);
    REQUIRE(opt.lr() == Approx(0.55));
    run_to(s, 110);
    REQUIRE(opt.lr() == Approx(0.1));
    run_to(s, 150);
    REQUIRE(opt.lr() == Approx(0.1));
  }
  SECTION("CosineAnnealingLR, two groups, set_step") {
    optim::SGD opt(std::vector<optim::ParamGroup>{{.params = {p}}, {.params = {leaf({2.0})}, .lr = 0.2}},
                   {.lr = 0.1});
    optim::CosineAnnealingLR s(opt, 20, 0.01);
    REQUIRE(opt.lr(0) == Approx(0.1));
    run_to(s, 5);
    REQUIRE(opt.lr(0) == Approx(0.01 + 0.09 * (1 + std::cos(pi * 5 / 20)) / 2));
    REQUIRE(opt.lr(1) == Approx(0.01 + 0.19 * (1 + std::cos(pi * 5 / 20)) / 2));
    run_to(s, 20);
    REQUIRE(opt.lr(0) == Approx(0.01));
    s.set_step(10);
    REQUIRE(opt.lr(1) == Approx(0.01 + 0.19 * 0.5));
    REQUIRE(s.last_lr() == std::vector<double>{opt.lr(0), opt.lr(1)});
  }
}

TEST_CASE("clip_grad_norm_ and clip_grad_value_", "[optim]") {
  Tensor a = leaf({0.0, 0.0}), b = leaf({0.0}), c = leaf({1.0});
  auto set = [&] {
    a.set_grad(tensor({3.0, 0.0}, DType::Float64));
    b.set_grad(tensor({-4.0}, DType::Float64));
    c.zero_grad();  // skipped
  };
  set();
  REQUIRE(optim::clip_grad_norm_({a, b, c}, 10.0) == Approx(5.0));
  REQUIRE(a.grad().to_vector<double>() == std::vector<double>{3.0, 0.0});  // below max: untouched
  const double total = optim::clip_grad_norm_({a, b, c}, 1.0);
  REQUIRE(total == Approx(5.0));
  const double coef = 1.0 / (5.0 + 1e-6);
  REQUIRE(a.grad().select(0, 0).item() == Approx(3.0 * coef).epsilon(1e-15));
  REQUIRE(b.grad().item() == Approx(-4.0 * coef).epsilon(1e-15));
  REQUIRE_FALSE(c.grad().defined());
  set();
  REQUIRE(optim::clip_grad_norm_({a, b}, 100.0, optim::inf) == Approx(4.0));
  REQUIRE(optim::clip_grad_norm_({a, b}, 100.0, 1.0) == Approx(7.0));
  REQUIRE(optim::grad_norm({a, b}, 3.0) == Approx(std::cbrt(27.0 + 64.0)));
  REQUIRE(optim::clip_grad_norm_({c}, 1.0) == 0.0);

  set();
  optim::clip_grad_value_({a, b, c}, 3.5);
  REQUIRE(a.grad().to_vector<double>() == std::vector<double>{3.0, 0.0});
  REQUIRE(b.grad().item() == -3.5);

  // A gradient that is a broadcast view (x.sum()'s gradient) is replaced, not written through.
  Tensor x = randn({3, 4}, DType::Float32).requires_grad_();
  Tensor y = randn({3, 4}, DType::Float32).requires_grad_();
  (x.sum() + y.sum()).backward();
  const double n = optim::clip_grad_norm_({x, y}, 1.0);
  REQUIRE(n == Approx(std::sqrt(24.0)));
  REQUIRE(optim::grad_norm({x, y}) == Approx(1.0).epsilon(1e-5));
  REQUIRE_THROWS_WITH(optim::clip_grad_norm_({x}, -1.0), Catch::Contains("clip_grad_norm_"));
  Tensor z = leaf({1.0});
  z.set_grad(tensor({std::nan("")}, DType::Float64));
  REQUIRE_THROWS_WITH(optim::clip_grad_norm_({z}, 1.0, 2.0, true), Catch::Contains("non-finite"));
}

TEST_CASE("optimizer argument errors", "[optim][errors]") {
  Tensor p = leaf({1.0, 2.0});
  REQUIRE_THROWS_WITH(optim::SGD({p}, {.lr = -0.1}), Catch::Contains("SGD") && Catch::Contains("learning rate"));
  REQUIRE_THROWS_WITH(optim::SGD({p}, {.lr = 0.1, .nesterov = true}), Catch::Contains("nesterov"));
  REQUIRE_THROWS_WITH(optim::SGD({p}, {.lr = 0.1, .momentum = -1}), Catch::Contains("momentum"));
  REQUIRE_THROWS_WITH(optim::Adam({p}, {.lr = -1e-3}), Catch::Contains("Adam") && Catch::Contains("learning rate"));
  REQUIRE_THROWS_WITH(optim::Adam({p}, {.betas = {1.0, 0.999}}), Catch::Contains("beta1"));
  REQUIRE_THROWS_WITH(optim::Adam({p}, {.betas = {0.9, -0.1}}), Catch::Contains("beta2"));
  REQUIRE_THROWS_WITH(optim::AdamW({p}, {.weight_decay = -1}), Catch::Contains("AdamW") && Catch::Contains("weight_decay"));
  REQUIRE_THROWS_WITH(optim::Adam({p}, {.eps = -1}), Catch::Contains("eps"));
  REQUIRE_THROWS_WITH(optim::SGD({p, p}), Catch::Contains("more than once"));
  REQUIRE_THROWS_WITH(optim::SGD(std::vector<optim::ParamGroup>{{.params = {p}, .lr = -2.0}}),
                      Catch::Contains("group 0"));
  REQUIRE_THROWS_WITH(optim::SGD(std::vector<optim::ParamGroup>{{.params = {p}, .lr_mult = {1.0, 2.0}}}),
                      Catch::Contains("lr multipliers"));
  REQUIRE_THROWS_WITH(optim::SGD({arange(3)}), Catch::Contains("int64"));
  REQUIRE_THROWS_WITH(optim::SGD({p * 2.0}), Catch::Contains("not a leaf"));
  optim::SGD ok({p}, {.lr = 0.1});
  REQUIRE_THROWS_WITH(ok.set_lr(0, -1.0), Catch::Contains("learning rate"));
  REQUIRE_THROWS_WITH(ok.lr(3), Catch::Contains("group 3"));
  p.set_grad(tensor({1.0, 2.0, 3.0}, DType::Float64));
  REQUIRE_THROWS_WITH(ok.step(), Catch::Contains("SGD") && Catch::Contains("[3]") && Catch::Contains("[2]"));
  REQUIRE_THROWS_WITH(optim::StepLR(ok, 0), Catch::Contains("StepLR"));
  REQUIRE_THROWS_WITH(optim::WarmupCosine(ok, 10, 5), Catch::Contains("WarmupCosine"));
}

TEST_CASE("load_state_dict rejects wrong keys and shapes, naming the key", "[optim][errors]") {
  Tensor a = leaf({1.0, 2.0}), b = leaf({3.0});
  optim::Adam opt({a, b}, {.lr = 0.1});
  a.set_grad(tensor({1.0, 1.0}, DType::Float64));
  b.set_grad(tensor({1.0}, DType::Float64));
  opt.step();
  const auto good = opt.state_dict();
  const double lr_before = opt.lr();
  auto with = [&](const std::string& key, Tensor t) {
    auto sd = good;
    bool replaced = false;
    for (auto& [k, v] : sd)
      if (k == key) v = t, replaced = true;
    if (!replaced) sd.emplace_back(key, t);
    return sd;
  };
  auto without = [&](const std::string& key) {
    optim::StateDict sd;
    for (auto& kv : good)
      if (kv.first != key) sd.push_back(kv);
    return sd;
  };
  REQUIRE_NOTHROW(opt.load_state_dict(good));
  REQUIRE_THROWS_WITH(opt.load_state_dict(with("state.0.exp_avg", zeros({3}, DType::Float64))),
                      Catch::Contains("'state.0.exp_avg'") && Catch::Contains("[3]") && Catch::Contains("[2]"));
  REQUIRE_THROWS_WITH(opt.load_state_dict(with("state.0.momentum_buffer", zeros({2}, DType::Float64))),
                      Catch::Contains("'state.0.momentum_buffer'"));
  REQUIRE_THROWS_WITH(opt.load_state_dict(with("state.7.exp_avg", zeros({2}, DType::Float64))),
                      Catch::Contains("'state.7.exp_avg'"));
  REQUIRE_THROWS_WITH(opt.load_state_dict(with("group.1.lr", scalar_tensor(0.1, DType::Float64))),
                      Catch::Contains("'group.1.lr'"));
  REQUIRE_THROWS_WITH(opt.load_state_dict(with("model.weight", zeros({2}, DType::Float64))),
                      Catch::Contains("'model.weight'"));
  REQUIRE_THROWS_WITH(opt.load_state_dict(with("state.1.step", zeros({2}, DType::Float64))),
                      Catch::Contains("'state.1.step'"));
  REQUIRE_THROWS_WITH(opt.load_state_dict(without("state.1.exp_avg_sq")),
                      Catch::Contains("'state.1.exp_avg_sq'"));
  REQUIRE_THROWS_WITH(opt.load_state_dict(without("group.0.lr")), Catch::Contains("'group.0.lr'"));
  REQUIRE_THROWS_WITH(opt.load_state_dict(with("group.0.lr", scalar_tensor(-1.0, DType::Float64))),
                      Catch::Contains("'group.0.lr'"));
  // A failed load changes nothing.
  REQUIRE(opt.lr() == lr_before);
  REQUIRE(opt.state_dict().size() == good.size());
}
