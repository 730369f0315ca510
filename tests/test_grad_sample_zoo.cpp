// Per-sample gradient rules of the zoo's modules (models/grad_sample/*.cpp, contract in
// kern/nn/grad_sample.hpp). Oracle: a loop of single-example backward passes. For a random c,
// L = sum_n <c_n, y_n>, so the output gradient is c; the rule's grad[n] must equal p.grad
// after backward of <c_n, module(x[n:n+1])> (float64, 1e-12 relative to the gradient's size).
// Rules are looked up through nn::find_grad_sample_rule only (no rule function is named here).
#include <catch2/catch.hpp>

#include <kern/kern.hpp>
#include <kern/models/convnext.hpp>
#include <kern/models/equivariant.hpp>
#include <kern/models/inception_next.hpp>
#include <kern/models/longconv.hpp>
#include <kern/models/reparam.hpp>
#include <kern/nn/grad_sample.hpp>
#include <kern/param/param.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace nn = kern::nn;
namespace models = kern::models;
namespace param = kern::param;
using kern::DType;
using kern::Tensor;

namespace {

constexpr DType f64 = DType::Float64;
using Grads = std::map<std::string, Tensor>;  // parameter name -> [N, ...shape]

// The oracle: for each n, backward of <c[n], module(x[n:n+1])>; recurse = false takes the
// module's own parameters (what its rule covers), true every parameter (dotted names).
Grads loop_grads(nn::Module& m, const Tensor& x, const Tensor& c, bool recurse = false) {
  const int64_t N = x.size(0);
  std::map<std::string, std::vector<Tensor>> per;
  for (int64_t n = 0; n < N; ++n) {
    m.zero_grad();
    kern::sum(m(x.narrow(0, n, 1)) * c.narrow(0, n, 1)).backward();
    for (const auto& [name, p] : m.named_parameters(recurse))
      per[name].push_back(p.grad().defined() ? p.grad().clone() : kern::zeros(p.shape(), p.dtype()));
  }
  m.zero_grad();
  Grads out;
  for (auto& [name, v] : per) out[name] = kern::stack(v, 0);
  return out;
}

// Calls the module once with a forward hook capturing its input and output, then its rule
// with grad_output = c.
Grads rule_grads(nn::Module& m, const Tensor& x, const Tensor& c) {
  Tensor in, out;
  const nn::HookId id = m.register_forward_hook([&](nn::Module&, const Tensor& i, const Tensor& o) {
    in = i;
    out = o;
  });
  {
    kern::NoGradGuard no_grad;
    m(x);
  }
  m.remove_hook(id);
  const nn::GradSampleRule* rule = nn::find_grad_sample_rule(m);
  REQUIRE(rule != nullptr);
  REQUIRE(out.shape() == c.shape());
  Grads g;
  for (auto& s : (*rule)(m, in, out, c)) g[s.name] = s.grad;
  return g;
}

double max_abs(const Tensor& t) { return t.numel() == 0 ? 0.0 : kern::max(kern::abs(t)).item<double>(); }

// Every gradient of `want` is in `got` with the same shape and values
// (|got - want| <= tol (1 + max |want|)); `got` has nothing else.
void check_same(const Grads& got, const Grads& want, double tol = 1e-12) {
  size_t compared = 0;
  for (const auto& [name, w] : want) {
    INFO("parameter " << name);
    auto it = got.find(name);
    REQUIRE(it != got.end());
    REQUIRE(it->second.shape() == w.shape());
    CHECK(kern::max_abs_diff(it->second, w) <= tol * (1.0 + max_abs(w)));
    CHECK(max_abs(w) > 0);  // a vacuous comparison would prove nothing
    ++compared;
  }
  CHECK(compared == got.size());
}

// Gives each own parameter of m a parameterization record with forward multiplier != 1
// (0.5, 0.75, ...): the rules must return d L_n / d(stored tensor), multiplier applied.
void set_multipliers(nn::Module& m) {
  double v = 0.5;
  for (const auto& [name, p] : m.named_parameters(false)) {
    param::ParamRecord r;
    r.multiplier = v;
    m.set_param_record(name, r);
    v += 0.25;
  }
}

void randomize(nn::Module& m, double scale = 1.0) {
  kern::NoGradGuard no_grad;
  for (const auto& [name, p] : m.named_parameters(true)) Tensor(p).copy_(kern::randn(p.shape(), p.dtype()) * scale);
}

// BatchNorm-like modules in eval: random running statistics (variance in [0.5, 1.5]).
void randomize_running_stats(nn::Module& m) {
  kern::NoGradGuard no_grad;
  for (const auto& [name, b] : m.named_buffers(true)) {
    if (name.ends_with("running_mean")) Tensor(b).copy_(kern::randn(b.shape(), b.dtype()));
    if (name.ends_with("running_var")) Tensor(b).copy_(kern::rand(b.shape(), b.dtype()) + 0.5);
  }
}

// The single-module check: rule == loop, for the module's own parameters.
void check_rule(nn::Module& m, const Tensor& x, const Tensor& c) { check_same(rule_grads(m, x, c), loop_grads(m, x, c)); }

Tensor random_like_output(nn::Module& m, const Tensor& x) {
  kern::NoGradGuard no_grad;
  return kern::randn(m(x).shape(), f64);
}

}  // namespace

TEST_CASE("grad_sample_zoo: ConvNeXtBlock gamma, channels-last and conv Mlp", "[grad_sample_zoo]") {
  kern::manual_seed(11);
  for (bool conv_mlp : {false, true}) {
    INFO("conv_mlp = " << conv_mlp);
    auto block = std::make_shared<models::ConvNeXtBlock>(
        6, 3, 0.0, models::ConvNeXtOptions{.conv_mlp = conv_mlp, .ls_init_value = 0.5, .mlp_ratio = 2.0});
    block->to(f64);
    randomize(*block, 0.5);
    if (conv_mlp) set_multipliers(*block);  // gamma * 0.5 in forward
    const Tensor x = kern::randn({3, 6, 5, 4}, f64);
    check_rule(*block, x, random_like_output(*block, x));
  }
}

TEST_CASE("grad_sample_zoo: ConvNeXtBlock gamma at timm's init 1e-6 (exact where (y - x) / gamma is not)",
          "[grad_sample_zoo]") {
  kern::manual_seed(12);
  auto block = std::make_shared<models::ConvNeXtBlock>(4, 3, 0.0, models::ConvNeXtOptions{.mlp_ratio = 2.0});
  block->to(f64);
  REQUIRE(kern::max(block->gamma.tensor()).item<double>() == Approx(1e-6));
  const Tensor x = kern::randn({2, 4, 4, 4}, f64);
  check_rule(*block, x, random_like_output(*block, x));
}

TEST_CASE("grad_sample_zoo: MetaNeXtBlock gamma (eval BatchNorm in the branch)", "[grad_sample_zoo]") {
  kern::manual_seed(13);
  models::InceptionNeXtOptions o;
  o.ls_init_value = 0.3;
  o.band_kernel_size = 5;
  o.branch_ratio = 0.25;
  auto block = std::make_shared<models::inception_next::MetaNeXtBlock>(8, o, 2.0, 0.0);
  block->to(f64);
  randomize(*block, 0.5);
  randomize_running_stats(*block);
  block->eval();
  set_multipliers(*block);
  const Tensor x = kern::randn({3, 8, 6, 5}, f64);
  check_rule(*block, x, random_like_output(*block, x));
}

TEST_CASE("grad_sample_zoo: LiftingConv2d and GroupConv2d, p4 and p4m, through the filter bank",
          "[grad_sample_zoo][equivariant]") {
  kern::manual_seed(14);
  for (const std::string group : {"p4", "p4m"}) {
    const int64_t n = group == "p4" ? 4 : 8;
    INFO("group " << group);
    {
      auto lift = std::make_shared<models::LiftingConv2d>(models::GroupConvOptions(2, 3, 3).group(group).padding(1));
      lift->to(f64);
      randomize(*lift);
      const Tensor x = kern::randn({3, 2, 5, 5}, f64);
      check_rule(*lift, x, random_like_output(*lift, x));
    }
    {
      // A parameterization with multipliers != 1: NTK scales the weight by 1/sqrt(fan_in).
      auto gconv = std::make_shared<models::GroupConv2d>(
          models::GroupConvOptions(2, 3, 3).group(group).padding(nn::kSame));
      gconv->to(f64);
      param::apply(*gconv, param::Preset::ntk());
      REQUIRE(gconv->weight.multiplier() != Approx(1.0));
      const Tensor x = kern::randn({3, 2, n, 5, 5}, f64);
      check_rule(*gconv, x, random_like_output(*gconv, x));
    }
    {
      auto gconv = std::make_shared<models::GroupConv2d>(
          models::GroupConvOptions(3, 2, 2).group(group).padding(0).bias(false));  // even kernel, valid
      gconv->to(f64);
      const Tensor x = kern::randn({2, 3, n, 4, 4}, f64);
      check_rule(*gconv, x, random_like_output(*gconv, x));
    }
  }
}

TEST_CASE("grad_sample_zoo: GroupBatchNorm in eval mode; batch statistics are rejected", "[grad_sample_zoo][equivariant]") {
  kern::manual_seed(15);
  for (const std::string group : {"p4", "p4m"}) {
    auto bn = std::make_shared<models::GroupBatchNorm>(3, group);
    bn->to(f64);
    randomize(*bn);
    randomize_running_stats(*bn);
    bn->eval();
    set_multipliers(*bn);
    const int64_t n = group == "p4" ? 4 : 8;
    const Tensor x = kern::randn({3, 3, n, 3, 2}, f64);
    const Tensor c = random_like_output(*bn, x);
    check_rule(*bn, x, c);

    bn->train();
    const nn::GradSampleRule* rule = nn::find_grad_sample_rule(*bn);
    REQUIRE(rule != nullptr);
    CHECK_THROWS_WITH((*rule)(*bn, x, c, c), Catch::Contains("GroupBatchNorm") && Catch::Contains("batch statistics"));
  }
}

TEST_CASE("grad_sample_zoo: LongConvKernel (squash, smoothing), causal, L not a power of two", "[grad_sample_zoo][longconv]") {
  kern::manual_seed(16);
  for (int64_t L : {13, 20, 1}) {  // l_max 16: first L taps (13, 1), zero-padded kernel (20)
    for (int64_t window : {0, 3}) {
      INFO("L = " << L << ", ma_window_len = " << window);
      auto k = std::make_shared<models::LongConvKernel>(
          3, 16, models::LongConvKernelOptions{.lam = 0.2, .ma_window_len = window});
      k->to(f64);
      randomize(*k);  // N(0, 1) taps: the squash at 0.2 zeroes some, keeps most
      set_multipliers(*k);
      const Tensor u = kern::randn({3, 3, L}, f64);
      check_rule(*k, u, random_like_output(*k, u));
    }
  }
}

TEST_CASE("grad_sample_zoo: SGConvKernel sub-kernels (upsampled, decayed, normalized)", "[grad_sample_zoo][longconv]") {
  kern::manual_seed(17);
  for (const std::string mode : {"linear", "nearest"}) {
    INFO("interpolate " << mode);
    auto k = std::make_shared<models::SGConvKernel>(
        3, 13, models::SGConvKernelOptions{.kernel_dim = 3, .decay_min = 1.5, .decay_max = 3.0, .interpolate = mode});
    k->to(f64);
    REQUIRE(k->num_scales() == 4);  // 3 * 2^3 = 24 >= 13
    for (auto& [name, child] : k->named_children()) set_multipliers(*child);  // kernel_list.{i}
    const Tensor u = kern::randn({2, 3, 17}, f64);  // pieces at taps 0, 3, 6, 12: all reach L = 17
    const Tensor c = random_like_output(*k, u);
    // The sub-kernels live in the parameter-only child kernel_list: the rule reports them as
    // "kernel_list.{i}", the oracle takes the kernel module's parameters recursively.
    check_same(rule_grads(*k, u, c), loop_grads(*k, u, c, /*recurse=*/true));
  }
}

TEST_CASE("grad_sample_zoo: LongConv skip D through activation and GLU output linear", "[grad_sample_zoo][longconv]") {
  kern::manual_seed(18);
  for (bool transposed : {false, true}) {
    for (auto kind : {models::KernelKind::LongConv, models::KernelKind::SGConv}) {
      INFO("transposed = " << transposed << ", sgconv = " << (kind == models::KernelKind::SGConv));
      auto layer = std::make_shared<models::LongConv>(models::LongConvOptions{
          .d_model = 4, .l_max = 8, .kernel = kind, .long_conv = {.lam = 0.0}, .sgconv = {.kernel_dim = 2}, .transposed = transposed});
      layer->to(f64);
      set_multipliers(*layer);  // D * 0.5
      const Tensor x = transposed ? kern::randn({3, 4, 7}, f64) : kern::randn({3, 7, 4}, f64);
      check_rule(*layer, x, random_like_output(*layer, x));
    }
  }
}

TEST_CASE("grad_sample_zoo: Embedding scatter-adds per sample (repeated ids)", "[grad_sample_zoo][longconv]") {
  kern::manual_seed(19);
  auto emb = std::make_shared<models::longconv::Embedding>(5, 3);
  emb->to(f64);
  set_multipliers(*emb);
  const Tensor ids = kern::from_vector<int64_t>({0, 4, 4, 2, 1, 1, 1, 3, 2, 0, 2, 4}, {3, 4});
  check_rule(*emb, ids, kern::randn({3, 4, 3}, f64));
  const Tensor ids1 = kern::from_vector<int64_t>({3, 0}, {2});  // one token per sample: [N] -> [N, dim]
  check_rule(*emb, ids1, kern::randn({2, 3}, f64));
}

TEST_CASE("grad_sample_zoo: float32 (oneDNN paths) agrees with the loop to float32 accuracy", "[grad_sample_zoo]") {
  kern::manual_seed(22);
  auto block = std::make_shared<models::ConvNeXtBlock>(8, 7, 0.0, models::ConvNeXtOptions{.ls_init_value = 0.5});
  const Tensor xb = kern::randn({4, 8, 9, 9});
  Tensor cb = kern::randn({4, 8, 9, 9});
  check_same(rule_grads(*block, xb, cb), loop_grads(*block, xb, cb), 1e-4);
  auto gconv = std::make_shared<models::GroupConv2d>(models::GroupConvOptions(4, 4, 3).group("p4m").padding(nn::kSame));
  const Tensor xg = kern::randn({4, 4, 8, 7, 7});
  const Tensor cg = kern::randn({4, 4, 8, 7, 7});
  check_same(rule_grads(*gconv, xg, cg), loop_grads(*gconv, xg, cg), 1e-4);
  auto k = std::make_shared<models::LongConvKernel>(4, 64, models::LongConvKernelOptions{.lam = 0.1});
  randomize(*k);
  const Tensor u = kern::randn({4, 4, 50});
  const Tensor cu = kern::randn({4, 4, 50});
  check_same(rule_grads(*k, u, cu), loop_grads(*k, u, cu), 1e-4);
}

namespace {

// Whole-model check: every module with a rule is hooked (input, output, number of calls); one
// forward, then dL/d(each captured output) by autograd, then the rules; compared with the
// per-sample loop over the whole model for the parameters the rules cover. Also checks that
// each hooked module was called exactly once, i.e. the rules' recomputations fired no hook.
void check_whole_model(nn::Module& model, const Tensor& x, const Tensor& c, size_t min_rules) {
  struct Capture {
    std::string prefix;
    std::shared_ptr<nn::Module> module;
    const nn::GradSampleRule* rule;
    Tensor in, out;
    int calls = 0;
  };
  std::vector<Capture> caps;
  for (const auto& [name, m] : model.named_modules())
    if (const nn::GradSampleRule* r = nn::find_grad_sample_rule(*m)) caps.push_back({name, m, r});
  REQUIRE(caps.size() >= min_rules);
  std::vector<nn::HookId> ids;
  for (auto& cap : caps)
    ids.push_back(cap.module->register_forward_hook([&cap](nn::Module&, const Tensor& i, const Tensor& o) {
      cap.in = i;
      cap.out = o;
      ++cap.calls;
    }));
  const Tensor loss = kern::sum(model(x) * c);
  std::vector<Tensor> outs;
  for (auto& cap : caps) outs.push_back(cap.out);
  const std::vector<Tensor> gs = kern::grad({loss}, outs, {}, {.allow_unused = true});
  Grads got;
  for (size_t i = 0; i < caps.size(); ++i) {
    REQUIRE(gs[i].defined());
    for (auto& s : (*caps[i].rule)(*caps[i].module, caps[i].in.detach(), caps[i].out.detach(), gs[i]))
      got[caps[i].prefix.empty() ? s.name : caps[i].prefix + "." + s.name] = s.grad;
  }
  for (auto& cap : caps) CHECK(cap.calls == 1);
  for (size_t i = 0; i < caps.size(); ++i) caps[i].module->remove_hook(ids[i]);
  // The oracle restricted to the names the rules reported (kern_core's layers have rules of
  // their own, registered elsewhere, and may or may not be present).
  Grads want = loop_grads(model, x, c, /*recurse=*/true), covered;
  for (const auto& [name, g] : got) {
    INFO("parameter " << name);
    REQUIRE(want.count(name) == 1);
    covered[name] = want[name];
  }
  check_same(got, covered);
}

}  // namespace

TEST_CASE("grad_sample_zoo: whole models through hooks (ConvNeXt, InceptionNeXt, P4CNN, LongConvModel)",
          "[grad_sample_zoo]") {
  kern::manual_seed(20);
  SECTION("convnext, muP") {
    auto options = [](int64_t w) {
      return models::ConvNeXtOptions{
          .depths = {1, 2}, .dims = {w, 2 * w}, .num_classes = 3, .in_chans = 2, .kernel_size = 3, .ls_init_value = 0.7};
    };
    auto model = std::make_shared<models::ConvNeXt>(options(4));
    model->to(f64);
    model->eval();
    param::apply(*model, param::Preset::mup(models::ConvNeXt(options(2))));
    const Tensor x = kern::randn({3, 2, 8, 8}, f64);
    check_whole_model(*model, x, kern::randn({3, 3}, f64), 3);
  }
  SECTION("inception_next") {
    auto model = std::make_shared<models::InceptionNeXt>(models::InceptionNeXtOptions{
        .depths = {1, 1}, .dims = {8, 16}, .band_kernel_size = 3, .branch_ratio = 0.25, .mlp_ratios = {2},
        .ls_init_value = 0.4, .num_classes = 3, .in_chans = 1});
    model->to(f64);
    randomize_running_stats(*model);
    model->eval();
    const Tensor x = kern::randn({2, 1, 8, 8}, f64);
    check_whole_model(*model, x, kern::randn({2, 3}, f64), 2);
  }
  SECTION("p4mcnn, NTK") {
    auto model = std::make_shared<models::P4CNN>(
        models::P4CNNOptions{.group = "p4m", .num_classes = 3, .channels = 2, .num_layers = 3, .max_pool_after = 0});
    model->to(f64);
    param::apply(*model, param::Preset::ntk());
    // multipliers != 1 on the lifting and group conv weights: 1/sqrt(fan_in)
    REQUIRE(model->get_submodule("blocks.0.conv")->param_multiplier("weight") == Approx(1.0 / 3.0));
    REQUIRE(model->get_submodule("blocks.1.conv")->param_multiplier("weight") == Approx(1.0 / std::sqrt(2.0 * 8 * 9)));
    randomize_running_stats(*model);
    model->eval();
    const Tensor x = kern::randn({2, 1, 6, 6}, f64);
    check_whole_model(*model, x, kern::randn({2, 3}, f64), 6);
  }
  SECTION("longconv model (embedding, LongConv and SGConv kernels)") {
    for (auto kind : {models::KernelKind::LongConv, models::KernelKind::SGConv}) {
      auto model = std::make_shared<models::LongConvModel>(models::LongConvModelOptions{
          .vocab_size = 6, .d_model = 4, .n_layers = 2, .l_max = 8, .kernel = kind, .long_conv = {.lam = 0.0},
          .sgconv = {.kernel_dim = 2}, .num_classes = 3, .pool = models::Pool::Last});
      model->to(f64);
      const Tensor ids = kern::from_vector<int64_t>({0, 5, 5, 2, 1, 3, 1, 1, 4, 0, 2, 3, 3, 3, 0}, {3, 5});
      check_whole_model(*model, ids, kern::randn({3, 3}, f64), 5);
    }
  }
}

TEST_CASE("grad_sample_zoo: every zoo rule is found on modules from the public constructors", "[grad_sample_zoo]") {
  std::vector<std::pair<std::string, std::shared_ptr<nn::Module>>> with_rule{
      {"ConvNeXtBlock", std::make_shared<models::ConvNeXtBlock>(4, 3, 0.0, models::ConvNeXtOptions{})},
      {"MetaNeXtBlock", std::make_shared<models::inception_next::MetaNeXtBlock>(8, models::InceptionNeXtOptions{}, 4.0, 0.0)},
      {"LiftingConv2d", std::make_shared<models::LiftingConv2d>(models::GroupConvOptions(1, 2, 3))},
      {"GroupConv2d", std::make_shared<models::GroupConv2d>(models::GroupConvOptions(2, 2, 3).group("p4m"))},
      {"GroupBatchNorm", std::make_shared<models::GroupBatchNorm>(2, "p4m")},
      {"LongConvKernel", std::make_shared<models::LongConvKernel>(2, 8)},
      {"SGConvKernel", std::make_shared<models::SGConvKernel>(2, 8)},
      {"LongConv", std::make_shared<models::LongConv>(models::LongConvOptions{.d_model = 2, .l_max = 8})},
      {"Embedding", std::make_shared<models::longconv::Embedding>(4, 2)},
  };
  for (const auto& [name, m] : with_rule) {
    INFO(name);
    CHECK(nn::find_grad_sample_rule(*m) != nullptr);
  }
  // Zoo modules that own no parameter directly need no rule (their children have rules).
  std::vector<std::pair<std::string, std::shared_ptr<nn::Module>>> without{
      {"GLU", std::make_shared<models::longconv::GLU>()},
      {"ConvBN", std::make_shared<models::ConvBN>(models::ConvBNOptions{.conv = nn::Conv2dOptions(2, 2, 3)})},
  };
  for (const auto& [name, m] : without) {
    INFO(name);
    CHECK(m->named_parameters(false).empty());
    CHECK(nn::find_grad_sample_rule(*m) == nullptr);
  }
  // Exact types only: a subclass may change forward, so it inherits no rule.
  struct MyLift : models::LiftingConv2d {
    using models::LiftingConv2d::LiftingConv2d;
  };
  MyLift mine(models::GroupConvOptions(1, 1, 1));
  CHECK(nn::find_grad_sample_rule(mine) == nullptr);
}

TEST_CASE("grad_sample_zoo: bad calls throw kern::Error naming the module", "[grad_sample_zoo]") {
  kern::manual_seed(21);
  auto rule_of = [](nn::Module& m) {
    const nn::GradSampleRule* r = nn::find_grad_sample_rule(m);
    REQUIRE(r != nullptr);
    return r;
  };
  SECTION("active drop_path") {
    auto block = std::make_shared<models::ConvNeXtBlock>(4, 3, 0.2, models::ConvNeXtOptions{});
    const Tensor x = kern::randn({2, 4, 3, 3});
    CHECK_THROWS_WITH((*rule_of(*block))(*block, x, x, x), Catch::Contains("ConvNeXtBlock") && Catch::Contains("drop_path"));
    block->eval();
    CHECK_NOTHROW((*rule_of(*block))(*block, x, x, x));
  }
  SECTION("MetaNeXtBlock in training mode") {
    auto block = std::make_shared<models::inception_next::MetaNeXtBlock>(8, models::InceptionNeXtOptions{}, 4.0, 0.0);
    const Tensor x = kern::randn({2, 8, 3, 3});
    CHECK_THROWS_WITH((*rule_of(*block))(*block, x, x, x), Catch::Contains("MetaNeXtBlock") && Catch::Contains("BatchNorm2d"));
  }
  SECTION("kernel dropout in training mode") {
    auto k = std::make_shared<models::LongConvKernel>(2, 8, models::LongConvKernelOptions{.kernel_dropout = 0.1});
    const Tensor u = kern::randn({2, 2, 8});
    CHECK_THROWS_WITH((*rule_of(*k))(*k, u, u, u), Catch::Contains("LongConvKernel") && Catch::Contains("kernel_dropout"));
  }
  SECTION("shapes") {
    auto lift = std::make_shared<models::LiftingConv2d>(models::GroupConvOptions(1, 2, 3));
    const Tensor x = kern::randn({2, 1, 5, 5});
    const Tensor y = (*lift)(x).detach();
    CHECK_THROWS_WITH((*rule_of(*lift))(*lift, x, y, kern::randn({2, 2, 4, 3, 2})),
                      Catch::Contains("LiftingConv2d") && Catch::Contains("grad_output"));
    CHECK_THROWS_WITH((*rule_of(*lift))(*lift, kern::randn({2, 3, 5, 5}), y, y),
                      Catch::Contains("LiftingConv2d") && Catch::Contains("C_in = 1"));
    auto k = std::make_shared<models::LongConvKernel>(2, 8);
    const Tensor u = kern::randn({2, 3, 8});
    CHECK_THROWS_WITH((*rule_of(*k))(*k, u, u, u), Catch::Contains("LongConvKernel") && Catch::Contains("H = 2"));
    auto emb = std::make_shared<models::longconv::Embedding>(4, 2);
    const Tensor ids = kern::from_vector<int64_t>({0, 7}, {2});
    const Tensor g = kern::randn({2, 2});
    CHECK_THROWS_WITH((*rule_of(*emb))(*emb, ids, g, g), Catch::Contains("Embedding") && Catch::Contains("out of range"));
  }
}

namespace {

template <class F>
double median_seconds(F&& f, int reps = 5) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void time_rule_vs_loop(const std::string& what, nn::Module& m, const Tensor& x) {
  Tensor y;
  {
    kern::NoGradGuard no_grad;
    y = m(x);
  }
  const Tensor c = kern::randn(y.shape(), y.dtype());
  const double rule = median_seconds([&] { rule_grads(m, x, c); });
  const double loop = median_seconds([&] { loop_grads(m, x, c); });
  fmt::print("{:<44} N = {:>3}: rule {:8.4f} s, loop of N backward passes {:8.4f} s, ratio {:6.1f}x\n", what,
             x.size(0), rule, loop, loop / rule);
}

}  // namespace

// Timings, not a test (hidden: run with build/tests/kern_tests "[grad_sample_zoo_perf]").
TEST_CASE("grad_sample_zoo: rule vs per-sample loop timings", "[.][grad_sample_zoo_perf]") {
  kern::manual_seed(30);
  const int64_t N = 32;
  auto block = std::make_shared<models::ConvNeXtBlock>(32, 7, 0.0, models::ConvNeXtOptions{.ls_init_value = 0.5});
  block->eval();
  time_rule_vs_loop("ConvNeXtBlock dim 32, k7, 16x16 (float32)", *block, kern::randn({N, 32, 16, 16}));
  auto gconv = std::make_shared<models::GroupConv2d>(models::GroupConvOptions(8, 8, 3).group("p4m").padding(nn::kSame));
  time_rule_vs_loop("GroupConv2d p4m 8->8, k3, 16x16 (float32)", *gconv, kern::randn({N, 8, 8, 16, 16}));
  auto k = std::make_shared<models::LongConvKernel>(64, 1024, models::LongConvKernelOptions{.ma_window_len = 5});
  k->eval();
  time_rule_vs_loop("LongConvKernel H 64, L 1000, smoothing (float32)", *k, kern::randn({N, 64, 1000}));
  auto sg = std::make_shared<models::SGConvKernel>(64, 1024, models::SGConvKernelOptions{.kernel_dim = 32});
  time_rule_vs_loop("SGConvKernel H 64, L 1000 (float32)", *sg, kern::randn({N, 64, 1000}));
  auto emb = std::make_shared<models::longconv::Embedding>(1000, 64);
  time_rule_vs_loop("Embedding 1000 x 64, 128 tokens", *emb, kern::randint(0, 1000, {N, 128}));
}
