// Parameterization presets: every expected number below is written from the papers' tables
// (Tensor Programs IV/V/VI and the mup library's rules), not from kern's output.
//   MLP(d_in = 32): 0 = Linear(32, w) input, 2 = Linear(w, w) hidden, 4 = Linear(w, 10) output.
//   Default uniform init: std = sigma / sqrt(fan) with sigma = 1/sqrt(3) (PyTorch's bound
//   1/sqrt(fan_in)). Base width 256, so k = w / 256 is 1/4 at w = 64 and 4 at w = 1024.
#include <catch2/catch.hpp>

#include <kern/kern.hpp>
#include <kern/optim/adam.hpp>
#include <kern/optim/param_groups.hpp>
#include <kern/optim/sgd.hpp>
#include <kern/param/param.hpp>

#include <cmath>

namespace nn = kern::nn;
namespace param = kern::param;
using kern::Tensor;
using param::Role;

namespace {

constexpr int64_t kIn = 32, kOut = 10, kBase = 256;

std::shared_ptr<nn::Sequential> mlp(int64_t w) {
  return std::make_shared<nn::Sequential>(nn::Linear(kIn, w), nn::ReLU(), nn::Linear(w, w),
                                          nn::ReLU(), nn::Linear(w, kOut));
}

const param::ParamRecord& rec(const param::Records& rs, const std::string& name) {
  for (auto& [n, r] : rs)
    if (n == name) return r;
  FAIL("no record " << name);
  return rs.front().second;
}

double sd(double fan) { return 1.0 / std::sqrt(3.0 * fan); }  // PyTorch default std

struct Expect {
  double std, mult, sgd, adam;
};

void check(const param::ParamRecord& r, const Expect& e) {
  CHECK(r.init_std == Approx(e.std).epsilon(1e-12));
  CHECK(r.forward_multiplier() == Approx(e.mult).epsilon(1e-12));
  CHECK(r.lr_mult_sgd == Approx(e.sgd).epsilon(1e-12));
  CHECK(r.lr_mult_adam == Approx(e.adam).epsilon(1e-12));
}

double tensor_std(const Tensor& t) { return kern::std(t.detach()).item<double>(); }

}  // namespace

TEST_CASE("param: roles and fans are inferred", "[param]") {
  auto m = mlp(64);
  auto rs = param::compute_records(*m, param::Preset::standard());
  REQUIRE(rs.size() == 6);
  CHECK(rec(rs, "0.weight").role == Role::InputWeight);
  CHECK(rec(rs, "2.weight").role == Role::HiddenWeight);
  CHECK(rec(rs, "4.weight").role == Role::OutputWeight);
  CHECK(rec(rs, "0.bias").role == Role::Bias);
  CHECK(rec(rs, "0.weight").fan_in == kIn);
  CHECK(rec(rs, "0.weight").fan_out == 64);
  CHECK(rec(rs, "4.weight").fan_in == 64);
  CHECK(rec(rs, "4.bias").fan_in == 64);  // a bias records its layer's fan_in
  CHECK(rec(rs, "4.bias").fan_out == kOut);

  // Conv fan_in = C_in / groups * kH * kW; fan_out = C_out * kH * kW.
  nn::Sequential cnn(nn::Conv2d(nn::Conv2dOptions(8, 16, 3).groups(2)), nn::ReLU(),
                     nn::Conv2d(16, 16, 3), nn::Flatten(), nn::Linear(16, 4));
  auto cr = param::compute_records(cnn, param::Preset::standard());
  CHECK(rec(cr, "0.weight").fan_in == 8 / 2 * 3 * 3);
  CHECK(rec(cr, "0.weight").fan_out == 16 * 3 * 3);
  CHECK(rec(cr, "0.weight").init_std == Approx(sd(36)));
  CHECK(rec(cr, "0.bias").init_std == Approx(sd(36)));
  CHECK(rec(cr, "2.weight").role == Role::HiddenWeight);

  // Overrides by name ('*' globs).
  auto over = param::compute_records(
      *m, param::Preset::standard().role("4.*", Role::HiddenWeight).role("4.bias", Role::Bias));
  CHECK(rec(over, "4.weight").role == Role::HiddenWeight);
  CHECK(rec(over, "4.bias").role == Role::Bias);

  // Norm layers: gain and bias are vectors whose init is kept.
  nn::Sequential withnorm(nn::Linear(4, 8), nn::LayerNorm(8), nn::Linear(8, 2));
  auto nr = param::compute_records(withnorm, param::Preset::mup(16, 8));
  CHECK(rec(nr, "1.weight").role == Role::NormGain);
  CHECK(rec(nr, "1.weight").init == param::InitKind::Keep);
  CHECK(rec(nr, "1.bias").role == Role::Bias);
  CHECK(rec(nr, "1.bias").init == param::InitKind::Keep);
  CHECK(rec(nr, "1.weight").lr_mult_sgd == Approx(2.0));  // vector-like: SGD lr * width mult

  const std::string table = param::describe(rs);
  CHECK(table.find("2.weight") != std::string::npos);
  CHECK(table.find("hidden") != std::string::npos);
}

TEST_CASE("param: standard preset numbers at widths 64 and 1024", "[param]") {
  for (int64_t w : {64, 1024}) {
    CAPTURE(w);
    auto m = mlp(w);
    auto rs = param::compute_records(*m, param::Preset::standard());
    check(rec(rs, "0.weight"), {sd(kIn), 1, 1, 1});
    check(rec(rs, "0.bias"), {sd(kIn), 1, 1, 1});
    check(rec(rs, "2.weight"), {sd(w), 1, 1, 1});
    check(rec(rs, "2.bias"), {sd(w), 1, 1, 1});
    check(rec(rs, "4.weight"), {sd(w), 1, 1, 1});
    check(rec(rs, "4.bias"), {sd(w), 1, 1, 1});
    CHECK(rec(rs, "2.weight").init == param::InitKind::Uniform);
  }
}

TEST_CASE("param: NTK preset numbers at widths 64 and 1024", "[param]") {
  // W = fan_in^-1/2 w, w ~ N(0, 1); biases N(0, 1) times beta = 1; lr multipliers 1.
  for (int64_t w : {64, 1024}) {
    CAPTURE(w);
    auto m = mlp(w);
    auto rs = param::compute_records(*m, param::Preset::ntk());
    const double n = static_cast<double>(w);
    check(rec(rs, "0.weight"), {1, 1 / std::sqrt(32.0), 1, 1});
    check(rec(rs, "2.weight"), {1, 1 / std::sqrt(n), 1, 1});
    check(rec(rs, "4.weight"), {1, 1 / std::sqrt(n), 1, 1});
    check(rec(rs, "2.bias"), {1, 1, 1, 1});
    check(rec(rs, "4.bias"), {1, 1, 1, 1});
    CHECK(rec(rs, "2.weight").init == param::InitKind::Normal);
  }
}

TEST_CASE("param: muP (mup library / Table 8) numbers at widths 64 and 1024", "[param]") {
  // input w&b: init var 1/fan_in, mult 1, SGD lr fan_out, Adam lr 1;
  // output w: init var 1 (i.e. const = its base-width value), mult 1/fan_in, SGD fan_in, Adam 1;
  // hidden w: init var 1/fan_in, mult 1, SGD lr 1, Adam lr 1/fan_in; all relative to base.
  for (int64_t w : {64, 1024}) {
    CAPTURE(w);
    const double k = static_cast<double>(w) / kBase;
    auto m = mlp(w);
    auto rs = param::compute_records(*m, param::Preset::mup(w, kBase));
    check(rec(rs, "0.weight"), {sd(kIn), 1, k, 1});
    check(rec(rs, "0.bias"), {sd(kIn), 1, k, 1});
    check(rec(rs, "2.weight"), {sd(w), 1, 1, 1 / k});
    check(rec(rs, "2.bias"), {sd(kBase), 1, k, 1});
    check(rec(rs, "4.weight"), {sd(kBase), 1 / k, k, 1});
    check(rec(rs, "4.bias"), {sd(kBase), 1, 1, 1});
    // Coupled weight decay keeps lr * wd width-independent (MuAdam / MuSGD).
    CHECK(rec(rs, "2.weight").wd_mult_adam == Approx(k));
    CHECK(rec(rs, "0.weight").wd_mult_sgd == Approx(1 / k));
    CHECK(rec(rs, "4.weight").wd_mult_sgd == Approx(1 / k));
    CHECK(rec(rs, "2.weight").base_fan_in == Approx(kBase));
    CHECK(rec(rs, "0.weight").base_fan_in == Approx(kIn));

    // output_mult scales the readout multiplier; zero_readout zeroes weight and bias.
    auto z = param::compute_records(*m, param::Preset::mup(w, kBase).out_mult(2.0).zero_readout());
    CHECK(rec(z, "4.weight").multiplier == Approx(2.0 / k));
    CHECK(rec(z, "4.weight").init == param::InitKind::Zeros);
    CHECK(rec(z, "4.bias").init == param::InitKind::Zeros);
    CHECK(rec(z, "2.bias").init == param::InitKind::Uniform);

    // Base shapes from a narrower model give the same records as from a base width.
    auto base = mlp(kBase);
    auto rb = param::compute_records(*m, param::Preset::mup(*base));
    for (size_t i = 0; i < rs.size(); ++i) {
      CAPTURE(rs[i].first);
      CHECK(rb[i].second.base_fan_in == Approx(rs[i].second.base_fan_in));
      CHECK(rb[i].second.base_fan_out == Approx(rs[i].second.base_fan_out));
      CHECK(rb[i].second.init_std == Approx(rs[i].second.init_std));
      CHECK(rb[i].second.multiplier == Approx(rs[i].second.multiplier));
      CHECK(rb[i].second.lr_mult_sgd == Approx(rs[i].second.lr_mult_sgd));
      CHECK(rb[i].second.lr_mult_adam == Approx(rs[i].second.lr_mult_adam));
    }
  }
}

TEST_CASE("param: muP Table 3 numbers at widths 64 and 1024", "[param]") {
  // output w: init var 1/fan_in^2, mult 1, SGD lr 1/fan_in, Adam lr 1/fan_in; others as Table 8.
  for (int64_t w : {64, 1024}) {
    CAPTURE(w);
    const double k = static_cast<double>(w) / kBase;
    auto m = mlp(w);
    auto rs = param::compute_records(*m, param::Preset::mup_table3(w, kBase));
    check(rec(rs, "0.weight"), {sd(kIn), 1, k, 1});
    check(rec(rs, "0.bias"), {sd(kIn), 1, k, 1});
    check(rec(rs, "2.weight"), {sd(w), 1, 1, 1 / k});
    check(rec(rs, "2.bias"), {sd(kBase), 1, k, 1});
    check(rec(rs, "4.weight"), {sd(kBase) / k, 1, 1 / k, 1 / k});
    check(rec(rs, "4.bias"), {sd(kBase), 1, 1, 1});
  }
}

TEST_CASE("param: normal draws and init gain", "[param]") {
  auto m = mlp(1024);
  auto rs = param::compute_records(*m, param::Preset::mup(1024, kBase).normal());
  CHECK(rec(rs, "2.weight").init_std == Approx(1 / std::sqrt(1024.0)));
  CHECK(rec(rs, "4.weight").init_std == Approx(1 / std::sqrt(256.0)));
  auto g = param::compute_records(*m, param::Preset::standard().normal().gain(std::sqrt(2.0)));
  CHECK(rec(g, "2.weight").init_std == Approx(std::sqrt(2.0 / 1024)));
}

namespace {
// x -> in -> L residual blocks x + fc2(relu(fc1(x))) -> out
struct Block : nn::Module {
  explicit Block(int64_t w) {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(w, w));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(w, w));
  }
  Tensor forward(const Tensor& x) override { return x + (*fc2)(kern::relu((*fc1)(x))); }
  std::shared_ptr<nn::Linear> fc1, fc2;
};
struct ResMLP : nn::Module {
  ResMLP(int64_t w, int depth) {
    in = register_module("in", std::make_shared<nn::Linear>(kIn, w));
    blocks = register_module("blocks", std::make_shared<nn::ModuleList>());
    for (int i = 0; i < depth; ++i) blocks->push_back(std::make_shared<Block>(w));
    out = register_module("out", std::make_shared<nn::Linear>(w, kOut));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = (*in)(x);
    for (auto& b : *blocks) h = (*b)(h);
    return (*out)(h);
  }
  std::shared_ptr<nn::Linear> in, out;
  std::shared_ptr<nn::ModuleList> blocks;
};
}  // namespace

TEST_CASE("param: depth-muP branch multiplier and Adam depth rule", "[param]") {
  // Depth-muP: branch output x 1/sqrt(L) (relative to base depth), Adam lr x 1/sqrt(L), SGD lr
  // unchanged. L = 8, base 2: factor sqrt(2/8) = 1/2. Width 1024, base 256: k = 4.
  ResMLP m(1024, 8);
  auto p = param::Preset::depth_mup(param::Preset::mup(1024, kBase), 8, 2, {"blocks.*.fc2"},
                                    {"blocks.*"});
  auto rs = param::compute_records(m, p);
  const double k = 4.0;
  check(rec(rs, "blocks.3.fc2.weight"), {sd(1024), 0.5, 1, 0.5 / k});
  check(rec(rs, "blocks.3.fc2.bias"), {sd(kBase), 0.5, k, 0.5});
  check(rec(rs, "blocks.3.fc1.weight"), {sd(1024), 1, 1, 0.5 / k});
  check(rec(rs, "in.weight"), {sd(kIn), 1, k, 1});
  check(rec(rs, "out.weight"), {sd(kBase), 1 / k, k, 1});
  CHECK(rec(rs, "blocks.3.fc2.weight").depth_mult == Approx(0.5));

  // The multiplier is used in forward: after apply, each fc2 computes 0.5 * (x W^T + b).
  kern::manual_seed(3);
  param::apply(m, p);
  Tensor x = kern::randn({4, 1024});
  auto fc2 = m.blocks->at<Block>(0)->fc2;
  Tensor got = (*fc2)(x);
  Tensor want = kern::linear(x, fc2->weight.tensor(), fc2->bias.tensor()) * 0.5;
  CHECK(kern::max(kern::abs(got - want)).item<double>() < 1e-5);

  CHECK_THROWS_AS(param::compute_records(
                      m, param::Preset::depth_mup(param::Preset::mup(1024, kBase), 8, 2, {"nope.*"})),
                  kern::Error);
}

TEST_CASE("param: apply re-initializes, stores records and multiplies in forward", "[param]") {
  kern::manual_seed(0);
  auto m = mlp(1024);
  param::apply(*m, param::Preset::mup(1024, kBase).zero_readout());
  auto stored = param::records(*m);
  REQUIRE(stored.size() == 6);
  CHECK(rec(stored, "4.weight").multiplier == Approx(0.25));
  // Empirical init statistics match the record (uniform: std = bound / sqrt(3)).
  CHECK(tensor_std(m->at<nn::Linear>(2)->weight.tensor()) == Approx(sd(1024)).epsilon(0.02));
  CHECK(tensor_std(m->at<nn::Linear>(0)->weight.tensor()) == Approx(sd(kIn)).epsilon(0.03));
  CHECK(tensor_std(m->at<nn::Linear>(2)->bias.tensor()) == Approx(sd(kBase)).epsilon(0.1));
  CHECK(kern::max(kern::abs(m->at<nn::Linear>(4)->weight.tensor())).item<double>() == 0.0);
  CHECK(kern::max(kern::abs(m->at<nn::Linear>(4)->bias.tensor())).item<double>() == 0.0);

  // Readout: y = (h W^T) / 4 + b (the bias is not multiplied).
  auto out = m->at<nn::Linear>(4);
  {
    kern::NoGradGuard ng;
    nn::init::normal_(out->weight.tensor(), 0.0, 1.0);
    nn::init::normal_(out->bias.tensor(), 0.0, 1.0);
  }
  Tensor h = kern::randn({3, 1024});
  Tensor want = kern::linear(h, out->weight.tensor()) * 0.25 + out->bias.tensor();
  CHECK(kern::max(kern::abs((*out)(h) - want)).item<double>() < 1e-5);

  // Conv2d multiplies the same way.
  nn::Conv2d conv(nn::Conv2dOptions(4, 6, 3).padding(1));
  param::ParamRecord r;
  r.multiplier = 0.5;
  conv.set_param_record("weight", r);
  Tensor x = kern::randn({2, 4, 5, 5});
  Tensor cw = kern::conv2d(x, conv.weight.tensor(), Tensor(), conv.params()) * 0.5 +
              conv.bias.tensor().reshape({6, 1, 1});
  CHECK(kern::max(kern::abs(conv(x) - cw)).item<double>() < 1e-5);

  // clear() returns to the plain forward.
  param::clear(*m);
  CHECK(param::records(*m).empty());
  CHECK(kern::max(kern::abs((*out)(h) - kern::linear(h, out->weight.tensor(), out->bias.tensor()))).item<double>() == 0.0);
}

TEST_CASE("param: standard preset reproduces PyTorch's default init stream", "[param]") {
  // Layers built one statement at a time (constructor arguments have no evaluation order).
  auto ordered = [] {
    auto l0 = std::make_shared<nn::Linear>(kIn, 64);
    auto l2 = std::make_shared<nn::Linear>(64, 64);
    auto l4 = std::make_shared<nn::Linear>(64, kOut);
    return std::make_shared<nn::Sequential>(l0, std::make_shared<nn::ReLU>(), l2,
                                            std::make_shared<nn::ReLU>(), l4);
  };
  kern::manual_seed(11);
  auto a = ordered();  // constructors draw PyTorch's default init
  auto b = ordered();
  kern::manual_seed(11);
  param::apply(*b, param::Preset::standard());
  auto pa = a->parameters(), pb = b->parameters();
  for (size_t i = 0; i < pa.size(); ++i)
    CHECK(kern::max(kern::abs(pa[i] - pb[i])).item<double>() < 1e-6);
}

TEST_CASE("param: param_groups carry the records' lr and weight-decay multipliers", "[param]") {
  auto m = mlp(1024);
  param::apply(*m, param::Preset::mup(1024, kBase));
  namespace optim = kern::optim;
  auto groups = optim::param_groups(*m, {.family = optim::Family::Adam});
  // Adam: 2.weight has lr mult 1/4 and wd mult 4; everything else 1 and 1. No lr or weight
  // decay is set: the optimizer's options apply.
  REQUIRE(groups.size() == 1);
  const auto& g = groups[0];
  REQUIRE(g.params.size() == 6);
  REQUIRE(g.lr_mult.size() == 6);
  REQUIRE(g.wd_mult.size() == 6);
  CHECK_FALSE(g.lr.has_value());
  CHECK_FALSE(g.weight_decay.has_value());
  for (size_t j = 0; j < g.params.size(); ++j) {
    const bool hidden = g.params[j].impl_ptr() == m->at<nn::Linear>(2)->weight.tensor().impl_ptr();
    CHECK(g.lr_mult[j] == Approx(hidden ? 0.25 : 1.0));
    CHECK(g.wd_mult[j] == Approx(hidden ? 4.0 : 1.0));
  }
  auto dec = optim::param_groups(*m, {.decoupled_wd = true});
  for (double w : dec[0].wd_mult) CHECK(w == 1.0);
  // SGD multipliers: the hidden weight's lr mult is m_out / m_in = 1.
  auto sgd = optim::param_groups(*m, {.family = optim::Family::SGD});
  optim::SGD opt(sgd, {.lr = 0.1});
  CHECK(opt.param_group(0).params.size() == 6);
  CHECK(opt.lr(0) == 0.1);
  // Groups made for one family are rejected by an optimizer of the other.
  CHECK_THROWS_WITH(optim::SGD(optim::param_groups(*m, {.family = optim::Family::Adam}), {.lr = 0.1}),
                    Catch::Contains("made for Adam-like optimizers") && Catch::Contains("SGD-like"));
  CHECK_THROWS_WITH(optim::AdamW(optim::param_groups(*m, {.family = optim::Family::SGD}), {.lr = 0.1}),
                    Catch::Contains("made for SGD-like optimizers"));
}

TEST_CASE("param: AdamW(param_groups(...), {.lr, .weight_decay}) uses the optimizer's lr and weight decay",
          "[param][optim]") {
  // One AdamW step in closed form (PyTorch's rule): p1 = p0 (1 - lr_p wd_p) - lr_p m^/(sqrt(v^) + eps)
  // with m^ = g, v^ = g^2 at step 1, lr_p = lr * lr_mult, wd_p = wd * wd_mult. Under muP (Adam)
  // at width 1024 from base 256 the hidden weight has lr_mult 1/4 and wd_mult 4.
  namespace optim = kern::optim;
  kern::manual_seed(11);
  auto m = mlp(1024);
  m->to(kern::DType::Float64);
  param::apply(*m, param::Preset::mup(1024, kBase));
  const double lr = 3e-4, wd = 0.05, eps = 1e-8;
  optim::AdamW opt(optim::param_groups(*m, {.family = optim::Family::Adam}), {.lr = lr, .weight_decay = wd});
  CHECK(opt.lr(0) == lr);
  CHECK(opt.weight_decay(0) == wd);
  kern::Generator gen(4);
  const Tensor x = kern::randn({8, kIn}, kern::DType::Float64, &gen);
  const Tensor y = kern::randint(0, kOut, {8}, &gen);
  auto hidden = m->at<nn::Linear>(2)->weight.tensor();
  auto input = m->at<nn::Linear>(0)->weight.tensor();
  const Tensor h0 = hidden.detach().clone(), i0 = input.detach().clone();
  kern::cross_entropy((*m)(x), y).backward();
  const Tensor gh = hidden.grad().clone(), gi = input.grad().clone();
  opt.step();
  auto expected = [&](const Tensor& p0, const Tensor& g, double lr_p, double wd_p) {
    return p0 * (1.0 - lr_p * wd_p) - lr_p * g / (kern::abs(g) + eps);
  };
  CHECK(kern::max_abs_diff(hidden, expected(h0, gh, lr / 4, wd * 4)) < 1e-15);
  CHECK(kern::max_abs_diff(input, expected(i0, gi, lr, wd)) < 1e-15);
}

TEST_CASE("param: muP (Table 8) at its base width equals SP: same outputs and updates", "[param]") {
  // The mup library's guarantee: at the base shapes every muP rule is the identity.
  auto run = [](const param::Preset& p) {
    kern::manual_seed(5);
    auto m = mlp(kBase);
    param::apply(*m, p);
    kern::optim::Adam opt(kern::optim::param_groups(*m), {.lr = 1e-2});
    kern::Generator g(9);
    Tensor x = kern::randn({16, kIn}, kern::DType::Float32, &g);
    Tensor y = kern::randint(0, kOut, {16}, &g);
    std::vector<Tensor> outs;
    for (int s = 0; s < 3; ++s) {
      Tensor out = (*m)(x);
      outs.push_back(out.detach().clone());
      Tensor loss = kern::cross_entropy(out, y);
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
    for (auto& p : m->parameters()) outs.push_back(p.detach().clone());
    return outs;
  };
  auto sp = run(param::Preset::standard());
  auto mu = run(param::Preset::mup(kBase, kBase));
  REQUIRE(sp.size() == mu.size());
  for (size_t i = 0; i < sp.size(); ++i)
    CHECK(kern::max(kern::abs(sp[i] - mu[i])).item<double>() == 0.0);
  // Base shapes from the model itself: also SP.
  auto self = mlp(kBase);
  auto mu2 = run(param::Preset::mup(*self));
  for (size_t i = 0; i < sp.size(); ++i)
    CHECK(kern::max(kern::abs(sp[i] - mu2[i])).item<double>() == 0.0);
}

TEST_CASE("param: Table 3 and Table 8 give the same function and updates", "[param]") {
  // TP5: the two tables are equivalent (W_out = w / k with w's lr and init scaled to match).
  auto run = [](const param::Preset& p, bool adam) {
    kern::manual_seed(7);
    auto m = mlp(1024);
    param::apply(*m, p);
    std::unique_ptr<kern::optim::Optimizer> opt;
    if (adam)
      opt = std::make_unique<kern::optim::Adam>(kern::optim::param_groups(*m),
                                                kern::optim::AdamOptions{.lr = 1e-3});
    else
      opt = std::make_unique<kern::optim::SGD>(
          kern::optim::param_groups(*m, {.family = kern::optim::Family::SGD}),
          kern::optim::SGDOptions{.lr = 0.05});
    kern::Generator g(1);
    Tensor x = kern::randn({16, kIn}, kern::DType::Float32, &g);
    Tensor y = kern::randint(0, kOut, {16}, &g);
    std::vector<Tensor> outs;
    for (int s = 0; s < 3; ++s) {
      Tensor out = (*m)(x);
      outs.push_back(out.detach().clone());
      Tensor loss = kern::cross_entropy(out, y);
      opt->zero_grad();
      loss.backward();
      opt->step();
    }
    return outs;
  };
  for (bool adam : {false, true}) {
    CAPTURE(adam);
    auto a = run(param::Preset::mup(1024, kBase), adam);
    auto b = run(param::Preset::mup_table3(1024, kBase), adam);
    for (size_t i = 0; i < a.size(); ++i) {
      const double scale = kern::max(kern::abs(a[i])).item<double>();
      CHECK(kern::max(kern::abs(a[i] - b[i])).item<double>() <= 1e-4 * scale + 1e-6);
    }
  }
}

TEST_CASE("param: bad presets and names throw", "[param][errors]") {
  auto m = mlp(64);
  CHECK_THROWS_AS(param::Preset::mup(0, 256), kern::Error);
  CHECK_THROWS_AS(param::Preset::depth_mup(param::Preset::mup(64, 64), 0, 1, {"x"}), kern::Error);
  nn::Sequential other(nn::Linear(kIn, 64), nn::ReLU(), nn::Linear(64, kOut));  // no "4.*"
  CHECK_THROWS_AS(param::compute_records(*m, param::Preset::mup(other)), kern::Error);
  CHECK_THROWS_AS(param::compute_records(*m, param::Preset::standard().role("0.bias", Role::HiddenWeight)),
                  kern::Error);
  CHECK_THROWS_AS(m->at<nn::Linear>(0)->set_param_record("nope", {}), kern::Error);
  CHECK(param::glob_match("blocks.*.fc2", "blocks.12.fc2"));
  CHECK_FALSE(param::glob_match("blocks.*.fc2", "blocks.12.fc1"));
}
