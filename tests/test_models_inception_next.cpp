// InceptionNeXt (timm's MetaNeXt): timm's parameter names/shapes for the four variants, a
// float64 gradient check of a tiny model, forward behaviour (BatchNorm modes, drop path), the
// token mixer against convolutions of its channel slices, and option errors.
#include "gradcheck.hpp"

#include <catch2/catch.hpp>
#include <kern/kern.hpp>
#include <kern/models/inception_next.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <map>
#include <string>

using namespace kern;
namespace models = kern::models;
using models::InceptionNeXt;
using models::InceptionNeXtOptions;

namespace {

// tests/data/timm_variant_shapes.json, written by timm (version in its "timm" field):
// models.<name>.params (parameter count) and models.<name>.state (state_dict key -> shape, in
// PyTorch's order). ordered_json keeps that order.
const nlohmann::ordered_json& timm_shapes() {
  static const nlohmann::ordered_json j = [] {
    std::ifstream in(std::string(KERN_TEST_DATA_DIR) + "/timm_variant_shapes.json");
    REQUIRE(in.good());
    return nlohmann::ordered_json::parse(in);
  }();
  return j;
}

void check_against_timm(const std::string& name) {
  const auto& want = timm_shapes().at("models").at(name);
  auto model = models::create_model(name);

  int64_t params = 0;
  for (const Tensor& p : model->parameters()) params += p.numel();
  CHECK(params == want.at("params").get<int64_t>());

  const auto sd = model->state_dict();
  std::vector<std::string> want_keys;
  for (const auto& [key, shape] : want.at("state").items()) want_keys.push_back(key);
  std::vector<std::string> got_keys;
  for (const auto& [key, t] : sd) got_keys.push_back(key);
  REQUIRE(got_keys.size() == want_keys.size());
  CHECK(got_keys == want_keys);  // same keys, in PyTorch's state_dict order
  for (const auto& [key, t] : sd) {
    INFO(name << ": " << key);
    REQUIRE(want.at("state").contains(key));
    const Shape expected(want.at("state").at(key).get<std::vector<int64_t>>());
    CHECK(t.shape() == expected);  // num_batches_tracked: [] (0-dim)
  }
}

// Draws every weight ~ N(0, 1/fan_in) and bias/norm/gamma ~ N(1 or 0, 0.1^2) so that a
// gradient check sees O(1) signals through every path (timm's init makes the residual
// branches ~1e-6 of the trunk).
void randomize(nn::Module& m, Generator& gen) {
  NoGradGuard ng;
  for (auto& [name, p] : m.named_parameters()) {
    if (p.dim() >= 2) {
      nn::init::normal_(p, 0.0, 1.0 / std::sqrt(double(nn::init::calculate_fan_in_and_fan_out(p).fan_in)), &gen);
    } else {
      const bool gain = name.ends_with(".weight") || name.ends_with("gamma");
      nn::init::normal_(p, gain ? 1.0 : 0.0, 0.1, &gen);
    }
  }
}

InceptionNeXtOptions tiny_options() {
  return {.depths = {1, 1}, .dims = {16, 32}, .mlp_ratios = {2, 2}, .ls_init_value = 1.0,
          .num_classes = 5};
}

bool all_finite(const Tensor& t) {
  for (double v : t.to_vector<double>())
    if (!std::isfinite(v)) return false;
  return true;
}

}  // namespace

// ---- timm's names and shapes (construction only; timing of base in the report)

TEST_CASE("inception_next_atto: timm's parameter count, state_dict keys and shapes", "[models][inception_next]") {
  check_against_timm("inception_next_atto");
}
TEST_CASE("inception_next_tiny: timm's parameter count, state_dict keys and shapes", "[models][inception_next]") {
  check_against_timm("inception_next_tiny");
}
TEST_CASE("inception_next_small: timm's parameter count, state_dict keys and shapes", "[models][inception_next]") {
  check_against_timm("inception_next_small");
}
TEST_CASE("inception_next_base: timm's parameter count, state_dict keys and shapes", "[models][inception_next]") {
  check_against_timm("inception_next_base");
}

TEST_CASE("inception_next: timm's init (weights std .02, zero bias, gamma) and drop path rates",
          "[models][inception_next]") {
  manual_seed(0);
  auto m = models::inception_next_atto({.num_classes = 10, .drop_path_rate = 0.1});
  for (auto& [name, p] : m->named_parameters()) {
    INFO(name);
    auto v = p.to_vector<double>();
    if (name.ends_with("gamma")) {
      for (double x : v) REQUIRE(x == Approx(1e-6));
    } else if (p.dim() >= 2) {  // conv / linear weights
      double ss = 0;
      for (double x : v) ss += x * x;
      if (p.numel() >= 1000) CHECK(std::sqrt(ss / v.size()) == Approx(0.02).epsilon(0.1));
    } else if (name.ends_with(".bias")) {
      for (double x : v) REQUIRE(x == 0.0);
    } else {  // BatchNorm / LayerNorm weights
      for (double x : v) REQUIRE(x == 1.0);
    }
  }
  // torch.linspace(0, 0.1, 12) over the 2 + 2 + 6 + 2 blocks: first 0 (Identity), last 0.1.
  REQUIRE(m->get_submodule("stages.0.blocks.0.drop_path")->name() == "Identity");
  auto rate = [&](const std::string& path) {
    auto dp = std::dynamic_pointer_cast<nn::DropPath>(m->get_submodule(path));
    REQUIRE(dp != nullptr);
    return dp->options().drop_prob();
  };
  CHECK(rate("stages.0.blocks.1.drop_path") == Approx(0.1 / 11));
  CHECK(rate("stages.2.blocks.0.drop_path") == Approx(0.1 * 4 / 11));
  CHECK(rate("stages.3.blocks.1.drop_path") == Approx(0.1));
}

// ---- derivatives

TEST_CASE("inception_next: float64 gradcheck of a tiny model (train-mode BatchNorm)",
          "[models][inception_next][gradcheck]") {
  Generator gen(7);
  auto model = std::make_shared<InceptionNeXt>(tiny_options());
  model->to(DType::Float64);
  randomize(*model, gen);
  model->train();
  Tensor x = randn({2, 3, 16, 16}, DType::Float64, &gen);

  SECTION("w.r.t. the input") {
    testing::Fn f = [&](const std::vector<Tensor>& in) { return (*model)(in[0]); };
    KERN_GRADCHECK(f, {x});
  }
  SECTION("w.r.t. token mixer, norm, downsample and layer-scale parameters") {
    const std::vector<std::string> names = {
        "stages.0.blocks.0.token_mixer.dwconv_hw.weight", "stages.0.blocks.0.token_mixer.dwconv_w.weight",
        "stages.1.blocks.0.token_mixer.dwconv_h.weight",  "stages.1.blocks.0.token_mixer.dwconv_h.bias",
        "stages.0.blocks.0.norm.weight",                  "stages.1.downsample.0.bias",
        "stages.1.blocks.0.gamma",                        "head.norm.weight"};
    std::vector<Tensor> ps;
    for (auto& n : names) ps.push_back(model->get_parameter(n));
    testing::Fn f = [&](const std::vector<Tensor>& in) {
      nn::StateDict sub;
      for (size_t i = 0; i < names.size(); ++i) sub.emplace_back(names[i], in[i]);
      return nn::functional_call(*model, sub, x);
    };
    KERN_GRADCHECK(f, ps);
  }
}

// ---- forward behaviour

TEST_CASE("inception_next_atto forward: shapes, finiteness, BatchNorm train vs eval",
          "[models][inception_next]") {
  manual_seed(1);
  NoGradGuard no_grad;  // forward only: no graph to record
  auto m = models::inception_next_atto({.num_classes = 10});
  Generator gen(3);
  Tensor x = randn({2, 3, 64, 64}, DType::Float32, &gen);

  m->eval();
  Tensor feats = m->forward_features(x);
  REQUIRE(feats.shape() == Shape{2, 320, 2, 2});
  REQUIRE(m->forward_head(feats, /*pre_logits=*/true).shape() == Shape{2, 960});
  Tensor y_eval = (*m)(x);
  REQUIRE(y_eval.shape() == Shape{2, 10});
  REQUIRE(all_finite(y_eval));
  REQUIRE(max_abs_diff(m->forward_head(feats), y_eval) == 0.0);
  // timm's MlpClassifierHead order: mean over H, W -> fc1 -> GELU -> LayerNorm(eps 1e-6) -> fc2.
  {
    auto& h = *m->head;
    REQUIRE(h.norm->options().eps() == 1e-6);
    Tensor z = gelu(linear(feats.mean({2, 3}), h.fc1->weight.tensor(), h.fc1->bias.tensor()));
    z = layer_norm(z, {960}, h.norm->weight.tensor(), h.norm->bias.tensor(), 1e-6);
    auto fc2 = std::dynamic_pointer_cast<nn::Linear>(h.fc2);
    REQUIRE(fc2 != nullptr);
    CHECK(max_abs_diff(y_eval, linear(z, fc2->weight.tensor(), fc2->bias.tensor())) <= 1e-5);
  }
  Tensor stem_mean = m->get_buffer("stem.1.running_mean");  // eval leaves the statistics alone
  REQUIRE(stem_mean.to_vector<double>() == std::vector<double>(40, 0.0));
  REQUIRE(m->get_buffer("stem.1.num_batches_tracked").item() == 0);

  // Training mode normalizes with batch statistics and updates the running ones.
  m->train();
  Tensor y_train = (*m)(x);
  REQUIRE(all_finite(y_train));
  CHECK(max_abs_diff(y_train, y_eval) > 1e-4);
  CHECK(m->get_buffer("stem.1.num_batches_tracked").item() == 1);
  CHECK(m->get_buffer("stages.3.blocks.1.norm.num_batches_tracked").item() == 1);
  double moved = 0;
  for (double v : stem_mean.to_vector<double>()) moved += std::abs(v);
  CHECK(moved > 0);

  // num_classes = 0: head.fc2 is Identity, forward gives the head's pre-logits.
  auto features = models::inception_next_atto({.num_classes = 0});
  features->eval();
  CHECK((*features)(x.narrow(2, 0, 32).narrow(3, 0, 32)).shape() == Shape{2, 960});
  CHECK_THROWS_AS(features->get_parameter("head.fc2.weight"), Error);
}

TEST_CASE("inception_next: drop path is the identity in eval mode", "[models][inception_next]") {
  manual_seed(2);
  NoGradGuard no_grad;
  auto opts = tiny_options();
  opts.depths = {2, 2};
  opts.drop_path_rate = 0.5;
  auto with_dp = std::make_shared<InceptionNeXt>(opts);
  opts.drop_path_rate = 0.0;
  auto without = std::make_shared<InceptionNeXt>(opts);
  without->load_state_dict(with_dp->state_dict());  // same keys: DropPath has no state
  Generator gen(5);
  Tensor x = randn({4, 3, 16, 16}, DType::Float32, &gen);

  with_dp->eval();
  without->eval();
  REQUIRE(max_abs_diff((*with_dp)(x), (*without)(x)) == 0.0);
  // In training, samples of residual branches are dropped (and BN statistics match).
  with_dp->train();
  without->train();
  manual_seed(11);
  CHECK(max_abs_diff((*with_dp)(x), (*without)(x)) > 1e-6);
}

TEST_CASE("inception_next: token mixer = identity part + depthwise convs of its channel slices",
          "[models][inception_next]") {
  manual_seed(4);
  // dim 22, ratio 0.25: gc = int(5.5) = 5, identity = 22 - 15 = 7 (timm's truncation).
  models::inception_next::InceptionDWConv2d mixer(22, 3, 9, 0.25);
  REQUIRE(mixer.split_sizes() == std::vector<int64_t>{7, 5, 5, 5});
  REQUIRE(mixer.dwconv_hw->weight.shape() == Shape{5, 1, 3, 3});
  REQUIRE(mixer.dwconv_w->weight.shape() == Shape{5, 1, 1, 9});
  REQUIRE(mixer.dwconv_h->weight.shape() == Shape{5, 1, 9, 1});
  Generator gen(9);
  Tensor x = randn({2, 22, 9, 13}, DType::Float32, &gen);  // H != W catches a swapped band
  Tensor got = mixer(x);
  REQUIRE(got.shape() == x.shape());

  auto dw = [](const Tensor& xs, const nn::Conv2d& c, std::array<int64_t, 2> pad) {
    return conv2d(xs, c.weight.tensor(), c.bias.tensor(), {.padding = pad, .groups = 5});
  };
  Tensor want = cat({x.narrow(1, 0, 7),                                  // identity
                     dw(x.narrow(1, 7, 5), *mixer.dwconv_hw, {1, 1}),    // 3 x 3
                     dw(x.narrow(1, 12, 5), *mixer.dwconv_w, {0, 4}),    // 1 x 9
                     dw(x.narrow(1, 17, 5), *mixer.dwconv_h, {4, 0})},   // 9 x 1
                    1);
  REQUIRE(max_abs_diff(got.narrow(1, 0, 7), x.narrow(1, 0, 7)) == 0.0);
  REQUIRE(max_abs_diff(got, want) <= 1e-5);
}

// ---- errors

TEST_CASE("inception_next: bad options throw kern::Error naming the field", "[models][inception_next][errors]") {
  auto build = [](InceptionNeXtOptions o) { return std::make_shared<InceptionNeXt>(o); };
  auto base = tiny_options();

  auto o = base;
  o.dims = {4, 32};  // int(4 * 0.125) = 0 channels per conv branch
  REQUIRE_THROWS_WITH(build(o), Catch::Contains("dims[0] = 4 cannot be split with branch_ratio 0.125"));
  o = base;
  o.branch_ratio = 0.5;  // 3 branches of 8 > 16 channels
  REQUIRE_THROWS_WITH(build(o), Catch::Contains("dims[0] = 16") && Catch::Contains("branch_ratio 0.5"));
  o = base;
  o.dims = {16, 32, 64};
  REQUIRE_THROWS_WITH(build(o), Catch::Contains("dims has 3 entries but depths has 2"));
  o = base;
  o.depths = {1, 1, 1};
  o.dims = {16, 32, 64};
  REQUIRE_THROWS_WITH(build(o), Catch::Contains("mlp_ratios has 2 entries but depths has 3"));
  o = base;
  o.depths = {};
  REQUIRE_THROWS_WITH(build(o), Catch::Contains("depths must have at least one stage"));
  o = base;
  o.band_kernel_size = 10;
  REQUIRE_THROWS_WITH(build(o), Catch::Contains("band_kernel_size (10)"));
  o = base;
  o.drop_path_rate = 1.0;
  REQUIRE_THROWS_WITH(build(o), Catch::Contains("drop_path_rate must be in [0, 1)"));
  o = base;
  o.mlp_ratios = {4};  // one value for every stage is fine, as in timm
  REQUIRE_NOTHROW(build(o));
  o.mlp_ratios = {4, 4, 4, 3};  // so is timm's default with fewer stages (first entries used)
  REQUIRE(build(o)->get_parameter("stages.1.blocks.0.mlp.fc1.weight").shape() == Shape{128, 32, 1, 1});

  auto m = build(base);
  REQUIRE_THROWS_WITH((*m)(zeros({2, 4, 16, 16})), Catch::Contains("InceptionNeXt: expected input [N, 3, H, W], got [2, 4, 16, 16]"));
}
