// RepLKNet / UniRepLKNet structural re-parameterization: the fusion algebra (conv+BN, kernel
// padding, dilated -> dense kernels, branch sums), the reparameterizable large-kernel convs
// (trained, then fused: identical eval outputs, one conv left), the RepLKNet model with the
// reference repo's names, and bad configurations. Exactness checks run in float64.
#include <catch2/catch.hpp>
#include <kern/kern.hpp>
#include <kern/models/registry.hpp>
#include <kern/models/replknet.hpp>
#include <kern/optim/optim.hpp>

#include "backend_paths.hpp"
#include "gradcheck.hpp"

#include <functional>
#include <set>
#include <string>
#include <vector>

using namespace kern;
namespace models = kern::models;

namespace {

constexpr DType F64 = DType::Float64;

// Non-trivial BN state: affine parameters away from (1, 0), running stats away from (0, 1).
void randomize_bn(nn::BatchNorm2d& bn, Generator& gen) {
  NoGradGuard ng;
  const Shape s{bn.options().num_features()};
  const DType dt = bn.running_mean.dtype();
  if (bn.options().affine()) {
    bn.weight.tensor().copy_(rand(s, dt, &gen, 0.5, 1.5));
    bn.bias.tensor().copy_(randn(s, dt, &gen) * 0.2);
  }
  bn.running_mean.tensor().copy_(randn(s, dt, &gen) * 0.2);
  bn.running_var.tensor().copy_(rand(s, dt, &gen, 0.5, 2.0));
}

void randomize_all_bn(nn::Module& m, Generator& gen) {
  for (auto& sub : m.modules())
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(sub.get())) randomize_bn(*bn, gen);
}

// A few SGD steps in training mode on a regression target, so that the weights and the BN
// running statistics (updated by every training-mode forward) are not their initial values.
void train_steps(nn::Module& m, const Tensor& x, int steps, double lr = 0.05) {
  m.train();
  optim::SGD opt(m.parameters(), {.lr = lr, .momentum = 0.9});
  Generator gen(99);
  Tensor target;
  for (int s = 0; s < steps; ++s) {
    Tensor y = m(x);
    if (!target.defined()) target = randn(y.shape(), y.dtype(), &gen);
    Tensor loss = mse_loss(y, target);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
}

int64_t num_params(const nn::Module& m) {
  int64_t n = 0;
  for (auto& p : m.parameters()) n += p.numel();
  return n;
}

std::vector<std::string> param_names(const nn::Module& m) {
  std::vector<std::string> out;
  for (auto& [name, p] : m.named_parameters()) out.push_back(name);
  return out;
}

std::set<std::string> state_keys(const nn::Module& m) {
  std::set<std::string> out;
  for (auto& [name, t] : m.state_dict()) out.insert(name);
  return out;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no kern::Error thrown>";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

// ---------------------------------------------------------------- fusion utilities

TEST_CASE("fuse_conv_bn: conv -> eval BatchNorm equals one conv with bias", "[models][replknet][reparam]") {
  Generator gen(1);
  for (bool conv_bias : {false, true}) {
    for (bool affine : {true, false}) {
      nn::Conv2d conv(nn::Conv2dOptions(4, 6, 3).stride(2).padding(1).groups(2).bias(conv_bias));
      nn::BatchNorm2d bn(nn::BatchNorm2dOptions(6).affine(affine).eps(1e-3));
      conv.to(F64);
      bn.to(F64);
      randomize_bn(bn, gen);
      bn.eval();
      Tensor x = randn({2, 4, 9, 8}, F64, &gen);
      Tensor ref = bn(conv(x));
      auto fused = models::fuse_conv_bn(conv, bn);
      REQUIRE(fused.weight.shape() == conv.weight.shape());
      REQUIRE(fused.bias.shape() == Shape{6});
      Tensor y = conv2d(x, fused.weight, fused.bias, conv.params());
      INFO("conv bias " << conv_bias << ", affine " << affine);
      REQUIRE(max_abs_diff(y, ref) < 1e-10);
    }
  }
}

TEST_CASE("fuse_conv_bn rejects training-mode and mismatched BatchNorm", "[models][replknet][reparam][errors]") {
  nn::Conv2d conv(nn::Conv2dOptions(3, 4, 3).bias(false));
  nn::BatchNorm2d bn(4);
  REQUIRE_THROWS_WITH(models::fuse_conv_bn(conv, bn), Catch::Contains("training mode"));
  nn::BatchNorm2d wrong(5);
  wrong.eval();
  REQUIRE_THROWS_WITH(models::fuse_conv_bn(conv, wrong), Catch::Contains("BatchNorm2d(5)") &&
                                                            Catch::Contains("4 output channels"));
  nn::BatchNorm2d no_stats(nn::BatchNorm2dOptions(4).track_running_stats(false));
  no_stats.eval();
  REQUIRE_THROWS_WITH(models::fuse_conv_bn(conv, no_stats), Catch::Contains("track_running_stats"));
}

TEST_CASE("dilate_kernel: a dilated conv equals a dense conv with the expanded kernel", "[models][replknet][reparam]") {
  Generator gen(2);
  struct Case { int64_t c_in, c_out, groups, kh, kw, dh, dw; };
  for (const Case& c : {Case{3, 3, 3, 3, 3, 2, 2}, Case{3, 3, 3, 5, 3, 3, 4}, Case{4, 6, 2, 3, 5, 2, 3},
                        Case{2, 2, 1, 3, 3, 1, 1}}) {
    Tensor w = randn({c.c_out, c.c_in / c.groups, c.kh, c.kw}, F64, &gen);
    Tensor x = randn({2, c.c_in, 17, 19}, F64, &gen);
    Tensor dense = models::dilate_kernel(w, {c.dh, c.dw});
    const int64_t eh = c.dh * (c.kh - 1) + 1, ew = c.dw * (c.kw - 1) + 1;
    REQUIRE(dense.shape() == Shape{c.c_out, c.c_in / c.groups, eh, ew});
    // Taps land every d-th position, zeros in between (same total mass).
    REQUIRE(dense.narrow(2, 0, 1).narrow(3, 0, 1).reshape({-1}).to_vector<double>() ==
            w.narrow(2, 0, 1).narrow(3, 0, 1).reshape({-1}).to_vector<double>());
    REQUIRE(max_abs_diff(dense.narrow(2, eh - 1, 1).narrow(3, ew - 1, 1),
                         w.narrow(2, c.kh - 1, 1).narrow(3, c.kw - 1, 1)) == 0.0);
    REQUIRE(std::abs(abs(dense).sum().item() - abs(w).sum().item()) < 1e-12);
    Conv2dParams dilated{.padding = {c.dh * (c.kh - 1) / 2, c.dw * (c.kw - 1) / 2},
                         .dilation = {c.dh, c.dw}, .groups = c.groups};
    Conv2dParams plain{.padding = dilated.padding, .groups = c.groups};
    INFO("kernel " << c.kh << "x" << c.kw << ", dilation " << c.dh << "x" << c.dw << ", groups " << c.groups);
    REQUIRE(max_abs_diff(conv2d(x, w, {}, dilated), conv2d(x, dense, {}, plain)) < 1e-12);
  }
  REQUIRE_THROWS_WITH(models::dilate_kernel(randn({2, 1, 3, 3}), 0), Catch::Contains("dilation must be >= 1"));
}

TEST_CASE("pad_kernel_to and sum_branches: parallel centered convs are one conv", "[models][replknet][reparam]") {
  Generator gen(3);
  Tensor x = randn({2, 4, 12, 10}, F64, &gen);
  Tensor w7 = randn({4, 1, 7, 7}, F64, &gen), b7 = randn({4}, F64, &gen);
  Tensor w3 = randn({4, 1, 3, 3}, F64, &gen);
  Tensor w15 = randn({4, 1, 1, 5}, F64, &gen), b15 = randn({4}, F64, &gen);
  auto dw = [](std::array<int64_t, 2> p) { return Conv2dParams{.padding = p, .groups = 4}; };
  Tensor padded = models::pad_kernel_to(w3, 7);
  REQUIRE(padded.shape() == Shape{4, 1, 7, 7});
  REQUIRE(max_abs_diff(conv2d(x, padded, {}, dw({3, 3})), conv2d(x, w3, {}, dw({1, 1}))) < 1e-12);
  auto sum = models::sum_branches({{w7, b7}, {w3, Tensor()}, {w15, b15}});
  REQUIRE(sum.weight.shape() == Shape{4, 1, 7, 7});
  Tensor ref = conv2d(x, w7, b7, dw({3, 3})) + conv2d(x, w3, {}, dw({1, 1})) + conv2d(x, w15, b15, dw({0, 2}));
  REQUIRE(max_abs_diff(conv2d(x, sum.weight, sum.bias, dw({3, 3})), ref) < 1e-12);
  REQUIRE_THROWS_WITH(models::pad_kernel_to(w3, 6), Catch::Contains("cannot center a 3x3 kernel"));
  REQUIRE_THROWS_WITH(models::pad_kernel_to(w7, 5), Catch::Contains("cannot center a 7x7 kernel"));
  REQUIRE_THROWS_WITH(models::sum_branches({{w7, b7}, {randn({4, 2, 3, 3}, F64), Tensor()}}),
                      Catch::Contains("sum_branches: branch 1"));
}

// ---------------------------------------------------------------- ReparamLargeKernelConv

TEST_CASE("ReparamLargeKernelConv: trained, then fused into lkb_reparam with identical eval outputs",
          "[models][replknet][reparam]") {
  struct Case { int64_t in, out, k, small, stride, groups; };
  for (const Case& c : {Case{6, 6, 9, 5, 1, 6}, Case{4, 6, 7, 3, 2, 2}, Case{5, 5, 5, 0, 1, 5}}) {
    INFO("in " << c.in << " out " << c.out << " k " << c.k << " small " << c.small << " stride " << c.stride);
    manual_seed(10);
    Generator gen(4);
    auto opts = models::ReparamLargeKernelConvOptions(c.in, c.out, c.k)
                    .stride(c.stride).groups(c.groups).small_kernel(c.small);
    auto m = std::make_shared<models::ReparamLargeKernelConv>(opts);
    m->to(F64);
    randomize_all_bn(*m, gen);
    Tensor x = randn({2, c.in, 11, 11}, F64, &gen);
    const std::vector<std::string> origin_names =
        c.small ? std::vector<std::string>{"lkb_origin.conv.weight", "lkb_origin.bn.weight", "lkb_origin.bn.bias",
                                           "small_conv.conv.weight", "small_conv.bn.weight", "small_conv.bn.bias"}
                : std::vector<std::string>{"lkb_origin.conv.weight", "lkb_origin.bn.weight", "lkb_origin.bn.bias"};
    REQUIRE(param_names(*m) == origin_names);
    const int64_t per = c.in / c.groups;
    REQUIRE(num_params(*m) == c.out * per * c.k * c.k + 2 * c.out + (c.small ? c.out * per * c.small * c.small + 2 * c.out : 0));

    Tensor w_before = m->lkb_origin->conv->weight.tensor().clone();
    train_steps(*m, x, 3);
    REQUIRE(max_abs_diff(m->lkb_origin->conv->weight.tensor(), w_before) > 1e-6);  // training moved the weights
    m->eval();
    Tensor y0 = (*m)(x);
    REQUIRE(y0.shape() == Shape{2, c.out, (11 - 1) / c.stride + 1, (11 - 1) / c.stride + 1});

    const std::string rng_before = default_generator().state();
    REQUIRE(m->reparameterize());
    REQUIRE(default_generator().state() == rng_before);  // fusing draws no random numbers
    REQUIRE(m->is_reparameterized());
    REQUIRE(param_names(*m) == std::vector<std::string>{"lkb_reparam.weight", "lkb_reparam.bias"});
    REQUIRE(m->named_buffers().empty());
    REQUIRE(num_params(*m) == c.out * per * c.k * c.k + c.out);
    REQUIRE(m->lkb_reparam->weight.dtype() == F64);
    Tensor y1 = (*m)(x);
    REQUIRE(max_abs_diff(y1, y0) < 1e-10);

    // Twice is a no-op.
    REQUIRE_FALSE(m->merge_kernel());
    REQUIRE(max_abs_diff((*m)(x), y1) == 0.0);

    // The fused state loads into a module built in deploy form.
    auto deploy = std::make_shared<models::ReparamLargeKernelConv>(
        models::ReparamLargeKernelConvOptions(opts).small_kernel_merged(true));
    deploy->to(F64);
    deploy->load_state_dict(m->state_dict(), true);
    deploy->eval();
    REQUIRE(max_abs_diff((*deploy)(x), y1) == 0.0);
  }
}

TEST_CASE("ReparamLargeKernelConv rejects bad kernels and training-mode fusion", "[models][replknet][reparam][errors]") {
  using O = models::ReparamLargeKernelConvOptions;
  auto make = [](O o) { return std::make_shared<models::ReparamLargeKernelConv>(o); };
  const std::string even = error_of([&] { make(O(4, 4, 12).groups(4)); });
  REQUIRE(contains(even, "ReparamLargeKernelConv: kernel_size = 12 must be odd"));
  const std::string big = error_of([&] { make(O(4, 4, 5).groups(4).small_kernel(7)); });
  REQUIRE(contains(big, "small_kernel = 7 must be <= kernel_size = 5"));
  REQUIRE(contains(error_of([&] { make(O(4, 4, 7).small_kernel(4)); }), "small_kernel = 4 must be odd"));

  auto m = make(O(4, 4, 7).groups(4).small_kernel(3));
  REQUIRE_THROWS_WITH(m->reparameterize(), Catch::Contains("training mode"));
  REQUIRE_FALSE(m->is_reparameterized());
  // A BN left in training mode under an eval parent is caught by the fusion itself.
  m->eval();
  m->small_conv->bn->train();
  REQUIRE_THROWS_WITH(m->reparameterize(), Catch::Contains("training mode"));
  REQUIRE(m->lkb_origin != nullptr);
  REQUIRE(param_names(*m).size() == 6);
}

// ---------------------------------------------------------------- DilatedReparamBlock

TEST_CASE("DilatedReparamBlock: UniRepLKNet's branches fuse into one depthwise kernel",
          "[models][replknet][reparam]") {
  manual_seed(11);
  Generator gen(5);
  const int64_t c = 3;
  auto m = std::make_shared<models::DilatedReparamBlock>(models::DilatedReparamBlockOptions(c, 13));
  REQUIRE(m->kernel_sizes() == std::vector<int64_t>{5, 7, 3, 3, 3});
  REQUIRE(m->dilations() == std::vector<int64_t>{1, 2, 3, 4, 5});
  const auto keys = state_keys(*m);
  for (const char* k : {"lk_origin.weight", "origin_bn.running_var", "dil_conv_k5_1.weight", "dil_conv_k7_2.weight",
                        "dil_conv_k3_3.weight", "dil_conv_k3_4.weight", "dil_bn_k3_5.running_mean", "dil_bn_k7_2.weight"})
    REQUIRE(keys.count(k) == 1);
  REQUIRE(keys.count("lk_origin.bias") == 0);
  REQUIRE(m->dil_convs[1]->options().dilation() == std::array<int64_t, 2>{2, 2});
  // Training-time parameters: the 13x13 kernel, 5 branches, 6 BNs.
  REQUIRE(num_params(*m) == c * (169 + 25 + 49 + 9 + 9 + 9) + 6 * 2 * c);

  m->to(F64);
  randomize_all_bn(*m, gen);
  Tensor x = randn({2, c, 16, 15}, F64, &gen);
  train_steps(*m, x, 3);
  m->eval();
  Tensor y0 = (*m)(x);
  REQUIRE(models::reparameterize(*m) == 1);
  REQUIRE(param_names(*m) == std::vector<std::string>{"lk_origin.weight", "lk_origin.bias"});
  REQUIRE(m->lk_origin->weight.shape() == Shape{c, 1, 13, 13});
  REQUIRE(num_params(*m) == c * 169 + c);
  REQUIRE(max_abs_diff((*m)(x), y0) < 1e-10);
  REQUIRE_FALSE(m->merge_dilated_branches());
  REQUIRE(models::reparameterize(*m) == 0);

  // Deploy form has exactly the fused keys.
  models::DilatedReparamBlock deploy(models::DilatedReparamBlockOptions(c, 13).deploy(true));
  REQUIRE(state_keys(deploy) == state_keys(*m));
}

TEST_CASE("DilatedReparamBlock with explicit branches, and its errors", "[models][replknet][reparam][errors]") {
  manual_seed(12);
  Generator gen(6);
  auto m = std::make_shared<models::DilatedReparamBlock>(
      models::DilatedReparamBlockOptions(4, 9).branches({3, 5, 3}, {4, 2, 1}));
  m->to(F64);
  randomize_all_bn(*m, gen);
  Tensor x = randn({2, 4, 10, 10}, F64, &gen);
  train_steps(*m, x, 2);
  m->eval();
  Tensor y0 = (*m)(x);
  REQUIRE(m->reparameterize());
  REQUIRE(max_abs_diff((*m)(x), y0) < 1e-10);

  using O = models::DilatedReparamBlockOptions;
  auto make = [](O o) { models::DilatedReparamBlock b(o); };
  REQUIRE(contains(error_of([&] { make(O(4, 12)); }), "kernel_size = 12 must be odd"));
  REQUIRE(contains(error_of([&] { make(O(4, 19)); }), "kernel_size = 19 has no default branch table"));
  REQUIRE(contains(error_of([&] { make(O(4, 9).branches({3, 5}, {1})); }), "must have the same length"));
  REQUIRE(contains(error_of([&] { make(O(4, 9).branches({5}, {3})); }), "spans 13 > kernel_size = 9"));
  REQUIRE(contains(error_of([&] { make(O(4, 9).branches({4}, {1})); }), "kernel_sizes[0] = 4"));
  REQUIRE(contains(error_of([&] { make(O(4, 9).branches({3, 3}, {2, 2})); }), "appears twice"));
  auto t = std::make_shared<models::DilatedReparamBlock>(O(2, 7));
  REQUIRE_THROWS_WITH(t->reparameterize(), Catch::Contains("training mode"));
}

// ---------------------------------------------------------------- RepLKNet

namespace {

models::RepLKNetOptions tiny_options() {
  return {.large_kernel_sizes = {13, 11}, .layers = {1, 1}, .channels = {8, 16}, .small_kernel = 5,
          .num_classes = 10, .drop_path_rate = 0.1};
}

// The repo's parameter names for a 2-stage, 1-block-per-stage RepLKNet (conv_bn children
// conv/bn, RepLKBlock registers pw1, pw2, large_kernel, lk_nonlinear, prelkb_bn; ConvFFN
// registers drop_path, preffn_bn, pw1, pw2, nonlinear).
std::vector<std::string> repo_param_names_two_stages() {
  std::vector<std::string> n;
  auto conv_bn = [&](const std::string& p) {
    n.push_back(p + ".conv.weight");
    n.push_back(p + ".bn.weight");
    n.push_back(p + ".bn.bias");
  };
  for (int i = 0; i < 4; ++i) conv_bn("stem." + std::to_string(i));
  for (int s = 0; s < 2; ++s) {
    const std::string b = "stages." + std::to_string(s) + ".blocks.";
    conv_bn(b + "0.pw1");
    conv_bn(b + "0.pw2");
    conv_bn(b + "0.large_kernel.lkb_origin");
    conv_bn(b + "0.large_kernel.small_conv");
    n.push_back(b + "0.prelkb_bn.weight");
    n.push_back(b + "0.prelkb_bn.bias");
    n.push_back(b + "1.preffn_bn.weight");
    n.push_back(b + "1.preffn_bn.bias");
    conv_bn(b + "1.pw1");
    conv_bn(b + "1.pw2");
  }
  conv_bn("transitions.0.0");
  conv_bn("transitions.0.1");
  n.insert(n.end(), {"norm.weight", "norm.bias", "head.weight", "head.bias"});
  return n;
}

// Training-time parameter count of the repo's RepLKNet, from its structure.
int64_t repo_param_count(const models::RepLKNetOptions& o) {
  auto bn = [](int64_t c) { return 2 * c; };
  auto conv_bn = [&](int64_t in, int64_t out, int64_t k, int64_t g) { return in / g * out * k * k + bn(out); };
  const int64_t b = o.channels[0];
  int64_t p = conv_bn(o.in_chans, b, 3, 1) + conv_bn(b, b, 3, b) + conv_bn(b, b, 1, 1) + conv_bn(b, b, 3, b);
  for (size_t i = 0; i < o.layers.size(); ++i) {
    const int64_t c = o.channels[i], k = o.large_kernel_sizes[i];
    const auto dw = static_cast<int64_t>(c * o.dw_ratio), ffn = static_cast<int64_t>(c * o.ffn_ratio);
    const int64_t block = bn(c) + conv_bn(c, dw, 1, 1) + conv_bn(dw, c, 1, 1) + conv_bn(dw, dw, k, dw) +
                          (o.small_kernel ? conv_bn(dw, dw, o.small_kernel, dw) : 0);
    const int64_t ffn_block = bn(c) + conv_bn(c, ffn, 1, 1) + conv_bn(ffn, c, 1, 1);
    p += o.layers[i] * (block + ffn_block);
    if (i + 1 < o.layers.size()) p += conv_bn(c, o.channels[i + 1], 1, 1) + conv_bn(o.channels[i + 1], o.channels[i + 1], 3, o.channels[i + 1]);
  }
  return p + bn(o.channels.back()) + o.channels.back() * o.num_classes + o.num_classes;
}

}  // namespace

TEST_CASE("RepLKNet: the repo's names; model-level reparameterize keeps eval outputs", "[models][replknet][reparam]") {
  manual_seed(13);
  Generator gen(7);
  const auto opts = tiny_options();
  auto model = std::make_shared<models::RepLKNet>(opts);
  REQUIRE(param_names(*model) == repo_param_names_two_stages());
  REQUIRE(num_params(*model) == repo_param_count(opts));
  model->to(F64);
  randomize_all_bn(*model, gen);

  Tensor x = randn({2, 3, 32, 32}, F64, &gen);
  REQUIRE(model->forward_features(x).shape() == Shape{2, 16, 4, 4});
  Tensor labels = randint(0, 10, {2}, &gen);
  model->train();
  optim::SGD opt(model->parameters(), {.lr = 0.02, .momentum = 0.9});
  for (int s = 0; s < 2; ++s) {
    Tensor loss = cross_entropy((*model)(x), labels);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }

  // Training mode: refused, model untouched.
  REQUIRE_THROWS_WITH(models::reparameterize(*model), Catch::Contains("training mode"));
  model->eval();
  model->get_submodule("stages.1.blocks.0.large_kernel.small_conv.bn")->train();
  REQUIRE_THROWS_WITH(models::reparameterize(*model),
                      Catch::Contains("'stages.1.blocks.0.large_kernel.small_conv.bn' is in training mode"));
  REQUIRE(param_names(*model) == repo_param_names_two_stages());
  model->eval();

  Tensor y0 = (*model)(x);
  REQUIRE(y0.shape() == Shape{2, 10});
  REQUIRE(model->structural_reparam() == 2);
  Tensor y1 = (*model)(x);
  REQUIRE(max_abs_diff(y1, y0) < 1e-9);
  REQUIRE(models::reparameterize(*model) == 0);

  const auto keys = state_keys(*model);
  REQUIRE(keys.count("stages.0.blocks.0.large_kernel.lkb_reparam.weight") == 1);
  REQUIRE(keys.count("stages.1.blocks.0.large_kernel.lkb_reparam.bias") == 1);
  REQUIRE(model->get_parameter("stages.1.blocks.0.large_kernel.lkb_reparam.weight").shape() == Shape{16, 1, 11, 11});
  for (const auto& k : keys) REQUIRE_FALSE(contains(k, "lkb_origin"));
  REQUIRE(num_params(*model) == repo_param_count(opts) - (2 * 8 + 8 * 25 + 2 * 8) - (2 * 16 + 16 * 25 + 2 * 16) +
                                    8 + 16);

  // The fused checkpoint loads strictly into the deploy-form model (small_kernel_merged).
  auto deploy_opts = opts;
  deploy_opts.small_kernel_merged = true;
  auto deployed = std::make_shared<models::RepLKNet>(deploy_opts);
  deployed->to(F64);
  REQUIRE(deployed->load_state_dict(model->state_dict(), true).ok());
  deployed->eval();
  REQUIRE(max_abs_diff((*deployed)(x), y1) == 0.0);
}

TEST_CASE("RepLKBlock, ConvFFN and DilatedReparamBlock: float64 gradcheck w.r.t. the input",
          "[models][replknet][reparam][gradcheck]") {
  manual_seed(14);
  Generator gen(8);
  auto block = std::make_shared<models::RepLKBlock>(
      models::RepLKBlockOptions{.in_channels = 3, .dw_channels = 4, .kernel_size = 5, .small_kernel = 3});
  auto ffn = std::make_shared<models::ConvFFN>(
      models::ConvFFNOptions{.in_channels = 3, .internal_channels = 6, .out_channels = 3});
  auto dil = std::make_shared<models::DilatedReparamBlock>(models::DilatedReparamBlockOptions(3, 5));
  for (nn::Module* m : std::initializer_list<nn::Module*>{block.get(), ffn.get(), dil.get()}) {
    m->to(F64);
    randomize_all_bn(*m, gen);
  }
  Tensor x = randn({2, 3, 5, 5}, F64, &gen);
  // Training mode: BN with batch statistics (gradients through mean and variance).
  block->train();
  KERN_GRADCHECK([&](const std::vector<Tensor>& in) { return (*block)(in[0]); }, {x});
  ffn->train();
  KERN_GRADCHECK([&](const std::vector<Tensor>& in) { return (*ffn)(in[0]); }, {x});
  dil->eval();
  KERN_GRADCHECK([&](const std::vector<Tensor>& in) { return (*dil)(in[0]); }, {x});
}

TEST_CASE("RepLKNet rejects bad configurations naming the field", "[models][replknet][errors]") {
  auto build = [](models::RepLKNetOptions o) { models::RepLKNet m(o); };
  auto o = tiny_options();
  o.large_kernel_sizes = {13, 12};
  REQUIRE(contains(error_of([&] { build(o); }), "large_kernel_sizes[1] = 12 must be odd"));
  o = tiny_options();
  o.small_kernel = 13;
  REQUIRE(contains(error_of([&] { build(o); }),
                   "small_kernel = 13 must be <= every large kernel, but large_kernel_sizes[1] = 11"));
  o = tiny_options();
  o.small_kernel = 4;
  REQUIRE(contains(error_of([&] { build(o); }), "small_kernel = 4 must be odd"));
  o = tiny_options();
  o.layers = {1, 1, 1};
  REQUIRE(contains(error_of([&] { build(o); }), "need the same number of stages"));
  o = tiny_options();
  o.drop_path_rate = 1.0;
  REQUIRE(contains(error_of([&] { build(o); }), "drop_path_rate = 1 must be in [0, 1)"));
  auto m = std::make_shared<models::RepLKNet>(tiny_options());
  REQUIRE_THROWS_WITH((*m)(randn({1, 4, 32, 32})), Catch::Contains("expected input [N, 3, H, W]"));
}

TEST_CASE("replknet_31b is registered with the paper's 79M parameters", "[models][replknet]") {
  REQUIRE(models::has_model("replknet_31b"));
  REQUIRE(models::has_model("replknet_31l"));
  REQUIRE(models::has_model("replknet_xl"));
  auto m = models::create_model("replknet_31b");
  const int64_t n = num_params(*m);
  REQUIRE(n == repo_param_count(models::RepLKNetOptions{}));
  REQUIRE(n >= 79'000'000);  // the paper's Table: RepLKNet-31B, 79M
  REQUIRE(n < 80'000'000);
  REQUIRE(m->get_parameter("stages.2.blocks.34.large_kernel.lkb_origin.conv.weight").shape() == Shape{512, 1, 27, 27});
  REQUIRE(m->get_parameter("stages.0.blocks.0.large_kernel.small_conv.conv.weight").shape() == Shape{128, 1, 5, 5});
  REQUIRE(m->get_parameter("head.weight").shape() == Shape{1000, 1024});
}

TEST_CASE("RepLKNet without classes returns pooled features", "[models][replknet]") {
  auto o = tiny_options();
  o.num_classes = 0;
  models::RepLKNet m(o);
  REQUIRE(state_keys(m).count("head.weight") == 0);
  m.eval();
  REQUIRE(m(randn({2, 3, 32, 32})).shape() == Shape{2, 16});
}

TEST_CASE("Fused blocks on the float32 fast path agree with the unfused reference path",
          "[models][replknet][reparam][backend]") {
  // Dilated branches go through the backend's general conv, the large kernels through the
  // direct depthwise kernel; the fused float32 block must match the float32 reference path.
  manual_seed(15);
  Generator gen(9);
  models::DilatedReparamBlock dil(models::DilatedReparamBlockOptions(8, 13));
  models::ReparamLargeKernelConv lk(models::ReparamLargeKernelConvOptions(8, 8, 15).groups(8).small_kernel(5));
  for (nn::Module* m : std::initializer_list<nn::Module*>{&dil, &lk}) {
    randomize_all_bn(*m, gen);
    m->eval();
  }
  Tensor x = randn({2, 8, 20, 20}, DType::Float32, &gen);
  using testing::Path, testing::Primitive;
  Tensor ref_dil, ref_lk;
  const auto ref_paths = testing::paths_of([&] {
    BackendGuard g(Backend::Reference);
    ref_dil = dil(x);
    ref_lk = lk(x);
  });
  INFO("reference side: " << testing::describe(ref_paths));
  REQUIRE(ref_paths.total(Path::Fast) == 0);
  REQUIRE(models::reparameterize(dil) == 1);
  REQUIRE(models::reparameterize(lk) == 1);
  const double scale_dil = max(abs(ref_dil)).item(), scale_lk = max(abs(ref_lk)).item();
  Tensor fast_dil, fast_lk;
  const auto dil_paths = testing::paths_of([&] { fast_dil = dil(x); });
  const auto lk_paths = testing::paths_of([&] { fast_lk = lk(x); });
  INFO("fast side: dilated block " << testing::describe(dil_paths) << "; large kernel " << testing::describe(lk_paths));
  // Both fused blocks are one 13x13 / 15x15 depthwise conv: kern's direct kernel.
  REQUIRE(dil_paths(Primitive::DepthwiseConv2d, Path::Fast) == 1);
  REQUIRE(lk_paths(Primitive::DepthwiseConv2d, Path::Fast) == 1);
  REQUIRE(dil_paths.total(Path::Reference) + lk_paths.total(Path::Reference) == 0);
  REQUIRE(max_abs_diff(fast_dil, ref_dil) < 1e-5 * scale_dil);
  REQUIRE(max_abs_diff(fast_lk, ref_lk) < 1e-5 * scale_lk);
}
