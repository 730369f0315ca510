// The ConvNeXt family of the zoo: timm's outputs and gradients (safetensors fixture made by
// timm 1.0.29), timm's state_dict keys/shapes/parameter counts of the real variants, float64
// gradient checks, large kernels (31x31) against a reference written with plain ops, drop
// path, and bad options.
#include "backend_paths.hpp"
#include "gradcheck.hpp"

#include <kern/io/safetensors.hpp>
#include <kern/models/convnext.hpp>
#include <kern/models/registry.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>

using namespace kern;
namespace models = kern::models;
using models::ConvNeXt;
using models::ConvNeXtOptions;

namespace {

std::vector<std::string> sorted_keys(const nn::StateDict& sd) {
  std::vector<std::string> out;
  for (auto& [k, t] : sd) out.push_back(k);
  std::sort(out.begin(), out.end());
  return out;
}

// Norm weights/biases and layer scales away from 1 / 0 / 1e-6 so that every path of the
// block shows in the outputs and gradients (as the timm fixture does).
void randomize_affine(nn::Module& m, uint64_t seed) {
  Generator gen(seed);
  NoGradGuard ng;
  for (auto& [name, p] : m.named_parameters()) {
    if (p.dim() != 1) continue;
    const bool gain = name.ends_with("gamma") || (name.find("norm") != std::string::npos && name.ends_with("weight"));
    p.copy_(gain ? rand(p.shape(), p.dtype(), &gen) + 0.5 : randn(p.shape(), p.dtype(), &gen) * 0.1);
  }
}

// timm's LayerNorm2d from plain ops: layer_norm over C of [N, C, H, W].
Tensor ln_channels(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  return layer_norm(x.permute({0, 2, 3, 1}), Shape{x.size(1)}, w, b, eps).permute({0, 3, 1, 2});
}

// timm's ConvNeXt forward written with kern ops only (no nn modules), reading the model's
// parameters by timm name. Works for both conv_mlp layouts (fc weights [out, in, 1, 1] or [out, in]).
Tensor reference_forward(const nn::Module& m, const ConvNeXtOptions& o, const Tensor& x) {
  auto P = [&](const std::string& n) { return m.get_parameter(n); };
  const double eps = o.norm_eps;
  Tensor h = conv2d(x, P("stem.0.weight"), P("stem.0.bias"), {.stride = {o.patch_size, o.patch_size}});
  h = ln_channels(h, P("stem.1.weight"), P("stem.1.bias"), eps);
  for (size_t i = 0; i < o.depths.size(); ++i) {
    const std::string s = "stages." + std::to_string(i) + ".";
    if (i > 0) {
      h = ln_channels(h, P(s + "downsample.0.weight"), P(s + "downsample.0.bias"), eps);
      h = conv2d(h, P(s + "downsample.1.weight"), P(s + "downsample.1.bias"), {.stride = {2, 2}});
    }
    for (int64_t j = 0; j < o.depths[i]; ++j) {
      const std::string b = s + "blocks." + std::to_string(j) + ".";
      const int64_t C = h.size(1), k = o.kernel_size;
      Tensor t = conv2d(h, P(b + "conv_dw.weight"), P(b + "conv_dw.bias"),
                        {.padding = {k / 2, k / 2}, .groups = C});
      t = ln_channels(t, P(b + "norm.weight"), P(b + "norm.bias"), eps).permute({0, 2, 3, 1});  // [N, H, W, C]
      const Shape nhwc = t.shape();
      Tensor w1 = P(b + "mlp.fc1.weight"), w2 = P(b + "mlp.fc2.weight");
      w1 = w1.reshape({w1.size(0), C});
      w2 = w2.reshape({C, w2.size(1)});
      Tensor r = gelu(matmul(t.reshape({-1, C}), w1.t()) + P(b + "mlp.fc1.bias"));
      r = matmul(r, w2.t()) + P(b + "mlp.fc2.bias");
      r = (r * P(b + "gamma")).reshape(nhwc).permute({0, 3, 1, 2});
      h = h + r;
    }
  }
  Tensor pooled = h.mean({2, 3});  // [N, C]
  pooled = layer_norm(pooled, Shape{pooled.size(1)}, P("head.norm.weight"), P("head.norm.bias"), eps);
  return matmul(pooled, P("head.fc.weight").t()) + P("head.fc.bias");
}

int64_t param_count(const nn::Module& m) {
  int64_t n = 0;
  for (auto& p : m.parameters()) n += p.numel();
  return n;
}

// Construction only (tiny has 28M parameters); one case per variant keeps each well under 10 s.
void check_against_timm_shapes(const std::string& name) {
  std::ifstream f(std::string(KERN_TEST_DATA_DIR) + "/timm_variant_shapes.json");
  REQUIRE(f.good());
  const auto json = nlohmann::ordered_json::parse(f);
  const auto& ref = json.at("models").at(name);
  auto model = models::create_model(name);
  REQUIRE(param_count(*model) == ref.at("params").get<int64_t>());
  const nn::StateDict sd = model->state_dict();  // parameters and buffers (ConvNeXt has no buffers)
  REQUIRE(sd.size() == ref.at("state").size());
  size_t i = 0;
  for (const auto& [key, shape] : ref.at("state").items()) {  // in timm's order
    INFO(key);
    REQUIRE(sd[i].first == key);
    REQUIRE(sd[i].second.shape() == Shape(shape.get<std::vector<int64_t>>()));
    ++i;
  }
}

}  // namespace

TEST_CASE("ConvNeXt: strict load of timm's state_dict reproduces timm's outputs and gradients",
          "[models][convnext][fixture][backend]") {
  auto file = io::load_safetensors(std::string(KERN_TEST_DATA_DIR) + "/timm_convnext_k7.safetensors");
  nn::StateDict state;
  for (auto& [k, t] : file.tensors)
    if (k.rfind("state.", 0) == 0) state.emplace_back(k.substr(6), t);
  REQUIRE(state.size() == 56);

  ConvNeXt model({.depths = {1, 1, 1, 1}, .dims = {8, 16, 24, 32}, .num_classes = 10, .conv_mlp = true});
  REQUIRE(model.load_state_dict(state, /*strict=*/true).ok());
  REQUIRE(sorted_keys(model.state_dict()) == sorted_keys(state));

  const Tensor input = file.get("input"), labels = file.get("labels");
  for (Backend backend : {Backend::Fast, Backend::Reference}) {
    INFO((backend == Backend::Fast ? "fast" : "reference") << " backend");
    BackendGuard guard(backend);
    const auto paths_before = backend::path_counts();
    model.eval();
    {
      NoGradGuard ng;
      REQUIRE(max_abs_diff(model(input), file.get("output.eval")) < 2e-4);
      REQUIRE(model.forward_features(input).shape() == Shape{2, 32, 2, 2});  // 64 / 32
    }
    model.train();
    model.zero_grad();
    Tensor logits = model(input);
    REQUIRE(max_abs_diff(logits, file.get("output.train")) < 2e-4);
    Tensor loss = cross_entropy(logits, labels);
    REQUIRE(loss.item() == Approx(file.get("loss.train").item()).epsilon(1e-4));
    loss.backward();
    int checked = 0;
    for (auto& [name, p] : model.named_parameters()) {
      INFO(name);
      Tensor ref = file.get("grad." + name);
      REQUIRE(p.grad().defined());
      const double scale = std::max(1e-3, max(abs(ref)).item());
      REQUIRE(max_abs_diff(p.grad(), ref) / scale < 2e-3);
      ++checked;
    }
    REQUIRE(checked == 56);
    // Each side ran its own kernels: stem / downsample convs, depthwise 7x7, LayerNorm, the
    // MLP's GEMMs and GELU on the fast backend; none of them on the reference backend.
    using testing::Path, testing::Primitive;
    const auto paths = backend::path_counts() - paths_before;
    INFO("paths: " << testing::describe(paths));
    if (backend == Backend::Fast) {
      for (Primitive p : {Primitive::Conv2d, Primitive::DepthwiseConv2d, Primitive::LayerNorm, Primitive::Gemm,
                          Primitive::Eltwise, Primitive::Softmax}) {
        INFO(backend::primitive_name(p));
        REQUIRE(paths(p, Path::Fast) > 0);
      }
    } else {
      REQUIRE(paths.total(Path::Fast) == 0);
      REQUIRE(paths(Primitive::DepthwiseConv2d, Path::Reference) > 0);
    }
  }
}

TEST_CASE("ConvNeXt: convnext_atto has timm's parameter count and state_dict", "[models][convnext]") {
  check_against_timm_shapes("convnext_atto");
}
TEST_CASE("ConvNeXt: convnext_femto has timm's parameter count and state_dict", "[models][convnext]") {
  check_against_timm_shapes("convnext_femto");
}
TEST_CASE("ConvNeXt: convnext_tiny has timm's parameter count and state_dict", "[models][convnext]") {
  check_against_timm_shapes("convnext_tiny");
}

TEST_CASE("ConvNeXt: the registered variants and their options", "[models][convnext]") {
  const auto listed = models::list_models("convnext_*");
  for (const char* name : {"convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny",
                           "convnext_small", "convnext_base"})
    REQUIRE(std::find(listed.begin(), listed.end(), name) != listed.end());
  // timm: atto..nano use the NCHW 1x1-conv Mlp, tiny..base the NHWC Linear Mlp.
  for (const char* name : {"convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano"})
    REQUIRE(models::convnext_options(name).conv_mlp);
  for (const char* name : {"convnext_tiny", "convnext_small", "convnext_base"})
    REQUIRE(!models::convnext_options(name).conv_mlp);
  const auto nano = models::convnext_options("convnext_nano");
  REQUIRE(nano.depths == std::vector<int64_t>{2, 2, 8, 2});
  REQUIRE(nano.dims == std::vector<int64_t>{80, 160, 320, 640});
  const auto base = models::convnext_options("convnext_base");
  REQUIRE(base.depths == std::vector<int64_t>{3, 3, 27, 3});
  REQUIRE(base.dims == std::vector<int64_t>{128, 256, 512, 1024});
  // create_model's options reach the ConvNeXt options.
  const auto o = models::convnext_options("convnext_pico", {.num_classes = 7, .in_chans = 2, .drop_rate = 0.1,
                                                            .drop_path_rate = 0.2});
  REQUIRE((o.num_classes == 7 && o.in_chans == 2 && o.drop_rate == 0.1 && o.drop_path_rate == 0.2));
  REQUIRE((o.kernel_size == 7 && o.ls_init_value == 1e-6 && o.mlp_ratio == 4.0 && o.patch_size == 4 &&
           o.norm_eps == 1e-6));
}

TEST_CASE("ConvNeXt: timm's init, shapes of forward_features / forward_head, num_classes 0",
          "[models][convnext]") {
  manual_seed(3);
  ConvNeXt m({.depths = {2, 2, 2, 1}, .dims = {8, 16, 64, 32}, .num_classes = 7, .in_chans = 2});
  // trunc_normal(std 0.02) weights, zero biases, gamma = 1e-6, norm weights 1.
  const Tensor w = m.get_parameter("stages.2.blocks.1.mlp.fc1.weight");  // [256, 64]
  REQUIRE(w.shape() == Shape{256, 64});
  const double mean_w = w.mean().item();
  const double std_w = std::sqrt(((w - mean_w) * (w - mean_w)).mean().item());
  REQUIRE(std_w == Approx(0.02).epsilon(0.03));
  REQUIRE(std::abs(mean_w) < 1e-3);
  REQUIRE(max(abs(m.get_parameter("stages.2.blocks.1.mlp.fc1.bias"))).item() == 0.0);
  REQUIRE(max(abs(m.get_parameter("stages.1.downsample.1.bias"))).item() == 0.0);
  REQUIRE(max(abs(m.get_parameter("head.fc.bias"))).item() == 0.0);
  REQUIRE(max_abs_diff(m.get_parameter("stages.1.blocks.0.gamma"), full({16}, 1e-6)) < 1e-12);
  REQUIRE(max_abs_diff(m.get_parameter("stem.1.weight"), ones({8})) == 0.0);
  REQUIRE(m.get_parameter("stem.0.weight").shape() == Shape{8, 2, 4, 4});

  NoGradGuard ng;
  m.eval();
  Tensor x = randn({2, 2, 64, 64});
  Tensor feats = m.forward_features(x);
  REQUIRE(feats.shape() == Shape{2, 32, 2, 2});  // H / 32
  REQUIRE(m.forward_head(feats, /*pre_logits=*/true).shape() == Shape{2, 32});
  REQUIRE(max_abs_diff(m.forward_head(feats), m(x)) == 0.0);
  REQUIRE(m(x).shape() == Shape{2, 7});

  // num_classes 0: no classifier parameters; forward gives the pooled, normalized features.
  ConvNeXt bare({.depths = {1, 1}, .dims = {4, 8}, .num_classes = 0});
  for (auto& [k, t] : bare.state_dict()) REQUIRE(k.rfind("head.fc", 0) == std::string::npos);
  REQUIRE(bare(randn({1, 3, 32, 32})).shape() == Shape{1, 8});

  // head_init_scale multiplies the classifier's init.
  manual_seed(4);
  ConvNeXt a({.depths = {1}, .dims = {8}, .num_classes = 5});
  manual_seed(4);
  ConvNeXt b({.depths = {1}, .dims = {8}, .num_classes = 5, .head_init_scale = 0.5});
  REQUIRE(max_abs_diff(b.get_parameter("head.fc.weight"), a.get_parameter("head.fc.weight") * 0.5) < 1e-9);
  REQUIRE(max_abs_diff(b.get_parameter("stem.0.weight"), a.get_parameter("stem.0.weight")) == 0.0);
}

TEST_CASE("ConvNeXt: float64 gradients w.r.t. input and parameters (both Mlp layouts)",
          "[models][convnext][gradcheck]") {
  for (bool conv_mlp : {true, false}) {
    INFO("conv_mlp " << conv_mlp);
    manual_seed(11);
    ConvNeXt model({.depths = {1, 1}, .dims = {4, 8}, .num_classes = 3, .kernel_size = 7, .conv_mlp = conv_mlp});
    model.to(DType::Float64);
    randomize_affine(model, 12);
    const std::vector<std::string> names = {"stem.0.weight", "stages.0.blocks.0.conv_dw.weight",
                                            "stages.0.blocks.0.gamma", "stages.1.downsample.1.weight",
                                            "stages.1.blocks.0.norm.weight", "stages.1.blocks.0.mlp.fc2.weight",
                                            "head.norm.bias", "head.fc.weight"};
    testing::Fn f = [&](const std::vector<Tensor>& in) {
      nn::StateDict sub;
      for (size_t i = 0; i < names.size(); ++i) sub.emplace_back(names[i], in[i + 1]);
      return nn::functional_call(model, sub, in[0]);
    };
    std::vector<Tensor> inputs = {randn({2, 3, 16, 16}, DType::Float64)};
    for (auto& n : names) inputs.push_back(model.get_parameter(n).detach().clone());
    KERN_GRADCHECK(f, inputs);
  }
}

TEST_CASE("ConvNeXt: kernel 31 agrees with a plain-ops reference; gradcheck at k = 31",
          "[models][convnext][gradcheck]") {
  for (bool conv_mlp : {true, false}) {
    INFO("conv_mlp " << conv_mlp);
    manual_seed(21);
    const ConvNeXtOptions o{
        .depths = {1, 2}, .dims = {4, 8}, .num_classes = 5, .kernel_size = 31, .conv_mlp = conv_mlp};
    ConvNeXt model(o);
    REQUIRE(model.get_parameter("stages.1.blocks.1.conv_dw.weight").shape() == Shape{8, 1, 31, 31});
    model.to(DType::Float64);
    randomize_affine(model, 22);
    model.eval();
    NoGradGuard ng;
    Tensor x = randn({2, 3, 64, 64}, DType::Float64);  // 16x16 then 8x8: the 31x31 kernel spans everything
    Tensor ours = model(x), ref = reference_forward(model, o, x);
    REQUIRE(ours.shape() == Shape{2, 5});
    REQUIRE(max_abs_diff(ours, ref) < 1e-10 * std::max(1.0, max(abs(ref)).item()));
  }
  // Tiny 31x31 model (patch 1, so the kernel is far larger than the 6x6 map): gradients
  // w.r.t. the input and the parameters around the 31x31 depthwise conv.
  manual_seed(23);
  ConvNeXt tiny({.depths = {1}, .dims = {2}, .num_classes = 2, .in_chans = 1, .kernel_size = 31,
                 .ls_init_value = 1.0, .patch_size = 1});
  tiny.to(DType::Float64);
  randomize_affine(tiny, 24);
  const std::vector<std::string> names = {"stem.0.bias", "stages.0.blocks.0.conv_dw.bias", "stages.0.blocks.0.gamma"};
  testing::Fn f = [&](const std::vector<Tensor>& in) {
    nn::StateDict sub;
    for (size_t i = 0; i < names.size(); ++i) sub.emplace_back(names[i], in[i + 1]);
    return nn::functional_call(tiny, sub, in[0]);
  };
  std::vector<Tensor> inputs = {randn({1, 1, 6, 6}, DType::Float64)};
  for (auto& n : names) inputs.push_back(tiny.get_parameter(n).detach().clone());
  KERN_GRADCHECK(f, inputs);
}

TEST_CASE("ConvNeXt: conv_mlp true and false compute the same function on the same weights",
          "[models][convnext]") {
  manual_seed(31);
  ConvNeXt nchw({.depths = {2, 1}, .dims = {8, 16}, .num_classes = 4, .conv_mlp = true});
  ConvNeXt nhwc({.depths = {2, 1}, .dims = {8, 16}, .num_classes = 4, .conv_mlp = false});
  randomize_affine(nchw, 32);
  nn::StateDict sd;
  for (auto& [k, t] : nchw.state_dict())  // 1x1 conv [out, in, 1, 1] -> Linear [out, in]
    sd.emplace_back(k, k.find(".mlp.fc") != std::string::npos && t.dim() == 4 ? t.reshape({t.size(0), t.size(1)}) : t);
  nhwc.load_state_dict(sd);
  NoGradGuard ng;
  nchw.eval(), nhwc.eval();
  Tensor x = randn({2, 3, 32, 32});
  REQUIRE(max_abs_diff(nchw(x), nhwc(x)) < 1e-4);
}

TEST_CASE("ConvNeXt: drop path rises linearly, is the identity in eval and random in training",
          "[models][convnext]") {
  manual_seed(41);
  const ConvNeXtOptions o{.depths = {1, 1, 2}, .dims = {4, 8, 8}, .num_classes = 3, .ls_init_value = 1.0,
                          .drop_path_rate = 0.3};
  ConvNeXt dp(o);
  ConvNeXtOptions plain_o = o;
  plain_o.drop_path_rate = 0.0;
  ConvNeXt plain(plain_o);
  plain.load_state_dict(dp.state_dict());

  // timm: torch.linspace(0, 0.3, 4) over the blocks; a zero rate is an Identity.
  REQUIRE(dp.get_submodule("stages.0.blocks.0.drop_path")->name() == "Identity");
  const std::vector<std::pair<std::string, double>> rates = {
      {"stages.1.blocks.0.drop_path", 0.1}, {"stages.2.blocks.0.drop_path", 0.2}, {"stages.2.blocks.1.drop_path", 0.3}};
  for (auto& [path, rate] : rates) {
    auto m = std::dynamic_pointer_cast<nn::DropPath>(dp.get_submodule(path));
    REQUIRE(m != nullptr);
    REQUIRE(m->options().drop_prob() == Approx(rate));
  }

  NoGradGuard ng;
  Tensor x = randn({8, 3, 32, 32});
  dp.eval(), plain.eval();
  REQUIRE(max_abs_diff(dp(x), plain(x)) == 0.0);

  dp.train(), plain.train();
  manual_seed(1);
  Tensor a = dp(x);
  manual_seed(1);
  Tensor a_again = dp(x);
  manual_seed(2);
  Tensor b = dp(x);
  REQUIRE(max_abs_diff(a, a_again) == 0.0);
  REQUIRE(max_abs_diff(a, b) > 1e-3);
  REQUIRE(max_abs_diff(a, plain(x)) > 1e-3);
}

TEST_CASE("ConvNeXt: bad options and inputs throw kern::Error naming the field",
          "[models][convnext][errors]") {
  REQUIRE_THROWS_AS(ConvNeXt({.depths = {1}, .dims = {4}, .kernel_size = 8}), Error);
  REQUIRE_THROWS_WITH(ConvNeXt({.depths = {1}, .dims = {4}, .kernel_size = 8}),
                      Catch::Contains("kernel_size must be a positive odd number") && Catch::Contains("got 8"));
  REQUIRE_THROWS_WITH(ConvNeXt({.depths = {1, 1}, .dims = {4}}),
                      Catch::Contains("depths and dims") && Catch::Contains("depths [1, 1]") &&
                          Catch::Contains("dims [4]"));
  REQUIRE_THROWS_WITH(ConvNeXt({.depths = {1, 1}, .dims = {4, 8}, .kernel_sizes = {7, 6}}),
                      Catch::Contains("kernel_sizes[1]"));
  REQUIRE_THROWS_WITH(ConvNeXt({.depths = {1, 1}, .dims = {4, 8}, .kernel_sizes = {7}}),
                      Catch::Contains("kernel_sizes must have one entry per stage"));
  REQUIRE_THROWS_WITH(ConvNeXt({.depths = {1, 0}, .dims = {4, 8}}), Catch::Contains("depths[1] must be >= 1"));
  REQUIRE_THROWS_WITH(ConvNeXt({.depths = {1}, .dims = {4}, .drop_path_rate = 1.0}),
                      Catch::Contains("drop_path_rate must be in [0, 1)"));
  REQUIRE_THROWS_WITH(models::convnext_options("convnext_huge"),
                      Catch::Contains("unknown variant 'convnext_huge'") && Catch::Contains("convnext_atto"));

  ConvNeXt m({.depths = {1}, .dims = {4}, .num_classes = 2});
  REQUIRE_THROWS_WITH(m(randn({1, 4, 16, 16})), Catch::Contains("expected input [N, 3, H, W], got [1, 4, 16, 16]"));
  REQUIRE_THROWS_WITH(m.forward_head(randn({1, 5, 2, 2})), Catch::Contains("forward_head"));

  // Per-stage kernels are accepted and used.
  ConvNeXt k({.depths = {1, 1}, .dims = {4, 8}, .kernel_sizes = {3, 31}});
  REQUIRE(k.get_parameter("stages.0.blocks.0.conv_dw.weight").shape() == Shape{4, 1, 3, 3});
  REQUIRE(k.get_parameter("stages.1.blocks.0.conv_dw.weight").shape() == Shape{8, 1, 31, 31});
}
