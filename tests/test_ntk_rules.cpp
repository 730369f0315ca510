// Structured NTK through per-sample gradient rules (tools/ntk_structured.cpp): layers that
// are neither Linear nor Conv2d but have a grad-sample rule (LayerNorm, LayerNorm2d,
// BatchNorm2d in eval mode, the zoo's modules once they register theirs) against Jacobian
// contraction in float64 (1e-10): every kernel kind, the chunked path under a small memory
// budget, whole small ConvNeXt and InceptionNeXt models, and the per-layer report.
#include <kern/kern.hpp>
#include <kern/models/convnext.hpp>
#include <kern/models/equivariant.hpp>
#include <kern/models/inception_next.hpp>
#include <kern/models/longconv.hpp>
#include <kern/param/param.hpp>
#include <kern/tools/ntk.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <map>
#include <string>

using namespace kern;
using namespace kern::tools;
namespace nn = kern::nn;

namespace {

constexpr double kTol = 1e-10;

std::string rule_of(const NtkInfo& info, const std::string& param) {
  for (auto& l : info.layers)
    if (std::find(l.params.begin(), l.params.end(), param) != l.params.end()) return l.rule;
  return "<absent>";
}

void randomize(nn::Module& m, Generator& gen) {
  NoGradGuard ng;
  for (auto& [name, p] : m.named_parameters()) Tensor(p).copy_(randn(p.shape(), p.dtype(), &gen) * 0.5 + 0.3);
}

// Structured == contraction for the full, cross, traced and diagonal kernels.
NtkInfo check_kinds(nn::Module& model, const Tensor& x, const Tensor& x2, NtkOptions opt = {}) {
  const auto contraction = NtkOptions().method(NtkMethod::Contraction);
  opt.method(NtkMethod::Structured);
  NtkInfo info;
  Tensor ref = ntk(model, x, contraction);
  REQUIRE(max_abs_diff(ntk(model, x, opt, &info), ref) < kTol * std::max(1.0, max(abs(ref)).item()));
  REQUIRE(max_abs_diff(ntk(model, x, x2, opt), ntk(model, x, x2, contraction)) < kTol * std::max(1.0, max(abs(ref)).item()));
  REQUIRE(max_abs_diff(ntk_traced(model, x, opt), ntk_traced(model, x, contraction)) < kTol * std::max(1.0, max(abs(ref)).item()));
  REQUIRE(max_abs_diff(ntk_diagonal(model, x, opt), ntk_diagonal(model, x, contraction)) < kTol * std::max(1.0, max(abs(ref)).item()));
  return info;
}

// A user-written module with its own parameter and no rule.
struct Gate : nn::Module {
  Gate() { scale = register_parameter("scale", ones({4})); }
  Tensor forward(const Tensor& x) override { return tanh(x * scale()); }
  std::string name() const override { return "Gate"; }
  nn::Param scale;
};

}  // namespace

TEST_CASE("NTK rules: LayerNorm, LayerNorm2d, BatchNorm2d (eval) layers equal contraction", "[ntk][per_sample]") {
  Generator gen(61);
  manual_seed(62);
  auto model = std::make_shared<nn::Sequential>(
      nn::Conv2d(nn::Conv2dOptions(2, 4, 3).padding(1)), nn::LayerNorm2d(4), nn::Tanh(), nn::BatchNorm2d(4),
      nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(4, 4), nn::LayerNorm(4), Gate(), nn::Linear(4, 3));
  model->to(DType::Float64);
  randomize(*model, gen);
  {
    auto bn = std::dynamic_pointer_cast<nn::BatchNorm2d>(model->children()[3]);
    NoGradGuard ng;
    bn->running_mean.tensor().copy_(randn({4}, DType::Float64, &gen));
    bn->running_var.tensor().copy_(rand({4}, DType::Float64, &gen) + 0.5);
  }
  model->eval();
  Tensor x = randn({4, 2, 5, 5}, DType::Float64, &gen), x2 = randn({3, 2, 5, 5}, DType::Float64, &gen);
  SECTION("eager (G within the budget)") {
    NtkInfo info = check_kinds(*model, x, x2);
    REQUIRE(rule_of(info, "0.weight") == "conv2d");
    REQUIRE(rule_of(info, "1.weight") == "grad_sample:LayerNorm2d");
    REQUIRE(rule_of(info, "3.bias") == "grad_sample:BatchNorm2d");
    REQUIRE(rule_of(info, "6.weight") == "linear");
    REQUIRE(rule_of(info, "7.weight") == "grad_sample:LayerNorm");
    REQUIRE(rule_of(info, "8.scale") == "contraction");  // no rule: falls back, alone
    REQUIRE(info.fallback == std::vector<std::string>{"8.scale"});
  }
  SECTION("chunked (a budget of 64 bytes: G rebuilt a few features at a time)") {
    NtkInfo info = check_kinds(*model, x, x2, NtkOptions().grad_sample_budget(64));
    REQUIRE(rule_of(info, "1.weight") == "grad_sample:LayerNorm2d");
  }
  SECTION("a parameter subset") {
    auto ln = std::dynamic_pointer_cast<nn::LayerNorm>(model->children()[7]);
    auto opt = NtkOptions().params({ln->weight.tensor()});
    NtkInfo info;
    Tensor got = ntk(*model, x, NtkOptions(opt).method(NtkMethod::Structured), &info);
    REQUIRE(max_abs_diff(got, ntk(*model, x, NtkOptions(opt).method(NtkMethod::Contraction))) < kTol);
    REQUIRE(info.layers.size() == 1);
    REQUIRE(info.layers[0].rule == "grad_sample:LayerNorm");
  }
}

TEST_CASE("NTK rules: a whole small ConvNeXt equals contraction", "[ntk][per_sample]") {
  Generator gen(63);
  manual_seed(64);
  for (bool conv_mlp : {false, true}) {
    INFO("conv_mlp " << conv_mlp);
    models::ConvNeXt model({.depths = {1, 1}, .dims = {8, 16}, .num_classes = 3, .in_chans = 2, .kernel_size = 3,
                            .conv_mlp = conv_mlp, .ls_init_value = 0.5});
    model.to(DType::Float64);
    randomize(model, gen);
    model.eval();
    Tensor x = randn({3, 2, 16, 16}, DType::Float64, &gen), x2 = randn({2, 2, 16, 16}, DType::Float64, &gen);
    NtkInfo info = check_kinds(model, x, x2);
    REQUIRE(rule_of(info, "stem.1.weight") == "grad_sample:LayerNorm2d");
    REQUIRE(rule_of(info, "stages.0.blocks.0.conv_dw.weight") == "conv2d");
    REQUIRE(rule_of(info, "stages.0.blocks.0.norm.weight") ==
            (conv_mlp ? "grad_sample:LayerNorm2d" : "grad_sample:LayerNorm"));
    // The layer scale: the zoo's rule when it is registered, else contraction for it alone.
    const std::string g = rule_of(info, "stages.0.blocks.0.gamma");
    REQUIRE((g == "contraction" || g == "grad_sample:ConvNeXtBlock"));
    if (!conv_mlp) {  // a 1-byte budget: depthwise convs group by group, norm G's in chunks
      NtkInfo small = check_kinds(model, x, x2, NtkOptions().grad_sample_budget(1));
      REQUIRE(rule_of(small, "stages.0.blocks.0.conv_dw.weight") == "conv2d");
    }
  }
}

TEST_CASE("NTK rules: muP multipliers of norm gains and convs stay exact", "[ntk][per_sample]") {
  Generator gen(67);
  manual_seed(68);
  auto model = std::make_shared<nn::Sequential>(
      nn::Conv2d(nn::Conv2dOptions(2, 8, 3).padding(1)), nn::LayerNorm2d(8), nn::Tanh(),
      nn::Conv2d(nn::Conv2dOptions(8, 8, 3).padding(1).groups(8)), nn::AdaptiveAvgPool2d(1), nn::Flatten(),
      nn::Linear(8, 8), nn::LayerNorm(8), nn::Tanh(), nn::Linear(8, 3));
  // A depthwise weight's fan-in does not grow with width: muP's rules for a finite weight.
  param::apply(*model, param::Preset::mup(8, 2).role("3.weight", param::Role::FiniteWeight));
  model->to(DType::Float64);
  bool scaled = false;
  for (auto& [name, m] : model->named_modules())
    for (nn::Slot* s : m->slots()) scaled = scaled || (!s->is_buffer && s->multiplier != 1.0);
  REQUIRE(scaled);
  Tensor x = randn({4, 2, 4, 4}, DType::Float64, &gen), x2 = randn({2, 2, 4, 4}, DType::Float64, &gen);
  NtkInfo info = check_kinds(*model, x, x2);
  REQUIRE(info.fallback.empty());
}

TEST_CASE("NTK rules: a whole small InceptionNeXt (eval, BatchNorm) equals contraction", "[ntk][per_sample]") {
  Generator gen(65);
  manual_seed(66);
  models::InceptionNeXt model({.depths = {1, 1}, .dims = {16, 16}, .band_kernel_size = 5, .mlp_ratios = {2},
                               .ls_init_value = 0.5, .head_mlp_ratio = 1, .num_classes = 2, .in_chans = 2});
  model.to(DType::Float64);
  randomize(model, gen);
  model.eval();
  Tensor x = randn({3, 2, 8, 8}, DType::Float64, &gen), x2 = randn({2, 2, 8, 8}, DType::Float64, &gen);
  NtkInfo info = check_kinds(model, x, x2);
  REQUIRE(rule_of(info, "stages.0.blocks.0.norm.weight") == "grad_sample:BatchNorm2d");
  REQUIRE(rule_of(info, "stages.0.blocks.0.token_mixer.dwconv_w.weight") == "conv2d");
}

TEST_CASE("NTK rules: small p4 CNN and long-convolution models equal contraction", "[ntk][per_sample]") {
  Generator gen(69);
  manual_seed(70);
  SECTION("p4cnn (eval)") {
    models::P4CNN m({.in_chans = 1, .num_classes = 3, .channels = 2, .num_layers = 2});
    m.to(DType::Float64);
    randomize(m, gen);
    m.eval();
    check_kinds(m, randn({3, 1, 6, 6}, DType::Float64, &gen), randn({2, 1, 6, 6}, DType::Float64, &gen));
  }
  SECTION("LongConvModel") {
    models::LongConvModel m({.d_input = 2, .d_model = 4, .n_layers = 1, .l_max = 8, .num_classes = 3});
    m.to(DType::Float64);
    randomize(m, gen);
    m.eval();
    NtkInfo info = check_kinds(m, randn({3, 8, 2}, DType::Float64, &gen), randn({2, 8, 2}, DType::Float64, &gen));
    REQUIRE(rule_of(info, "norm.weight") == "grad_sample:LayerNorm");
  }
}

// The zoo's own rules (kern_models: layer-scale gammas, p4m filter banks, token embeddings)
// are what the structured NTK uses: no layer falls back to contraction, and the kernels still
// equal contraction. Token ids (int64 x) are accepted.
TEST_CASE("NTK rules: zoo modules use their own rules, none falls back", "[ntk][per_sample]") {
  Generator gen(71);
  manual_seed(72);
  auto no_contraction = [](const NtkInfo& info) {
    for (auto& l : info.layers) {
      INFO("layer " << l.layer << " rule " << l.rule);
      CHECK(l.rule != "contraction");
    }
  };
  SECTION("ConvNeXt with layer scale") {
    models::ConvNeXt m({.depths = {1, 1}, .dims = {4, 8}, .num_classes = 3, .in_chans = 1, .kernel_size = 3,
                        .ls_init_value = 0.5, .patch_size = 2});
    m.to(DType::Float64);
    randomize(m, gen);
    m.eval();
    NtkInfo info = check_kinds(m, randn({3, 1, 8, 8}, DType::Float64, &gen), randn({2, 1, 8, 8}, DType::Float64, &gen));
    CHECK(rule_of(info, "stages.0.blocks.0.gamma").rfind("grad_sample:", 0) == 0);
    no_contraction(info);
  }
  SECTION("p4m CNN (eval)") {
    models::P4CNN m({.group = "p4m", .in_chans = 1, .num_classes = 3, .channels = 2, .num_layers = 2});
    m.to(DType::Float64);
    randomize(m, gen);
    m.eval();
    no_contraction(check_kinds(m, randn({3, 1, 6, 6}, DType::Float64, &gen), randn({2, 1, 6, 6}, DType::Float64, &gen)));
  }
  SECTION("SGConv model on token ids") {
    models::LongConvModel m({.vocab_size = 5, .d_model = 4, .n_layers = 1, .l_max = 8,
                             .kernel = models::KernelKind::SGConv, .num_classes = 3});
    m.to(DType::Float64);
    randomize(m, gen);
    m.eval();
    Tensor ids = from_vector<int64_t>({0, 1, 2, 3, 4, 0, 1, 2, 4, 4, 3, 2, 1, 0, 0, 1, 2, 3, 3, 3, 1, 1, 0, 2}, {3, 8});
    Tensor ids2 = from_vector<int64_t>({2, 2, 1, 0, 4, 3, 1, 0, 1, 2, 3, 4, 0, 1, 2, 3}, {2, 8});
    NtkInfo info = check_kinds(m, ids, ids2);
    CHECK(rule_of(info, "encoder.weight").rfind("grad_sample:", 0) == 0);  // the embedding's rule
    // SGConvKernel's sub-kernels live in a ParameterList that is never called; the kernel's
    // rule covers that child, so they use it too (no contraction anywhere).
    CHECK(rule_of(info, "layers.0.layer.kernel.kernel_list.0").rfind("grad_sample:", 0) == 0);
    no_contraction(info);
  }
}

// Item 5 of the brief (not run by default: `kern_tests "[ntk_perf]"`): ntk() on a
// convnext_atto-like net (dims 40/80/160/320, depths 2/2/6/2, kernel 7, 1x32x32 input,
// 10 outputs, 16 probes, float32, eval): grad-sample rules off (every norm gain and layer
// scale by contraction, as before the rules), on with a 1 MB budget (depthwise convs group
// by group, as before), and on (depthwise convs batched). Medians of 5 runs, per phase.
TEST_CASE("NTK rules: convnext_atto-like timing, rules off vs on", "[.][ntk_perf]") {
  struct Config {
    const char* name;
    NtkOptions options;
  };
  const std::vector<Config> configs = {
      {"rules off", NtkOptions().grad_sample_rules(false)},
      {"rules on, dw per group", NtkOptions().grad_sample_budget(1 << 20)},
      {"rules on, dw batched", NtkOptions()}};
  // ls = 0: no layer scale gamma (until the zoo registers ConvNeXtBlock's rule, gamma is
  // the one parameter without a rule): the cost once every parameter has one.
  for (double ls : {1e-6, 0.0}) {
    manual_seed(70);
    models::ConvNeXt model({.depths = {2, 2, 6, 2}, .dims = {40, 80, 160, 320}, .num_classes = 10, .in_chans = 1,
                            .kernel_size = 7, .ls_init_value = ls});
    model.eval();
    Generator gen(71);
    Tensor x = randn({16, 1, 32, 32}, DType::Float32, &gen);
    Tensor K_ref;
    fmt::print("ls_init_value = {}\n", ls);
    for (const Config& c : configs) {
      std::map<std::string, std::vector<double>> phases;  // "kernel" = all layers
      std::vector<double> totals;
      NtkInfo last;
      for (int rep = 0; rep < 5; ++rep) {
        NtkInfo info;
        const auto t0 = std::chrono::steady_clock::now();
        Tensor K = ntk(model, x, c.options, &info);
        totals.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        if (!K_ref.defined()) K_ref = K;
        REQUIRE(max_abs_diff(K, K_ref) < 1e-3 * max(abs(K_ref)).item());
        std::map<std::string, double> run;
        for (auto& [name, sec] : info.phases) run[name.rfind("kernel:", 0) == 0 ? "kernel" : name] += sec;
        for (auto& [name, sec] : run) phases[name].push_back(sec);
        last = info;
      }
      auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
      };
      std::string per_phase;
      for (auto& [name, v] : phases) per_phase += fmt::format(" {}={:.3f}", name, median(v));
      fmt::print("  {:<24} median {:.3f} s (min {:.3f});{}; {} params by contraction\n", c.name, median(totals),
                 *std::min_element(totals.begin(), totals.end()), per_phase, last.fallback.size());
    }
  }
}
