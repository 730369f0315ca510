// nn layers that run on the conv / norm / pool / random / loss op families: Conv2d, LayerNorm,
// LayerNorm2d, BatchNorm2d, Dropout, pooling, and the zoo's timm ConvNeXt (kern::models) that
// loads timm's state_dict (safetensors fixture) strictly and reproduces PyTorch's outputs
// and gradients.
#include "gradcheck.hpp"

#include <kern/io/safetensors.hpp>
#include <kern/models/convnext.hpp>
#include <kern/nn/nn.hpp>

#include <algorithm>
#include <cmath>

using namespace kern;
namespace init = kern::nn::init;
namespace models = kern::models;

namespace {

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

// timm ConvNeXt (conv_mlp=True) of the zoo, with depths 1 per stage, as in the fixture.
std::shared_ptr<models::ConvNeXt> convnext_fixture_model(std::vector<int64_t> dims, int64_t num_classes) {
  return std::make_shared<models::ConvNeXt>(
      models::ConvNeXtOptions{.depths = {1, 1, 1, 1}, .dims = std::move(dims), .num_classes = num_classes, .conv_mlp = true});
}

}  // namespace

TEST_CASE("Conv2d: OIHW layout, PyTorch default init bounds, forward equals conv2d", "[nn][conv]") {
  manual_seed(20);
  nn::Conv2d conv(nn::Conv2dOptions(32, 64, 3).padding(1));
  REQUIRE(conv.weight.shape() == Shape{64, 32, 3, 3});
  REQUIRE(conv.bias.shape() == Shape{64});
  double bound = 1.0 / std::sqrt(32.0 * 9);  // fan_in = C_in * kH * kW
  for (const Tensor& t : {conv.weight.tensor(), conv.bias.tensor()}) {
    REQUIRE(max(t).item() <= bound);
    REQUIRE(min(t).item() >= -bound);
  }
  REQUIRE(max(conv.weight.tensor()).item() > 0.99 * bound);
  REQUIRE(variance(conv.weight.tensor()) == Approx(bound * bound / 3).epsilon(0.03));

  // Depthwise: fan_in = C_in/groups * kH * kW = 49.
  nn::Conv2d dw(nn::Conv2dOptions(64, 64, 7).padding(3).groups(64));
  REQUIRE(dw.weight.shape() == Shape{64, 1, 7, 7});
  bound = 1.0 / 7.0;
  REQUIRE(max(dw.weight.tensor()).item() <= bound);
  REQUIRE(min(dw.weight.tensor()).item() >= -bound);
  REQUIRE(max(dw.bias.tensor()).item() <= bound);
  REQUIRE(variance(dw.weight.tensor()) == Approx(bound * bound / 3).epsilon(0.05));
  REQUIRE(dw.extra_repr() == "64, 64, kernel_size=(7, 7), stride=(1, 1), padding=(3, 3), groups=64");

  Tensor x = randn({2, 32, 9, 8});
  REQUIRE(max_abs_diff(conv(x), conv2d(x, conv.weight.tensor(), conv.bias.tensor(), {.padding = {1, 1}})) == 0.0);
  nn::Conv2d strided(nn::Conv2dOptions(32, 8, {3, 5}).stride({2, 1}).padding({0, 2}).dilation(2).bias(false));
  REQUIRE(keys(strided.named_parameters()) == std::vector<std::string>{"weight"});
  REQUIRE(max_abs_diff(strided(x), conv2d(x, strided.weight.tensor(), {},
                                          {.stride = {2, 1}, .padding = {0, 2}, .dilation = {2, 2}})) == 0.0);
  REQUIRE(strided.extra_repr() ==
          "32, 8, kernel_size=(3, 5), stride=(2, 1), padding=(0, 2), dilation=(2, 2), bias=False");
}

TEST_CASE("Conv2d padding same: odd kernels pad symmetrically, even kernels pad extra after", "[nn][conv]") {
  manual_seed(21);
  Tensor x = randn({1, 3, 7, 6});
  // Odd kernel: the same as explicit padding k / 2.
  nn::Conv2d odd(nn::Conv2dOptions(3, 4, 5).padding(nn::kSame));
  REQUIRE(odd.options().padding_same());
  Tensor y = odd(x);
  REQUIRE(y.shape() == Shape{1, 4, 7, 6});
  REQUIRE(max_abs_diff(y, conv2d(x, odd.weight.tensor(), odd.bias.tensor(), {.padding = {2, 2}})) == 0.0);
  // Even kernel 4: total padding 3 = 1 before + 2 after (PyTorch's split).
  nn::Conv2d even(nn::Conv2dOptions(3, 4, 4).padding(nn::kSame));
  y = even(x);
  REQUIRE(y.shape() == Shape{1, 4, 7, 6});
  REQUIRE(max_abs_diff(y, conv2d(pad(x, {1, 2, 1, 2}), even.weight.tensor(), even.bias.tensor())) < 1e-6);
  // A 1x4 band with dilation 1 in H and 2 in W: H total 0, W total 6 -> symmetric 3.
  nn::Conv2d band(nn::Conv2dOptions(3, 2, {1, 4}).dilation({1, 2}).padding(nn::kSame));
  y = band(x);
  REQUIRE(y.shape() == Shape{1, 2, 7, 6});
  REQUIRE(max_abs_diff(y, conv2d(x, band.weight.tensor(), band.bias.tensor(), {.padding = {0, 3}, .dilation = {1, 2}})) == 0.0);
  // 2x1 kernel: H total 1 = 0 before + 1 after.
  nn::Conv2d tall(nn::Conv2dOptions(3, 2, {2, 1}).padding(nn::kSame));
  REQUIRE(max_abs_diff(tall(x), conv2d(pad(x, {0, 0, 0, 1}), tall.weight.tensor(), tall.bias.tensor())) < 1e-6);
  REQUIRE(tall.extra_repr() == "3, 2, kernel_size=(2, 1), stride=(1, 1), padding=same");
  // kValid is no padding.
  nn::Conv2d valid(nn::Conv2dOptions(3, 2, 3).padding(nn::kValid));
  REQUIRE(valid(x).shape() == Shape{1, 2, 5, 4});
}

TEST_CASE("Conv2d rejects bad options and inputs", "[nn][conv][errors]") {
  REQUIRE_THROWS_WITH(nn::Conv2d(nn::Conv2dOptions(6, 4, 3).groups(4)),
                      Catch::Contains("groups = 4") && Catch::Contains("in_channels = 6"));
  REQUIRE_THROWS_WITH(nn::Conv2d(nn::Conv2dOptions(3, 4, 3).stride(2).padding(nn::kSame)),
                      Catch::Contains("'same' needs stride 1"));
  REQUIRE_THROWS_WITH(nn::Conv2d(nn::Conv2dOptions(3, 4, 0)), Catch::Contains("must be > 0"));
  REQUIRE_THROWS_WITH(nn::Conv2d(nn::Conv2dOptions(3, 4, 3).padding(-1)), Catch::Contains("must be >= 0"));
  nn::Conv2d conv(3, 4, 3);
  REQUIRE_THROWS_WITH(conv(zeros({1, 5, 8, 8})),
                      Catch::Contains("expected input [N, 3, H, W]") && Catch::Contains("[1, 5, 8, 8]"));
  REQUIRE_THROWS_WITH(conv(zeros({5, 8, 8})), Catch::Contains("[5, 8, 8]"));
}

TEST_CASE("LayerNorm normalizes the last dims; LayerNorm2d the channels of NCHW", "[nn][norm]") {
  manual_seed(22);
  nn::LayerNorm ln(nn::LayerNormOptions({3, 4}).eps(1e-5));
  REQUIRE(keys(ln.named_parameters()) == std::vector<std::string>{"weight", "bias"});
  REQUIRE(ln.weight.shape() == Shape{3, 4});
  REQUIRE(ln.weight.tensor().sum().item() == 12.0);  // ones
  REQUIRE(ln.bias.tensor().abs().sum().item() == 0.0);  // zeros
  init::normal_(ln.weight.tensor());
  init::normal_(ln.bias.tensor());
  Tensor x = randn({2, 5, 3, 4});
  Tensor mu = mean(x, {-2, -1}, true);
  Tensor var_ = var(x, {-2, -1}, 0, true);
  Tensor ref = (x - mu) / sqrt(var_ + 1e-5) * ln.weight.tensor() + ln.bias.tensor();
  REQUIRE(max_abs_diff(ln(x), ref) < 1e-5);
  REQUIRE_THROWS_WITH(ln(randn({2, 4, 3})), Catch::Contains("must end in [3, 4]"));
  REQUIRE(nn::LayerNorm(nn::LayerNormOptions(8).elementwise_affine(false)).named_parameters().empty());
  REQUIRE(nn::LayerNorm(8).extra_repr() == "(8,), eps=1e-05, elementwise_affine=True");

  nn::LayerNorm2d ln2(6);
  REQUIRE(ln2.options().eps() == 1e-6);  // timm's default
  init::normal_(ln2.weight.tensor());
  init::normal_(ln2.bias.tensor());
  Tensor z = randn({2, 6, 3, 5});
  Tensor m2 = mean(z, {1}, true);
  Tensor v2 = var(z, {1}, 0, true);
  Tensor ref2 = (z - m2) / sqrt(v2 + 1e-6) * ln2.weight.tensor().reshape({1, 6, 1, 1}) + ln2.bias.tensor().reshape({1, 6, 1, 1});
  Tensor out2 = ln2(z);
  REQUIRE(out2.shape() == Shape{2, 6, 3, 5});
  REQUIRE(max_abs_diff(out2, ref2) < 1e-5);
  REQUIRE_THROWS_WITH(ln2(randn({2, 5, 3, 3})), Catch::Contains("LayerNorm2d(6)"));
}

TEST_CASE("BatchNorm2d updates running stats only in training mode", "[nn][norm]") {
  manual_seed(23);
  nn::BatchNorm2d bn(3);
  REQUIRE(keys(bn.state_dict()) == std::vector<std::string>{"weight", "bias", "running_mean",
                                                            "running_var", "num_batches_tracked"});
  REQUIRE(keys(bn.named_buffers()).size() == 3);
  REQUIRE(bn.num_batches_tracked.dtype() == DType::Int64);
  REQUIRE(bn.num_batches_tracked.tensor().dim() == 0);

  Tensor x = randn({4, 3, 2, 5}) * 2.0 + 1.0;
  Tensor bmean = mean(x, {0, 2, 3});
  Tensor bvar_biased = var(x, {0, 2, 3}, 0);
  Tensor bvar_unbiased = var(x, {0, 2, 3}, 1);
  Tensor y = bn(x);
  Tensor ref = (x - bmean.reshape({1, 3, 1, 1})) / sqrt(bvar_biased.reshape({1, 3, 1, 1}) + 1e-5);
  REQUIRE(max_abs_diff(y, ref) < 1e-5);
  REQUIRE(max_abs_diff(bn.running_mean.tensor(), bmean * 0.1) < 1e-6);
  REQUIRE(max_abs_diff(bn.running_var.tensor(), bvar_unbiased * 0.1 + 0.9) < 1e-6);
  REQUIRE(bn.num_batches_tracked.tensor().item() == 1);

  // Eval: the running statistics normalize, and nothing is updated.
  bn.eval();
  const Tensor rm = bn.running_mean.tensor().clone().detach(), rv = bn.running_var.tensor().clone().detach();
  Tensor ye = bn(x);
  REQUIRE(max_abs_diff(ye, (x - rm.reshape({1, 3, 1, 1})) / sqrt(rv.reshape({1, 3, 1, 1}) + 1e-5)) < 1e-5);
  REQUIRE(max_abs_diff(bn.running_mean.tensor(), rm) == 0.0);
  REQUIRE(max_abs_diff(bn.running_var.tensor(), rv) == 0.0);
  REQUIRE(bn.num_batches_tracked.tensor().item() == 1);

  // momentum = None: a cumulative average of the batch statistics.
  nn::BatchNorm2d cum(nn::BatchNorm2dOptions(3).momentum(std::nullopt));
  Tensor x2 = randn({4, 3, 2, 5});
  cum(x);
  cum(x2);
  REQUIRE(max_abs_diff(cum.running_mean.tensor(), (bmean + mean(x2, {0, 2, 3})) * 0.5) < 1e-6);
  REQUIRE(cum.num_batches_tracked.tensor().item() == 2);
  REQUIRE(cum.extra_repr() == "3, eps=1e-05, momentum=None, affine=True, track_running_stats=True");

  // Without running stats: no buffers, batch statistics in eval mode too.
  nn::BatchNorm2d nostats(nn::BatchNorm2dOptions(3).track_running_stats(false).affine(false));
  REQUIRE(nostats.state_dict().empty());
  nostats.eval();
  REQUIRE(max_abs_diff(nostats(x), ref) < 1e-5);
  REQUIRE_THROWS_WITH(bn(randn({4, 2, 2, 2})), Catch::Contains("BatchNorm2d(3)"));

  // to(float64) keeps num_batches_tracked int64 and runs in float64.
  bn.to(DType::Float64);
  REQUIRE(bn.running_mean.dtype() == DType::Float64);
  REQUIRE(bn.num_batches_tracked.dtype() == DType::Int64);
  REQUIRE(bn(x.to(DType::Float64)).dtype() == DType::Float64);
}

TEST_CASE("train/eval recurse: Dropout is the identity and BatchNorm frozen in eval", "[nn]") {
  manual_seed(24);
  auto bn = std::make_shared<nn::BatchNorm2d>(2);
  auto drop = std::make_shared<nn::Dropout>(0.5);
  auto model = std::make_shared<nn::Sequential>(
      std::make_shared<nn::Sequential>(std::make_shared<nn::Conv2d>(2, 2, 1), bn), drop);
  Tensor x = randn({8, 2, 4, 4});

  Tensor y = (*drop)(ones({1000}));
  auto v = y.to_vector<double>();
  int zeros_count = 0;
  for (double e : v) {
    REQUIRE((e == 0.0 || e == 2.0));
    zeros_count += e == 0.0;
  }
  REQUIRE(zeros_count > 400);
  REQUIRE(zeros_count < 600);
  (*model)(x);
  REQUIRE(bn->num_batches_tracked.tensor().item() == 1);

  model->eval();
  for (auto& m : model->modules()) REQUIRE_FALSE(m->is_training());
  REQUIRE(max_abs_diff((*drop)(x), x) == 0.0);
  const Tensor rm = bn->running_mean.tensor().clone().detach();
  Tensor a = (*model)(x), b = (*model)(x);
  REQUIRE(max_abs_diff(a, b) == 0.0);  // deterministic in eval
  REQUIRE(bn->num_batches_tracked.tensor().item() == 1);
  REQUIRE(max_abs_diff(bn->running_mean.tensor(), rm) == 0.0);

  model->train();
  (*model)(x);
  REQUIRE(bn->num_batches_tracked.tensor().item() == 2);
  REQUIRE(max_abs_diff(bn->running_mean.tensor(), rm) > 0.0);
  REQUIRE_THROWS_WITH(nn::Dropout(1.5), Catch::Contains("p must be in [0, 1]"));
}

TEST_CASE("pooling modules", "[nn][pool]") {
  Tensor x = arange(0.0, 16.0).reshape({1, 1, 4, 4});
  REQUIRE(max_abs_diff(nn::MaxPool2d(2)(x), tensor({5, 7, 13, 15}).reshape({1, 1, 2, 2})) == 0.0);
  REQUIRE(max_abs_diff(nn::AvgPool2d(2)(x), tensor({2.5, 4.5, 10.5, 12.5}).reshape({1, 1, 2, 2})) == 0.0);
  REQUIRE(max_abs_diff(nn::AdaptiveAvgPool2d(1)(x), full({1, 1, 1, 1}, 7.5)) == 0.0);
  REQUIRE(nn::AdaptiveAvgPool2d({2, 1})(x).shape() == Shape{1, 1, 2, 1});
  nn::MaxPool2d mp(nn::MaxPool2dOptions(3).stride(1).padding(1));
  REQUIRE(mp(x).shape() == Shape{1, 1, 4, 4});
  REQUIRE(mp.options().stride() == std::array<int64_t, 2>{1, 1});
  REQUIRE(nn::MaxPool2d(2).options().stride() == std::array<int64_t, 2>{2, 2});
  REQUIRE(mp.extra_repr() == "kernel_size=3, stride=1, padding=1, dilation=1, ceil_mode=False");
  nn::AvgPool2d ap(nn::AvgPool2dOptions(3).stride(1).padding(1).count_include_pad(false));
  // Corner window holds 0, 1, 4, 5 (padding not counted).
  REQUIRE(ap(x).reshape({-1}).select(0, 0).item() == Approx(2.5));
  REQUIRE_THROWS_WITH(nn::MaxPool2d(nn::MaxPool2dOptions(2).padding(2)), Catch::Contains("at most half"));
  REQUIRE_THROWS_WITH(nn::AvgPool2d(2)(zeros({4, 4})), Catch::Contains("[N, C, H, W]"));
}

TEST_CASE("timm ConvNeXt: strict load of timm's state_dict reproduces PyTorch's outputs and gradients",
          "[nn][conv][norm][fixture]") {
  auto file = io::load_safetensors(std::string(KERN_TEST_DATA_DIR) + "/timm_convnext_k7.safetensors");
  nn::StateDict state;
  for (auto& [k, t] : file.tensors)
    if (k.rfind("state.", 0) == 0) state.emplace_back(k.substr(6), t);
  REQUIRE(state.size() == 56);

  auto model = convnext_fixture_model({8, 16, 24, 32}, 10);
  // Every key matches by name and shape: strict load succeeds, and key sets agree exactly.
  auto result = model->load_state_dict(state, /*strict=*/true);
  REQUIRE(result.ok());
  std::vector<std::string> ours = keys(model->state_dict()), theirs = keys(state);
  std::sort(ours.begin(), ours.end());
  std::sort(theirs.begin(), theirs.end());
  REQUIRE(ours == theirs);
  REQUIRE(max_abs_diff(model->get_parameter("stages.2.blocks.0.gamma"),
                       file.get("state.stages.2.blocks.0.gamma")) == 0.0);

  const Tensor input = file.get("input"), labels = file.get("labels");
  model->eval();
  {
    NoGradGuard ng;
    REQUIRE(max_abs_diff((*model)(input), file.get("output.eval")) < 2e-4);
  }
  model->train();
  Tensor logits = (*model)(input);
  REQUIRE(max_abs_diff(logits, file.get("output.train")) < 2e-4);
  Tensor loss = cross_entropy(logits, labels);
  REQUIRE(loss.item() == Approx(file.get("loss.train").item()).epsilon(1e-4));
  model->zero_grad();
  loss.backward();
  for (auto& [name, p] : model->named_parameters()) {
    INFO(name);
    Tensor ref = file.get("grad." + name);
    REQUIRE(p.grad().defined());
    const double scale = std::max(1e-3, max(abs(ref)).item());
    REQUIRE(max_abs_diff(p.grad(), ref) / scale < 2e-3);
  }

  // A model of another width fails strictly, naming every mis-shaped key with both shapes.
  auto wrong = convnext_fixture_model({8, 16, 24, 40}, 10);
  REQUIRE_THROWS_WITH(wrong->load_state_dict(state),
                      Catch::Contains("stages.3.blocks.0.conv_dw.weight: expected shape [40, 1, 7, 7], got [32, 1, 7, 7]") &&
                          Catch::Contains("head.fc.weight: expected shape [10, 40], got [10, 32]"));
}
