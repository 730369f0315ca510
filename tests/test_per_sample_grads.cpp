// Per-sample gradients (tools/per_sample_grads.cpp, framework/nn/grad_sample_rules.cpp):
// every kern_core rule (Linear on 2-D and channels-last 4-D input, Conv2d in all its forms,
// LayerNorm, LayerNorm2d, BatchNorm2d in eval mode), a whole small ConvNeXt, a user module
// with no rule (per-layer vjp fallback) and a muP-parameterized net, each against a loop of
// single-example backward passes in float64 (1e-12); loss reductions, chunking, the report
// and the error cases.
#include <kern/kern.hpp>
#include <kern/models/convnext.hpp>
#include <kern/models/equivariant.hpp>
#include <kern/models/longconv.hpp>
#include <kern/nn/grad_sample.hpp>
#include <kern/param/param.hpp>
#include <kern/tools/per_sample_grads.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

using namespace kern;
using namespace kern::tools;
namespace nn = kern::nn;

namespace {

constexpr double kTol = 1e-12;

// Per-sample losses [N]: L_n = sum over the non-batch dims of (out - y)^2 (y of out's shape).
Tensor squared_error(const Tensor& out, const Tensor& y) {
  Tensor d = out - y;
  return sum((d * d).reshape({out.size(0), -1}), {1});
}

// The oracle: for each sample alone, L_n.backward() -- d L_n / d p for every parameter.
std::vector<Tensor> loop_reference(nn::Module& model, const PerSampleLossFn& loss_fn, const Tensor& x,
                                   const Tensor& y, const std::vector<Tensor>& params) {
  const int64_t N = x.size(0);
  std::vector<Tensor> out;
  for (const Tensor& p : params) {
    Shape s{N};
    s.insert(s.end(), p.shape().begin(), p.shape().end());
    out.push_back(zeros(s, p.dtype()));
  }
  for (int64_t n = 0; n < N; ++n) {
    Tensor loss = sum(loss_fn(model(x.narrow(0, n, 1)), y.narrow(0, n, 1)));
    auto gs = grad({loss}, params, {}, {.allow_unused = true});
    for (size_t i = 0; i < params.size(); ++i)
      if (gs[i].defined()) out[i].select(0, n).copy_(gs[i]);
  }
  return out;
}

// Randomizes every parameter (norm gains start at ones, biases at zeros: too special).
void randomize(nn::Module& m, Generator& gen) {
  NoGradGuard ng;
  for (auto& [name, p] : m.named_parameters()) Tensor(p).copy_(randn(p.shape(), p.dtype(), &gen) * 0.5 + 0.3);
}

// per_sample_grads == the loop, for every parameter; returns the result for further checks.
PerSampleGrads check_against_loop(nn::Module& model, const Tensor& x, const Tensor& y,
                                  const PerSampleLossFn& loss_fn = squared_error,
                                  const PerSampleGradsOptions& options = {}) {
  PerSampleGrads psg = per_sample_grads(model, loss_fn, x, y, options);
  std::vector<Tensor> params;
  for (auto& [name, p] : model.named_parameters())
    if (p.requires_grad()) params.push_back(p);
  REQUIRE(psg.grads.size() == params.size());
  std::vector<Tensor> ref = loop_reference(model, loss_fn, x, y, params);
  for (size_t i = 0; i < params.size(); ++i) {
    INFO(psg.grads[i].first << " via " << psg.report[i].rule);
    REQUIRE(psg.grads[i].second.shape() == ref[i].shape());
    REQUIRE(max(abs(ref[i])).item() > 1e-6);  // the check is not vacuous
    REQUIRE(max_abs_diff(psg.grads[i].second, ref[i]) < kTol * std::max(1.0, max(abs(ref[i])).item()));
  }
  return psg;
}

std::string rule_of(const PerSampleGrads& psg, const std::string& name) {
  for (auto& r : psg.report)
    if (r.name == name) return r.rule;
  return "<absent>";
}

// A conv layer followed by a nonlinearity, float64, random parameters.
void check_conv(const nn::Conv2dOptions& o, Shape x_shape, Generator& gen) {
  auto model = std::make_shared<nn::Sequential>(nn::Conv2d(o), nn::Tanh());
  model->to(DType::Float64);
  randomize(*model, gen);
  Tensor x = randn(x_shape, DType::Float64, &gen);
  Tensor y = randn(model->forward(x).shape(), DType::Float64, &gen);
  PerSampleGrads psg = check_against_loop(*model, x, y);
  REQUIRE(rule_of(psg, "0.weight") == "grad_sample:Conv2d");
}

// A user-written module with a parameter of its own and no rule: the per-layer fallback.
struct Gate : nn::Module {
  Gate() {
    fc = register_module("fc", std::make_shared<nn::Linear>(4, 3));
    scale = register_parameter("scale", ones({3}));
  }
  Tensor forward(const Tensor& x) override { return tanh((*fc)(x) * scale()) * scale(); }
  std::string name() const override { return "Gate"; }
  std::shared_ptr<nn::Linear> fc;
  nn::Param scale;
};

// Reads its child's weight outside the child's forward.
struct Leaky : nn::Module {
  Leaky() { fc = register_module("fc", std::make_shared<nn::Linear>(3, 3)); }
  Tensor forward(const Tensor& x) override { return matmul(tanh((*fc)(x)), fc->weight.tensor()); }
  std::shared_ptr<nn::Linear> fc;
};

}  // namespace

TEST_CASE("per-sample grads: Linear on [N, in] and channels-last [N, H, W, C]", "[per_sample]") {
  Generator gen(1);
  manual_seed(2);
  SECTION("2-D input") {
    auto m = std::make_shared<nn::Sequential>(nn::Linear(5, 4), nn::Tanh(), nn::Linear(4, 3));
    m->to(DType::Float64);
    Tensor x = randn({6, 5}, DType::Float64, &gen), y = randn({6, 3}, DType::Float64, &gen);
    PerSampleGrads psg = check_against_loop(*m, x, y);
    REQUIRE(rule_of(psg, "0.weight") == "grad_sample:Linear");
    REQUIRE(rule_of(psg, "2.bias") == "grad_sample:Linear");
  }
  SECTION("4-D channels-last input (ConvNeXt's pwconv): positions summed per sample") {
    auto m = std::make_shared<nn::Sequential>(nn::Linear(3, 5), nn::GELU(), nn::Linear(5, 2));
    m->to(DType::Float64);
    Tensor x = randn({4, 3, 2, 3}, DType::Float64, &gen), y = randn({4, 3, 2, 2}, DType::Float64, &gen);
    check_against_loop(*m, x, y);
  }
}

TEST_CASE("per-sample grads: Conv2d (stride, padding, dilation, groups, depthwise, bands, no bias)",
          "[per_sample]") {
  Generator gen(3);
  manual_seed(4);
  check_conv(nn::Conv2dOptions(2, 3, 3), {3, 2, 6, 5}, gen);                                 // plain
  check_conv(nn::Conv2dOptions(2, 3, 3).stride(2).padding(1), {3, 2, 7, 6}, gen);            // strided
  check_conv(nn::Conv2dOptions(2, 4, {3, 2}).padding({2, 1}), {2, 2, 5, 5}, gen);            // padded
  check_conv(nn::Conv2dOptions(2, 2, 3).dilation(2).padding(2), {3, 2, 7, 7}, gen);          // dilated
  check_conv(nn::Conv2dOptions(4, 6, 3).groups(2).padding(1), {3, 4, 5, 5}, gen);            // grouped
  check_conv(nn::Conv2dOptions(5, 5, 7).groups(5).padding(3), {3, 5, 8, 8}, gen);            // depthwise 7x7
  check_conv(nn::Conv2dOptions(3, 3, {1, 11}).groups(3).padding({0, 5}), {2, 3, 4, 13}, gen);  // band 1x11
  check_conv(nn::Conv2dOptions(3, 3, {11, 1}).groups(3).padding(nn::kSame), {2, 3, 12, 3}, gen);
  check_conv(nn::Conv2dOptions(2, 3, 4).padding(nn::kSame).bias(false), {3, 2, 5, 6}, gen);  // odd 'same'
  check_conv(nn::Conv2dOptions(3, 4, 2).stride(2).bias(false), {2, 3, 6, 6}, gen);           // patchify
}

TEST_CASE("per-sample grads: LayerNorm, LayerNorm2d, BatchNorm2d in eval mode", "[per_sample]") {
  Generator gen(5);
  manual_seed(6);
  SECTION("LayerNorm over the last dim and over two dims") {
    auto m = std::make_shared<nn::Sequential>(nn::Linear(5, 5), nn::LayerNorm(5), nn::Tanh(),
                                              nn::LayerNorm(nn::LayerNormOptions(Shape{3, 5})));
    m->to(DType::Float64);
    randomize(*m, gen);
    Tensor x = randn({4, 3, 5}, DType::Float64, &gen), y = randn({4, 3, 5}, DType::Float64, &gen);
    PerSampleGrads psg = check_against_loop(*m, x, y);
    REQUIRE(rule_of(psg, "1.weight") == "grad_sample:LayerNorm");
    REQUIRE(rule_of(psg, "3.bias") == "grad_sample:LayerNorm");
  }
  SECTION("LayerNorm2d") {
    auto m = std::make_shared<nn::Sequential>(nn::Conv2d(nn::Conv2dOptions(2, 4, 3).padding(1)),
                                              nn::LayerNorm2d(4), nn::GELU());
    m->to(DType::Float64);
    randomize(*m, gen);
    Tensor x = randn({3, 2, 4, 5}, DType::Float64, &gen), y = randn({3, 4, 4, 5}, DType::Float64, &gen);
    PerSampleGrads psg = check_against_loop(*m, x, y);
    REQUIRE(rule_of(psg, "1.weight") == "grad_sample:LayerNorm2d");
  }
  SECTION("BatchNorm2d with running statistics") {
    auto m = std::make_shared<nn::Sequential>(nn::Conv2d(nn::Conv2dOptions(2, 3, 3).padding(1)),
                                              nn::BatchNorm2d(3), nn::Tanh());
    m->to(DType::Float64);
    randomize(*m, gen);
    auto bn = std::dynamic_pointer_cast<nn::BatchNorm2d>(m->children()[1]);
    {
      NoGradGuard ng;
      bn->running_mean.tensor().copy_(randn({3}, DType::Float64, &gen));
      bn->running_var.tensor().copy_(rand({3}, DType::Float64, &gen) + 0.5);
    }
    m->eval();
    Tensor x = randn({4, 2, 4, 4}, DType::Float64, &gen), y = randn({4, 3, 4, 4}, DType::Float64, &gen);
    PerSampleGrads psg = check_against_loop(*m, x, y);
    REQUIRE(rule_of(psg, "1.weight") == "grad_sample:BatchNorm2d");
  }
}

TEST_CASE("per-sample grads: a user module without a rule falls back per layer", "[per_sample]") {
  Generator gen(7);
  manual_seed(8);
  auto m = std::make_shared<nn::Sequential>(Gate(), nn::Linear(3, 2));
  m->to(DType::Float64);
  randomize(*m, gen);
  Tensor x = randn({5, 4}, DType::Float64, &gen), y = randn({5, 2}, DType::Float64, &gen);
  PerSampleGrads psg = check_against_loop(*m, x, y);
  REQUIRE(rule_of(psg, "0.scale") == "vjp");                     // its own parameter only
  REQUIRE(rule_of(psg, "0.fc.weight") == "grad_sample:Linear");  // the child keeps its rule
  REQUIRE(psg.report[0].name == "0.scale");  // named_parameters() order: own, then children's
  REQUIRE(psg.report[0].module == "0");
  REQUIRE(psg.report[1].module == "0.fc");
}

TEST_CASE("per-sample grads: a parameter owner called outside operator() goes through its parent",
          "[per_sample]") {
  // The child's parameter is read through a method (like a long-conv kernel generator's
  // kernel(L)), so no hook sees it with the batch: the parent's vjp computes it.
  struct Kernel : nn::Module {
    Kernel() { k = register_parameter("k", ones({3})); }
    Tensor kernel() { return tanh(k()); }
    nn::Param k;
  };
  struct Mix : nn::Module {
    Mix() { gen = register_module("gen", std::make_shared<Kernel>()); }
    Tensor forward(const Tensor& x) override { return tanh(x * gen->kernel()); }
    std::shared_ptr<Kernel> gen;
  };
  Generator gen(19);
  manual_seed(20);
  auto m = std::make_shared<nn::Sequential>(nn::Linear(3, 3), Mix(), nn::Linear(3, 2));
  m->to(DType::Float64);
  randomize(*m, gen);
  Tensor x = randn({4, 3}, DType::Float64, &gen), y = randn({4, 2}, DType::Float64, &gen);
  PerSampleGrads psg = check_against_loop(*m, x, y);
  REQUIRE(rule_of(psg, "1.gen.k") == "vjp:1");
}

TEST_CASE("per-sample grads: a small long-convolution model (FFT conv, kernel generator)", "[per_sample]") {
  Generator gen(21);
  manual_seed(22);
  models::LongConvModel m({.d_input = 2, .d_model = 4, .n_layers = 1, .l_max = 8, .num_classes = 3});
  m.to(DType::Float64);
  randomize(m, gen);
  m.eval();
  Tensor x = randn({3, 8, 2}, DType::Float64, &gen), y = randn({3, 3}, DType::Float64, &gen);
  check_against_loop(m, x, y);
  SECTION("SGConv kernels: the kernel's rule covers its parameter-only kernel_list") {
    models::LongConvModel sg({.d_input = 2, .d_model = 4, .n_layers = 1, .l_max = 8,
                              .kernel = models::KernelKind::SGConv, .sgconv = {.kernel_dim = 2}, .num_classes = 3});
    sg.to(DType::Float64);
    randomize(sg, gen);
    sg.eval();
    PerSampleGrads psg = check_against_loop(sg, x, y);
    REQUIRE(rule_of(psg, "layers.0.layer.kernel.kernel_list.0") == "grad_sample:SGConvKernel");
    REQUIRE(rule_of(psg, "layers.0.layer.kernel.kernel_list.1") == "grad_sample:SGConvKernel");
  }
}

TEST_CASE("per-sample grads: a small p4 group-equivariant CNN (eval)", "[per_sample]") {
  Generator gen(23);
  manual_seed(24);
  models::P4CNN m({.in_chans = 1, .num_classes = 3, .channels = 2, .num_layers = 2});
  m.to(DType::Float64);
  randomize(m, gen);
  m.eval();
  Tensor x = randn({3, 1, 6, 6}, DType::Float64, &gen), y = randn({3, 3}, DType::Float64, &gen);
  check_against_loop(m, x, y);
}

TEST_CASE("per-sample grads: a module called twice sums its calls", "[per_sample]") {
  struct Twice : nn::Module {
    Twice() { fc = register_module("fc", std::make_shared<nn::Linear>(4, 4)); }
    Tensor forward(const Tensor& x) override { return (*fc)(tanh((*fc)(x))); }
    std::shared_ptr<nn::Linear> fc;
  };
  Generator gen(9);
  manual_seed(10);
  Twice m;
  m.to(DType::Float64);
  Tensor x = randn({3, 4}, DType::Float64, &gen), y = randn({3, 4}, DType::Float64, &gen);
  PerSampleGrads psg = check_against_loop(m, x, y);
  REQUIRE(psg.report[0].calls == 2);
}

TEST_CASE("per-sample grads: a small ConvNeXt (rules + layer-scale fallback), cross-entropy", "[per_sample]") {
  Generator gen(11);
  manual_seed(12);
  models::ConvNeXt model({.depths = {1, 1}, .dims = {8, 16}, .num_classes = 3, .in_chans = 2, .kernel_size = 3,
                          .ls_init_value = 0.5});
  model.to(DType::Float64);
  randomize(model, gen);
  model.eval();
  Tensor x = randn({3, 2, 16, 16}, DType::Float64, &gen);
  Tensor y = Tensor(randint(0, 3, {3}, &gen));
  auto ce = [](const Tensor& out, const Tensor& t) { return cross_entropy(out, t); };  // mean
  PerSampleGrads psg = check_against_loop(model, x, y, ce);
  for (auto& r : psg.report) {
    INFO(r.name);
    REQUIRE(r.calls == 1);
  }
  REQUIRE(rule_of(psg, "stages.0.blocks.0.conv_dw.weight") == "grad_sample:Conv2d");
  REQUIRE(rule_of(psg, "stages.0.blocks.0.mlp.fc1.weight") == "grad_sample:Linear");
  REQUIRE(rule_of(psg, "stem.1.weight").rfind("grad_sample:", 0) == 0);
}

TEST_CASE("per-sample grads: muP multipliers are honoured", "[per_sample]") {
  Generator gen(13);
  manual_seed(14);
  auto m = std::make_shared<nn::Sequential>(nn::Conv2d(nn::Conv2dOptions(2, 8, 3).padding(1)), nn::LayerNorm2d(8),
                                            nn::Tanh(), nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(8, 8),
                                            nn::LayerNorm(8), nn::Tanh(), nn::Linear(8, 3));
  param::apply(*m, param::Preset::mup(8, 2));
  m->to(DType::Float64);
  bool scaled = false;
  for (auto& [name, mod] : m->named_modules())
    for (nn::Slot* s : mod->slots()) scaled = scaled || (!s->is_buffer && s->multiplier != 1.0);
  REQUIRE(scaled);  // the test exercises multipliers != 1
  Tensor x = randn({4, 2, 4, 4}, DType::Float64, &gen), y = randn({4, 3}, DType::Float64, &gen);
  check_against_loop(*m, x, y);
}

TEST_CASE("per-sample grads: reductions, chunking and a parameter subset", "[per_sample]") {
  Generator gen(15);
  manual_seed(16);
  auto m = std::make_shared<nn::Sequential>(nn::Linear(4, 6), nn::Tanh(), nn::Linear(6, 2));
  m->to(DType::Float64);
  Tensor x = randn({5, 4}, DType::Float64, &gen), y = randn({5, 2}, DType::Float64, &gen);
  PerSampleGrads none = per_sample_grads(*m, squared_error, x, y);
  auto mean_loss = [](const Tensor& o, const Tensor& t) { return mean(squared_error(o, t)); };
  auto sum_loss = [](const Tensor& o, const Tensor& t) { return sum(squared_error(o, t)); };
  PerSampleGrads mean_r = per_sample_grads(*m, mean_loss, x, y);  // default: Mean
  PerSampleGrads sum_r = per_sample_grads(*m, sum_loss, x, y, PerSampleGradsOptions().reduction(LossReduction::Sum));
  PerSampleGrads chunked = per_sample_grads(*m, squared_error, x, y, PerSampleGradsOptions().batch_chunk(2));
  for (size_t i = 0; i < none.grads.size(); ++i) {
    REQUIRE(max_abs_diff(mean_r.grads[i].second, none.grads[i].second) < kTol);
    REQUIRE(max_abs_diff(sum_r.grads[i].second, none.grads[i].second) < kTol);
    REQUIRE(max_abs_diff(chunked.grads[i].second, none.grads[i].second) < kTol);
  }
  // Mean: sum_n grads[n] is N times autograd's gradient of the mean loss (Opacus' scaling).
  Tensor w = m->named_parameters()[0].second;
  Tensor g_mean = grad({mean_loss(m->forward(x), y)}, {w})[0];
  REQUIRE(max_abs_diff(sum(mean_r.at("0.weight"), {0}), g_mean * 5.0) < kTol);
  PerSampleGrads sub = per_sample_grads(*m, squared_error, x, y, PerSampleGradsOptions().params({w}));
  REQUIRE(sub.grads.size() == 1);
  REQUIRE(max_abs_diff(sub.at("0.weight"), none.at("0.weight")) < kTol);
}

TEST_CASE("per-sample grads: errors", "[per_sample][errors]") {
  Generator gen(17);
  manual_seed(18);
  Tensor x = randn({4, 2, 5, 5}, DType::Float64, &gen);
  SECTION("BatchNorm2d on batch statistics, also when its rule is called directly") {
    auto m = std::make_shared<nn::Sequential>(nn::Conv2d(2, 3, 3), nn::BatchNorm2d(3));
    m->to(DType::Float64);
    Tensor y = zeros({4, 3, 3, 3}, DType::Float64);
    REQUIRE_THROWS_WITH(per_sample_grads(*m, squared_error, x, y),
                        Catch::Contains("BatchNorm2d") && Catch::Contains("eval()"));
    nn::BatchNorm2d bn(3);
    bn.to(DType::Float64);
    const nn::GradSampleRule* rule = nn::find_grad_sample_rule(bn);
    REQUIRE(rule != nullptr);
    Tensor h = randn({4, 3, 2, 2}, DType::Float64, &gen);
    REQUIRE_THROWS_WITH((*rule)(bn, h, h, h), Catch::Contains("BatchNorm2d") && Catch::Contains("batch statistics"));
  }
  SECTION("active Dropout") {
    auto m = std::make_shared<nn::Sequential>(nn::Linear(3, 3), nn::Dropout(0.5));
    m->to(DType::Float64);
    REQUIRE_THROWS_WITH(per_sample_grads(*m, squared_error, randn({2, 3}, DType::Float64, &gen),
                                         zeros({2, 3}, DType::Float64)),
                        Catch::Contains("Dropout"));
  }
  SECTION("tied weights") {
    auto a = std::make_shared<nn::Linear>(3, 3);
    auto b = std::make_shared<nn::Linear>(3, 3);
    b->register_parameter("weight", a->weight.tensor());
    auto m = std::make_shared<nn::Sequential>(a, nn::Tanh(), b);
    m->to(DType::Float64);
    REQUIRE_THROWS_WITH(per_sample_grads(*m, squared_error, randn({2, 3}, DType::Float64, &gen),
                                         zeros({2, 3}, DType::Float64)),
                        Catch::Contains("tied") && Catch::Contains("0.weight"));
  }
  SECTION("a parameter read outside its module is caught by the check") {
    Leaky m;
    m.to(DType::Float64);
    REQUIRE_THROWS_WITH(per_sample_grads(m, squared_error, randn({2, 3}, DType::Float64, &gen),
                                         randn({2, 3}, DType::Float64, &gen)),
                        Catch::Contains("fc.weight") && Catch::Contains("do not sum"));
  }
  SECTION("a loss that is neither [N] nor a scalar; bad arguments") {
    auto m = std::make_shared<nn::Linear>(3, 2);
    m->to(DType::Float64);
    Tensor xs = randn({4, 3}, DType::Float64, &gen);
    auto bad = [](const Tensor& o, const Tensor&) { return o; };
    REQUIRE_THROWS_WITH(per_sample_grads(*m, bad, xs, zeros({4, 2}, DType::Float64)), Catch::Contains("[4]"));
    REQUIRE_THROWS_WITH(per_sample_grads(*m, squared_error, xs, zeros({3, 2}, DType::Float64)),
                        Catch::Contains("batch size"));
    nn::Linear other(3, 2);
    REQUIRE_THROWS_WITH(per_sample_grads(*m, squared_error, xs, zeros({4, 2}, DType::Float64),
                                         PerSampleGradsOptions().params({other.weight.tensor()})),
                        Catch::Contains("not a parameter"));
  }
}

// Timing (not run by default: `kern_tests "[psg_perf]"`): per_sample_grads vs a loop of
// single-example backward passes on a convnext_atto-like net (dims 40/80/160/320, depths
// 2/2/6/2, kernel 7, 1x32x32, 10 classes, float32, eval), N = 32: the first call (cold:
// fresh pages for ~470 MB of per-sample gradients) and the median of 3 warm calls.
TEST_CASE("per-sample grads: convnext_atto-like timing vs the loop", "[.][psg_perf]") {
  for (double ls : {0.0, 1e-6}) {
    manual_seed(80);
    models::ConvNeXt model({.depths = {2, 2, 6, 2}, .dims = {40, 80, 160, 320}, .num_classes = 10, .in_chans = 1,
                            .kernel_size = 7, .ls_init_value = ls});
    model.eval();
    Generator gen(81);
    Tensor x = randn({32, 1, 32, 32}, DType::Float32, &gen);
    Tensor y = randint(0, 10, {32}, &gen);
    auto ce = [](const Tensor& out, const Tensor& t) { return cross_entropy(out, t, 0.0, "none"); };
    std::vector<Tensor> params = model.parameters();
    auto time = [](auto&& fn) {
      std::vector<double> t;
      for (int i = 0; i < 4; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        fn();
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(t.begin() + 1, t.end());
      return std::make_pair(t[0], t[2]);  // first, median of the rest
    };
    PerSampleGrads psg;
    std::vector<Tensor> ref;
    const auto [cold_psg, t_psg] = time([&] {
      psg = PerSampleGrads();  // free the previous result first (the allocator reuses it)
      psg = per_sample_grads(model, ce, x, y);
    });
    const auto [cold_loop, t_loop] = time([&] {
      ref.clear();
      ref = loop_reference(model, ce, x, y, params);
    });
    double worst = 0;
    for (size_t i = 0; i < params.size(); ++i)
      worst = std::max(worst, max_abs_diff(psg.grads[i].second, ref[i]) / (max(abs(ref[i])).item() + 1e-30));
    int vjp = 0;
    for (auto& r : psg.report) vjp += r.rule == "vjp";
    fmt::print("per_sample_grads ls_init_value={}: warm {:.3f} s (first call {:.3f} s), loop of 32 backward passes "
               "warm {:.3f} s (first {:.3f} s): {:.1f}x; {} params by the vjp fallback; worst relative difference "
               "{:.1e}\n",
               ls, t_psg, cold_psg, t_loop, cold_loop, t_loop / t_psg, vjp, worst);
    REQUIRE(worst < 1e-3);
  }
}
