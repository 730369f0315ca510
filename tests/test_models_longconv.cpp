// Long convolutions: fft_conv against a direct O(L^2) causal convolution, first and second
// derivatives by finite differences, the squash, SGConv's kernel against values written from
// the paper's formula, the layer / block / model (shapes, names, causality), the synthetic
// sequence tasks, a short training run on a long-range task, and errors.
#include "gradcheck.hpp"

#include <catch2/catch.hpp>
#include <kern/data/sequence_tasks.hpp>
#include <kern/kern.hpp>
#include <kern/models/longconv.hpp>
#include <kern/optim/adam.hpp>

#include <chrono>
#include <cmath>
#include <map>
#include <string>
#include <vector>

using namespace kern;
namespace models = kern::models;
using kern::testing::Fn;

namespace {

Tensor rnd(const Shape& s, uint64_t seed, DType dt = DType::Float64) {
  Generator g(seed);
  return randn(s, dt, &g);
}

// y[b, h, t] = sum_{s <= t} k[h, t - s] u[b, h, s] + D[h] u[b, h, t], with plain loops.
Tensor direct_causal_conv(const Tensor& u, const Tensor& k, const Tensor& D) {
  const int64_t B = u.size(0), H = u.size(1), L = u.size(2);
  auto uv = u.contiguous().to_vector<double>();
  auto kv = k.contiguous().to_vector<double>();
  auto dv = D.defined() ? D.contiguous().to_vector<double>() : std::vector<double>(H, 0.0);
  std::vector<double> y(static_cast<size_t>(B * H * L), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < L; ++t) {
        long double acc = dv[h] * uv[(b * H + h) * L + t];
        for (int64_t s = 0; s <= t; ++s) acc += kv[h * L + (t - s)] * uv[(b * H + h) * L + s];
        y[(b * H + h) * L + t] = static_cast<double>(acc);
      }
  return from_vector<double>(y, {B, H, L});
}

// Seeds the default generator as a fresh Generator(seed), including its cached Box-Muller
// value (manual_seed keeps a pending one, so inits after it can depend on earlier tests).
void reseed(uint64_t seed) { default_generator().set_state(Generator(seed).state()); }

// Values of a 1-D tensor.
std::vector<double> vals(const Tensor& t) { return t.contiguous().to_vector<double>(); }

// The module's kernel(L) as a function of the given parameters (by dotted name).
Fn kernel_fn(models::SequenceKernel& m, const std::vector<std::string>& names, int64_t L) {
  return [&m, names, L](const std::vector<Tensor>& ps) {
    nn::StateDict sub;
    for (size_t i = 0; i < names.size(); ++i) sub.emplace_back(names[i], ps[i]);
    return nn::functional_call(m, sub, [L](nn::Module& mod) {
      return static_cast<models::SequenceKernel&>(mod).kernel(L);
    });
  };
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// fft_conv

TEST_CASE("fft_conv equals the direct causal convolution for any L", "[models][longconv]") {
  for (int64_t L : {1, 2, 8, 37, 64, 100, 256}) {
    INFO("L = " << L);
    Tensor u = rnd({2, 3, L}, 10 + L), k = rnd({3, L}, 20 + L), D = rnd({3}, 30 + L);
    Tensor y = models::fft_conv(u, k, D);
    REQUIRE(y.shape() == Shape{2, 3, L});
    CHECK(max_abs_diff(y, direct_causal_conv(u, k, D)) < 1e-10);
    // Without D, and with extra leading dims.
    CHECK(max_abs_diff(models::fft_conv(u, k), direct_causal_conv(u, k, Tensor())) < 1e-10);
    Tensor u4 = u.reshape({1, 2, 3, L});
    CHECK(max_abs_diff(models::fft_conv(u4, k, D).reshape({2, 3, L}), y) < 1e-12);
  }
}

TEST_CASE("fft_conv is causal: a delta at s moves the kernel to s", "[models][longconv]") {
  const int64_t L = 37;
  Tensor k = rnd({1, L}, 3);
  Tensor u = zeros({1, 1, L}, DType::Float64);
  u.narrow(2, 5, 1).fill_(1.0);
  auto y = vals(models::fft_conv(u, k));
  auto kv = vals(k);
  for (int64_t t = 0; t < L; ++t) CHECK(y[t] == Approx(t < 5 ? 0.0 : kv[t - 5]).margin(1e-12));
}

// Not a [backend] test: fft_conv has no fast path (rfft / irfft / complex products are kern's
// own code on both backends), which the path counters confirm; a float32 accuracy test.
TEST_CASE("fft_conv in float32 on both backends agrees with the float64 convolution", "[models][longconv]") {
  const int64_t L = 100;
  Tensor u = rnd({2, 4, L}, 1), k = rnd({4, L}, 2) * 0.1, D = rnd({4}, 3);
  Tensor want = direct_causal_conv(u, k, D);
  for (Backend b : {Backend::Reference, Backend::Fast}) {
    BackendGuard g(b);
    Tensor y;
    const auto before = backend::path_counts();
    y = models::fft_conv(u.to(DType::Float32), k.to(DType::Float32), D.to(DType::Float32));
    CHECK((backend::path_counts() - before).total(backend::Path::Fast) == 0);
    CHECK(y.dtype() == DType::Float32);
    CHECK(max_abs_diff(y.to(DType::Float64), want) < 1e-4);
  }
}

TEST_CASE("fft_conv gradients in u, k and D, first and second order", "[models][longconv][gradcheck][gradgradcheck]") {
  for (int64_t L : {5, 8}) {
    INFO("L = " << L);
    std::vector<Tensor> in = {rnd({2, 2, L}, 40 + L), rnd({2, L}, 50 + L), rnd({2}, 60 + L)};
    Fn f = [](const std::vector<Tensor>& x) { return models::fft_conv(x[0], x[1], x[2]); };
    KERN_GRADCHECK(f, in);
    KERN_GRADGRADCHECK(f, in);
    // Squaring makes the second derivative in (u, k) non-trivial (not just bilinear).
    Fn g = [](const std::vector<Tensor>& x) { return square(models::fft_conv(x[0], x[1], x[2])); };
    KERN_GRADGRADCHECK(g, in);
  }
}

// ---------------------------------------------------------------------------------------------
// Squash and LongConvKernel

TEST_CASE("squash zeroes values within lambda and shrinks the rest by lambda", "[models][longconv]") {
  const double lam = 0.3;
  Tensor k = from_vector<double>({-1.0, -0.31, -0.3, -0.29, -0.1, 0.0, 0.05, 0.3, 0.30001, 0.7, 2.5}, {11});
  auto got = vals(models::squash(k, lam));
  auto in = vals(k);
  for (size_t i = 0; i < in.size(); ++i) {
    INFO("k = " << in[i]);
    if (std::abs(in[i]) <= lam)
      CHECK(got[i] == 0.0);
    else
      CHECK(got[i] == (in[i] > 0 ? in[i] - lam : in[i] + lam));
  }
  // Through the module: kernel(L) is the squashed parameter, fitted to L.
  models::LongConvKernel m(3, 16, {.lam = 0.002});
  Tensor w = m.weight.tensor().detach().reshape({3, 16});
  Tensor k16 = m.kernel(16);
  REQUIRE(k16.shape() == Shape{3, 16});
  auto wv = vals(w), kv = vals(k16);
  int zeros_seen = 0;
  for (size_t i = 0; i < wv.size(); ++i) {
    if (std::abs(wv[i]) <= 0.002f) {
      CHECK(kv[i] == 0.0);
      ++zeros_seen;
    } else {
      CHECK(kv[i] == Approx(wv[i] > 0 ? wv[i] - 0.002 : wv[i] + 0.002).margin(1e-9));
    }
  }
  CHECK(zeros_seen > 0);  // N(0, 0.002^2) init: about 68% of the taps are within lambda
  CHECK(max_abs_diff(m.kernel(10), k16.narrow(1, 0, 10)) == 0.0);
  Tensor k20 = m.kernel(20);
  CHECK(max_abs_diff(k20.narrow(1, 0, 16), k16) == 0.0);
  CHECK(max(abs(k20.narrow(1, 16, 4))).item() == 0.0);
}

TEST_CASE("LongConvKernel: smoothing, kernel dropout and the double_exp init", "[models][longconv]") {
  reseed(3);
  models::LongConvKernel sm(2, 9, {.lam = 0.0, .ma_window_len = 3});
  auto w = vals(sm.weight.tensor().detach().reshape({2, 9}).to(DType::Float64));
  auto k = vals(sm.kernel(9).to(DType::Float64));
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t t = 0; t < 9; ++t) {
      double s = 0;
      for (int64_t j = t - 1; j <= t + 1; ++j)
        if (j >= 0 && j < 9) s += w[h * 9 + j];
      CHECK(k[h * 9 + t] == Approx(s / 3).margin(1e-7));
    }

  models::LongConvKernel dr(4, 64, {.lam = 0.0, .kernel_dropout = 0.5});
  Tensor kt = dr.kernel(64);
  const double zero_frac = eq(kt, zeros_like(kt)).to(DType::Float64).mean().item();
  CHECK(zero_frac > 0.3);
  CHECK(zero_frac < 0.7);
  dr.eval();
  CHECK(max_abs_diff(dr.kernel(64), dr.weight.tensor().detach().reshape({4, 64})) == 0.0);

  // double_exp: channel i's envelope exp(-(j / L) * floor(H/2)^(i/H)) shrinks later taps.
  models::LongConvKernel de(8, 512, {.lam = 0.0, .weight_init = "double_exp"});
  Tensor a = abs(de.weight.tensor().detach().reshape({8, 512}));
  const double head = a.narrow(1, 0, 64).mean().item(), tail = a.narrow(1, 448, 64).mean().item();
  CHECK(tail < head);
  CHECK(head < 0.02 * std::sqrt(2 / M_PI) * 1.2);  // E|N(0, 0.02^2)| = 0.016, times envelopes <= 1
  CHECK(head > 0.005);
}

TEST_CASE("LongConvKernel gradients in its parameter", "[models][longconv][gradcheck]") {
  for (int64_t window : {0, 3}) {
    INFO("ma_window_len = " << window);
    models::LongConvKernel m(2, 7, {.lam = 0.4, .ma_window_len = window});
    m.to(DType::Float64);
    // The first seed whose values (after smoothing too) are at least 0.05 away from the
    // squash's kinks at +-lam, so the finite differences see a smooth function, and some of
    // which survive the squash.
    Tensor w;
    for (uint64_t seed = 77;; ++seed) {
      w = rnd({1, 2, 7}, seed);
      auto sv = vals(window ? models::moving_average(w, window) : w);
      bool ok = true;
      int alive = 0;
      for (double v : sv) {
        ok = ok && std::abs(std::abs(v) - 0.4) > 0.05;
        alive += std::abs(v) > 0.4;
      }
      if (ok && alive >= 3) break;
    }
    KERN_GRADCHECK(kernel_fn(m, {"kernel"}, 7), {w});
    KERN_GRADCHECK(kernel_fn(m, {"kernel"}, 5), {w});
    KERN_GRADCHECK(kernel_fn(m, {"kernel"}, 10), {w});
  }
}

// ---------------------------------------------------------------------------------------------
// SGConv

TEST_CASE("upsample1d matches interpolate(align_corners=False) written out", "[models][longconv]") {
  Tensor x = from_vector<double>({2.0, -2.0}, {1, 2});
  // factor 2: source positions max(0, (j + 0.5) / 2 - 0.5) = 0, 0.25, 0.75, 1.25 (-> 1).
  auto y2 = vals(models::upsample1d(x, 2));
  std::vector<double> want2 = {2.0, 0.75 * 2 + 0.25 * -2, 0.25 * 2 + 0.75 * -2, -2.0};
  for (size_t j = 0; j < 4; ++j) CHECK(y2[j] == Approx(want2[j]).margin(1e-15));
  auto yn = vals(models::upsample1d(x, 3, "nearest"));
  CHECK(yn == std::vector<double>{2, 2, 2, -2, -2, -2});
  CHECK(vals(models::upsample1d(x, 1)) == vals(x));
}

TEST_CASE("SGConv kernel has length exactly L and the derived number of scales", "[models][longconv]") {
  for (int64_t d : {4, 16}) {
    for (int64_t L : {1, 3, 4, 5, 16, 17, 64, 100, 1000, 1024}) {
      INFO("kernel_dim = " << d << ", L = " << L);
      models::SGConvKernel m(3, L, {.kernel_dim = d});
      const int64_t want_scales = L <= d ? 1 : 1 + static_cast<int64_t>(std::ceil(std::log2(double(L) / double(d))));
      CHECK(m.num_scales() == want_scales);
      CHECK(m.full_kernel().size(1) == d * (int64_t{1} << (want_scales - 1)));
      CHECK(m.full_kernel().size(1) >= L);
      Tensor k = m.kernel(L);
      CHECK(k.shape() == Shape{3, L});
      CHECK(m.kernel(L + 7).shape() == Shape{3, L + 7});
    }
  }
  // At init each channel's full concatenation has unit norm.
  models::SGConvKernel m(5, 200, {.kernel_dim = 8});
  Tensor norms = norm(m.full_kernel() / m.kernel_norm.tensor().reshape({5, 1}), 2.0, {1});
  CHECK(max_abs_diff(norms, ones({5})) < 1e-5);
}

TEST_CASE("SGConv decay makes later scales smaller", "[models][longconv]") {
  // All sub-kernels one: piece i of the concatenation is m^(N - 1 - i) / norm everywhere, so
  // piece i / piece 0 = alpha^i with alpha = 1 / m (m = 2 by default, 3 here for channel 1).
  models::SGConvKernel m(2, 64, {.kernel_dim = 4, .decay_min = 2.0, .decay_max = 3.0});
  REQUIRE(m.num_scales() == 5);  // pieces of 4, 4, 8, 16, 32 taps
  m.to(DType::Float64);
  for (Tensor p : m.kernel_list->parameters()) {
    NoGradGuard ng;
    p.fill_(1.0);
  }
  m.reset_kernel_norm();
  Tensor k = m.kernel(64);
  const std::vector<int64_t> start = {0, 4, 8, 16, 32}, len = {4, 4, 8, 16, 32};
  for (int64_t h = 0; h < 2; ++h) {
    const double alpha = 1.0 / (h == 0 ? 2.0 : 3.0);
    const double first = k.select(0, h).select(0, 0).item();
    for (int64_t i = 0; i < 5; ++i) {
      Tensor piece = k.select(0, h).narrow(0, start[i], len[i]);
      CHECK(max(piece).item() == Approx(first * std::pow(alpha, double(i))).epsilon(1e-12));
      CHECK(min(piece).item() == Approx(first * std::pow(alpha, double(i))).epsilon(1e-12));
      if (i > 0) CHECK(max(piece).item() < min(k.select(0, h).narrow(0, start[i - 1], len[i - 1])).item());
    }
  }
}

TEST_CASE("SGConv kernel matches a hand-computed small case", "[models][longconv]") {
  // H = 1, kernel_dim 2, L = 12 -> num_scales = 1 + ceil(log2(6)) = 4, factors 1, 1, 2, 4,
  // weights m^(3 - i) = 8, 4, 2, 1 (m = 2). Sub-kernels [a, b], [c, e], [p, q], [r, s].
  const double a = 1, b = -2, c = 0.5, e = 3, p = 2, q = -2, r = 4, s = 1;
  models::SGConvKernel m(1, 12, {.kernel_dim = 2});
  REQUIRE(m.num_scales() == 4);
  m.to(DType::Float64);
  {
    NoGradGuard ng;
    const std::vector<std::vector<double>> sub = {{a, b}, {c, e}, {p, q}, {r, s}};
    auto params = m.kernel_list->parameters();
    for (size_t i = 0; i < 4; ++i) params[i].copy_(from_vector<double>(sub[i], {1, 1, 2}));
  }
  m.reset_kernel_norm();
  // Linear upsampling by f of [x0, x1]: tap j reads src = max(0, (j + 0.5) / f - 0.5),
  // x0 * (1 - frac) + x1 * frac, clamped to x1 past the last sample.
  std::vector<double> full = {8 * a, 8 * b,  // scale 0 (factor 1)
                              4 * c, 4 * e,  // scale 1 (factor 1)
                              // scale 2 (factor 2): src 0, 0.25, 0.75, 1.25 -> 1
                              2 * p, 2 * (0.75 * p + 0.25 * q), 2 * (0.25 * p + 0.75 * q), 2 * q,
                              // scale 3 (factor 4): src 0, 0, 0.125, 0.375, 0.625, 0.875, 1.125 -> 1, 1.375 -> 1
                              r, r, 0.875 * r + 0.125 * s, 0.625 * r + 0.375 * s, 0.375 * r + 0.625 * s,
                              0.125 * r + 0.875 * s, s, s};
  double n2 = 0;
  for (double v : full) n2 += v * v;
  const double nrm = std::sqrt(n2);
  CHECK(m.kernel_norm.tensor().item() == Approx(nrm).epsilon(1e-14));
  for (int64_t L : {12, 6, 20}) {
    INFO("L = " << L);
    auto k = vals(m.kernel(L));
    REQUIRE(static_cast<int64_t>(k.size()) == L);
    for (int64_t t = 0; t < L; ++t) {
      const double want = t < 16 ? full[t] / nrm : 0.0;
      CHECK(k[t] == Approx(want).margin(1e-14));
    }
  }
}

TEST_CASE("SGConvKernel gradients in its sub-kernels", "[models][longconv][gradcheck]") {
  for (const std::string mode : {"linear", "nearest"}) {
    INFO("interpolate = " << mode);
    models::SGConvKernel m(2, 12, {.kernel_dim = 2, .decay_min = 2.0, .decay_max = 1.5, .interpolate = mode});
    m.to(DType::Float64);
    std::vector<std::string> names;
    std::vector<Tensor> in;
    for (int64_t i = 0; i < m.num_scales(); ++i) {
      names.push_back("kernel_list." + std::to_string(i));
      in.push_back(rnd({1, 2, 2}, 90 + i));
    }
    KERN_GRADCHECK(kernel_fn(m, names, 12), in);
    KERN_GRADCHECK(kernel_fn(m, names, 9), in);
    KERN_GRADCHECK(kernel_fn(m, names, 19), in);
  }
}

// ---------------------------------------------------------------------------------------------
// Layer, block, model

TEST_CASE("LongConv layer: both layouts, the conv inside, gradients", "[models][longconv][gradcheck]") {
  reseed(5);
  for (auto kind : {models::KernelKind::LongConv, models::KernelKind::SGConv}) {
    models::LongConv layer({.d_model = 3, .l_max = 16, .kernel = kind, .long_conv = {.lam = 0.0},
                            .sgconv = {.kernel_dim = 4}, .postact = "id"});
    layer.to(DType::Float64);
    Tensor x = rnd({2, 16, 3}, 6);  // [B, L, H]
    Tensor y = layer(x);
    REQUIRE(y.shape() == Shape{2, 16, 3});
    // By hand: conv + D skip, GELU, then the linear over channels.
    Tensor u = x.transpose(1, 2);
    Tensor z = gelu(models::fft_conv(u, layer.kernel->kernel(16), layer.D.tensor().reshape({3}))).transpose(1, 2);
    auto lin = std::static_pointer_cast<nn::Sequential>(layer.output_linear)->at<nn::Linear>(0);
    CHECK(max_abs_diff(y, linear(z, lin->weight.tensor(), lin->bias.tensor())) < 1e-12);
    // A shorter input than l_max uses the first taps.
    CHECK(layer(x.narrow(1, 0, 9)).shape() == Shape{2, 9, 3});
    CHECK(max_abs_diff(layer(x.narrow(1, 0, 9)), y.narrow(1, 0, 9)) < 1e-12);
    Fn f = [&layer](const std::vector<Tensor>& in) { return layer(in[0]); };
    KERN_GRADCHECK(f, {rnd({1, 6, 3}, 8)});
  }
  // transposed = true: [B, H, L] in and out, same function.
  models::LongConv a({.d_model = 4, .l_max = 10});
  models::LongConv b({.d_model = 4, .l_max = 10, .transposed = true});
  b.load_state_dict(a.state_dict());
  Tensor x = rnd({2, 10, 4}, 11, DType::Float32);
  CHECK(max_abs_diff(b(x.transpose(1, 2)).transpose(1, 2), a(x)) < 1e-6);
}

TEST_CASE("LongConvModel: names, shapes, pooling, causality", "[models][longconv]") {
  reseed(1);
  models::LongConvModel m({.vocab_size = 11, .d_model = 8, .n_layers = 2, .l_max = 32, .num_classes = 5,
                           .pool = models::Pool::None});
  std::map<std::string, Shape> want = {
      {"encoder.weight", {11, 8}},
      {"layers.0.norm.weight", {8}},
      {"layers.0.layer.D", {1, 8}},
      {"layers.0.layer.kernel.kernel", {1, 8, 32}},
      {"layers.0.layer.output_linear.0.weight", {16, 8}},
      {"layers.0.layer.output_linear.0.bias", {16}},
      {"layers.1.layer.kernel.kernel", {1, 8, 32}},
      {"norm.bias", {8}},
      {"decoder.weight", {5, 8}},
  };
  std::map<std::string, Shape> got;
  for (const auto& [name, t] : m.state_dict()) got[name] = t.shape();
  for (const auto& [name, shape] : want) {
    INFO(name);
    REQUIRE(got.count(name) == 1);
    CHECK(got[name] == shape);
  }
  CHECK(got.size() == 1 + 2 * 6 + 2 + 2);  // encoder, 2 blocks of 6, norm, decoder

  Tensor ids = randint(0, 11, {3, 20});
  Tensor y = m(ids);
  REQUIRE(y.shape() == Shape{3, 20, 5});
  // Causal: changing token 12 leaves outputs 0..11 unchanged and changes the later ones.
  Tensor ids2 = ids.clone();
  {
    auto v = ids2.contiguous().to_vector<int64_t>();
    v[12] = (v[12] + 1) % 11;
    ids2 = from_vector<int64_t>(v, {3, 20});
  }
  Tensor y2 = m(ids2);
  CHECK(max_abs_diff(y2.narrow(1, 0, 12), y.narrow(1, 0, 12)) == 0.0);
  CHECK(max_abs_diff(y2.select(0, 0).narrow(0, 12, 8), y.select(0, 0).narrow(0, 12, 8)) > 1e-4);

  // SGConv kernels, float inputs, pooling.
  models::LongConvModel s({.d_input = 2, .d_model = 8, .n_layers = 1, .l_max = 64, .kernel = models::KernelKind::SGConv,
                           .sgconv = {.kernel_dim = 8}, .num_classes = 3, .pool = models::Pool::Mean});
  CHECK(s.get_parameter("layers.0.layer.kernel.kernel_list.3").shape() == Shape{1, 8, 8});
  CHECK(s.get_buffer("layers.0.layer.kernel.kernel_norm").shape() == Shape{1, 8, 1});
  CHECK(s(randn({4, 64, 2})).shape() == Shape{4, 3});
  models::LongConvModel last({.d_input = 1, .d_model = 4, .n_layers = 1, .l_max = 16, .num_classes = 0,
                              .pool = models::Pool::Last});
  Tensor feats = last.forward_features(randn({2, 16}));
  Tensor xin = randn({2, 16});
  CHECK(max_abs_diff(last(xin), last.forward_features(xin).select(1, 15)) == 0.0);
  CHECK(feats.shape() == Shape{2, 16, 4});
}

TEST_CASE("LongConvModel gradients (float64, small)", "[models][longconv][gradcheck]") {
  reseed(2);
  models::LongConvModel m({.d_input = 2, .d_model = 3, .n_layers = 1, .l_max = 6, .long_conv = {.lam = 0.0},
                           .num_classes = 2, .pool = models::Pool::Mean});
  m.to(DType::Float64);
  Fn f = [&m](const std::vector<Tensor>& in) { return m(in[0]); };
  KERN_GRADCHECK(f, {rnd({2, 6, 2}, 4)});
}

TEST_CASE("zoo: longconv_small and sgconv_small", "[models][longconv]") {
  REQUIRE(models::has_model("longconv_small"));
  REQUIRE(models::has_model("sgconv_small"));
  auto lc = models::create_model("longconv_small", {.num_classes = 10, .in_chans = 1});
  auto sg = models::create_model("sgconv_small", {.num_classes = 10, .in_chans = 1});
  auto count = [](const nn::Module& mod) {
    int64_t n = 0;
    for (const auto& p : mod.parameters()) n += p.numel();
    return n;
  };
  // H = 128, 4 blocks, L = 1024. Per block: LayerNorm 2H, D H, output_linear H * 2H + 2H, plus
  // the kernel: H * L (long conv) or 5 scales * H * 64 (SGConv: 1 + log2(1024 / 64) = 5).
  const int64_t H = 128, shared = 4 * (2 * H + H + H * 2 * H + 2 * H) + (1 * H + H) + 2 * H + (H * 10 + 10);
  CHECK(count(*lc) == shared + 4 * H * 1024);
  CHECK(count(*sg) == shared + 4 * 5 * H * 64);
  CHECK((*lc)(randn({2, 100, 1})).shape() == Shape{2, 10});
}

// ---------------------------------------------------------------------------------------------
// Synthetic tasks and training

TEST_CASE("sequence tasks: copy-first, adding, delayed copy", "[models][longconv][data]") {
  auto cf = data::copy_first_task({.n = 50, .length = 30, .vocab = 5, .seed = 1});
  REQUIRE(cf.x().shape() == Shape{50, 30});
  CHECK(max_abs_diff(cf.y().to(DType::Float64), cf.x().select(1, 0).to(DType::Float64)) == 0.0);
  CHECK(min(cf.x().to(DType::Float64)).item() >= 0);
  CHECK(max(cf.x().to(DType::Float64)).item() <= 4);
  auto again = data::copy_first_task({.n = 50, .length = 30, .vocab = 5, .seed = 1});
  CHECK(max_abs_diff(again.x().to(DType::Float64), cf.x().to(DType::Float64)) == 0.0);

  auto ad = data::adding_task({.n = 20, .length = 40, .seed = 2});
  REQUIRE(ad.x().shape() == Shape{20, 40, 2});
  Tensor marks = ad.x().select(2, 1);
  CHECK(max_abs_diff(marks.narrow(1, 0, 20).sum({1}), ones({20})) == 0.0);
  CHECK(max_abs_diff(marks.narrow(1, 20, 20).sum({1}), ones({20})) == 0.0);
  CHECK(max_abs_diff((ad.x().select(2, 0) * marks).sum({1}), ad.y()) < 1e-6);

  auto dc = data::delayed_copy_task({.n = 10, .length = 25, .vocab = 6, .delay = 7, .seed = 3});
  REQUIRE(dc.y().shape() == Shape{10, 25});
  CHECK(max(dc.y().narrow(1, 0, 7).to(DType::Float64)).item() == 0);
  CHECK(max_abs_diff(dc.y().narrow(1, 7, 18).to(DType::Float64), dc.x().narrow(1, 0, 18).to(DType::Float64)) == 0.0);
  CHECK(min(dc.x().to(DType::Float64)).item() >= 1);

  CHECK_THROWS_WITH(data::copy_first_task({.length = 0}), Catch::Contains("length"));
  CHECK_THROWS_WITH(data::delayed_copy_task({.length = 8, .delay = 8}), Catch::Contains("delay"));
}

TEST_CASE("a long conv learns to copy the first token across 256 steps", "[models][longconv][train]") {
  // One thread: the ops here are tiny, and on a busy shared machine OpenMP barriers between
  // them cost more than the work (measured: 0.7 s single-threaded vs 30 s with 2 threads
  // under load for the same 40 steps).
  const int threads = get_num_threads();
  set_num_threads(1);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t L = 256, V = 8;
  auto train = data::copy_first_task({.n = 4096, .length = L, .vocab = V, .seed = 11});
  auto test = data::copy_first_task({.n = 512, .length = L, .vocab = V, .seed = 12});
  reseed(0);
  models::LongConvModel m({.vocab_size = V, .d_model = 16, .n_layers = 1, .l_max = L,
                           .long_conv = {.lam = 0.001}, .num_classes = V, .pool = models::Pool::Last});
  optim::Adam opt(m.parameters(), {.lr = 1e-2});
  auto accuracy = [&](const data::Example& b) {
    NoGradGuard ng;
    m.eval();
    Tensor pred = argmax(m(b.x), 1);
    m.train();
    return eq(pred, b.y).to(DType::Float64).mean().item();
  };
  const double before = accuracy(test.batch(0, 512));
  const int64_t batch = 32, steps = 150;
  for (int64_t s = 0; s < steps; ++s) {
    auto b = train.batch((s * batch) % 4096, batch);
    Tensor loss = cross_entropy(m(b.x), b.y);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  const double after = accuracy(test.batch(0, 512));
  set_num_threads(threads);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO("test accuracy " << before << " -> " << after << " in " << secs << " s (chance " << 1.0 / V << ")");
  CHECK(before < 0.25);
  CHECK(after > 0.6);  // chance is 0.125; the first token is 255 steps back
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST_CASE("long conv errors name the field and the shapes", "[models][longconv][errors]") {
  Tensor u = randn({2, 3, 8});
  CHECK_THROWS_AS(models::fft_conv(u, randn({3, 7})), Error);
  CHECK_THROWS_WITH(models::fft_conv(u, randn({3, 7})), Catch::Contains("length 7") && Catch::Contains("L = 8"));
  CHECK_THROWS_WITH(models::fft_conv(u, randn({4, 8})), Catch::Contains("4 channels") && Catch::Contains("H = 3"));
  CHECK_THROWS_WITH(models::fft_conv(u, randn({3, 8, 1})), Catch::Contains("[H, L]"));
  CHECK_THROWS_WITH(models::fft_conv(randn({2, 3, 0}), randn({3, 0})), Catch::Contains("L must be >= 1"));
  CHECK_THROWS_WITH(models::fft_conv(u, randn({3, 8}), randn({2})), Catch::Contains("D must be [H]"));
  CHECK_THROWS_WITH(models::fft_conv(u, randn({3, 8}, DType::Float64)), Catch::Contains("dtype"));
  CHECK_THROWS_WITH(models::fft_conv(randn({8}), randn({1, 8})), Catch::Contains("[B, H, L]"));

  CHECK_THROWS_WITH(models::LongConvKernel(4, 0), Catch::Contains("L (l_max"));
  CHECK_THROWS_WITH(models::LongConvKernel(0, 8), Catch::Contains("H (channels)"));
  CHECK_THROWS_WITH(models::LongConvKernel(4, 8, {.lam = -1}), Catch::Contains("lam"));
  CHECK_THROWS_WITH(models::LongConvKernel(4, 8, {.ma_window_len = 4}), Catch::Contains("ma_window_len"));
  CHECK_THROWS_WITH(models::LongConvKernel(4, 8, {.weight_init = "zeros"}), Catch::Contains("weight_init"));
  CHECK_THROWS_WITH(models::LongConvKernel(4, 8).kernel(0), Catch::Contains("L must be >= 1"));
  CHECK_THROWS_WITH(models::SGConvKernel(4, 0), Catch::Contains("L (l_max"));
  CHECK_THROWS_WITH(models::SGConvKernel(4, 8, {.kernel_dim = 0}), Catch::Contains("kernel_dim"));
  CHECK_THROWS_WITH(models::SGConvKernel(4, 8, {.interpolate = "cubic"}), Catch::Contains("interpolate"));
  CHECK_THROWS_WITH(models::SGConvKernel(4, 8).kernel(0), Catch::Contains("L must be >= 1"));
  CHECK_THROWS_WITH(models::squash(u, -0.1), Catch::Contains("lam"));
  CHECK_THROWS_WITH(models::upsample1d(u, 0), Catch::Contains("factor"));

  CHECK_THROWS_WITH(models::LongConv({.d_model = 0}), Catch::Contains("d_model"));
  CHECK_THROWS_WITH(models::LongConv({.d_model = 4, .l_max = 0}), Catch::Contains("l_max"));
  CHECK_THROWS_WITH(models::LongConv({.d_model = 4, .postact = "tanh"}), Catch::Contains("postact"));
  CHECK_THROWS_WITH(models::LongConv({.d_model = 4, .activation = "swish"}), Catch::Contains("activation"));
  models::LongConv layer({.d_model = 4, .l_max = 8});
  CHECK_THROWS_WITH(layer(randn({2, 8, 5})), Catch::Contains("5 channels") && Catch::Contains("d_model (H) is 4"));
  CHECK_THROWS_WITH(layer(randn({8, 4})), Catch::Contains("[B, L, H]"));
  CHECK_THROWS_WITH(models::LongConvModel({.l_max = 0}), Catch::Contains("l_max"));
  CHECK_THROWS_WITH(models::LongConvModel({.n_layers = -1}), Catch::Contains("n_layers"));
  models::LongConvModel tok({.vocab_size = 4, .d_model = 4, .n_layers = 1, .l_max = 8});
  CHECK_THROWS_WITH(tok(randn({2, 8})), Catch::Contains("int64 token ids"));
  CHECK_THROWS_WITH(tok(full({1, 8}, 4, DType::Int64)), Catch::Contains("out of range"));
  models::LongConvModel flt({.d_input = 3, .d_model = 4, .n_layers = 1, .l_max = 8});
  CHECK_THROWS_WITH(flt(randn({2, 8, 2})), Catch::Contains("d_input = 3"));
}
