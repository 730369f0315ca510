// kern::limits: analytic infinite-width NNGP/NTK kernels.
//  - one-hidden-layer ReLU / Erf networks equal the arc-cosine (Cho & Saul) and arcsine
//    (Williams) closed forms written here independently (acos / asin forms), 1e-12;
//  - every layer's kernel map agrees with Monte Carlo over random finite twins (seeds are
//    independent, so the standard error of the seed mean is honest);
//  - bad descriptions and inputs throw kern::Error naming the layer.
#include <catch2/catch.hpp>

#include <kern/kern.hpp>
#include <kern/ops.hpp>
#include <kern/tools/limits/limits.hpp>
#include <kern/tools/ntk.hpp>

#include <cmath>
#include <numbers>
#include <string>
#include <vector>

namespace L = kern::limits;
using kern::Tensor;

namespace {

constexpr double kPi = std::numbers::pi;

std::vector<double> vec(const Tensor& t) {
  Tensor c = t.to(kern::DType::Float64).contiguous();
  const double* p = c.data_ptr<double>();
  return std::vector<double>(p, p + c.numel());
}

Tensor inputs(kern::Shape shape, uint64_t seed) {
  kern::Generator g(seed);
  return kern::randn(shape, kern::DType::Float64, &g);
}

double dot_mean(const std::vector<double>& x, int64_t i, int64_t j, int64_t d) {
  double s = 0;
  for (int64_t f = 0; f < d; ++f) s += x[i * d + f] * x[j * d + f];
  return s / static_cast<double>(d);
}

}  // namespace

TEST_CASE("limits: one-hidden-layer ReLU and Erf equal the arc-cosine / arcsine closed forms",
          "[limits]") {
  const int64_t N = 5, d = 7;
  Tensor x = inputs({N, d}, 1);
  std::vector<double> xv = vec(x);
  const double w1 = 1.3, b1 = 0.4, w2 = 0.8, b2 = 0.25;

  // First layer (NTK param): K1 = w1^2 x.x'/d + b1^2, NTK1 = K1.
  auto K1 = [&](int64_t i, int64_t j) { return w1 * w1 * dot_mean(xv, i, j, d) + b1 * b1; };

  SECTION("ReLU, NTK parameterization") {
    auto net = L::serial({L::Dense({.W_std = w1, .b_std = b1}), L::Relu(),
                          L::Dense({.W_std = w2, .b_std = b2})});
    L::Kernels k = net.kernel(x);
    auto nngp = vec(k.nngp), ntk = vec(k.ntk);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) {
        const double k12 = K1(i, j), n1 = std::sqrt(K1(i, i)), n2 = std::sqrt(K1(j, j));
        // theta = 0 exactly on the diagonal (acos(1 - 1e-16) would be 1.5e-8)
        const double theta = i == j ? 0.0 : std::acos(std::clamp(k12 / (n1 * n2), -1.0, 1.0));
        // Cho & Saul degree-1 arc-cosine kernel (with the 1/2 of E[relu^2] = K/2):
        const double arccos1 = n1 * n2 * (std::sin(theta) + (kPi - theta) * std::cos(theta)) / (2 * kPi);
        const double arccos0 = (kPi - theta) / (2 * kPi);  // E[step(u) step(v)]
        const double want_nngp = w2 * w2 * arccos1 + b2 * b2;
        const double want_ntk = want_nngp + w2 * w2 * arccos0 * k12;
        CHECK(std::abs(nngp[i * N + j] - want_nngp) <= 1e-12 * (1 + std::abs(want_nngp)));
        CHECK(std::abs(ntk[i * N + j] - want_ntk) <= 1e-12 * (1 + std::abs(want_ntk)));
      }
  }

  SECTION("ReLU, standard parameterization (width enters the NTK)") {
    const int64_t width = 300;
    const auto sp = L::Parameterization::Standard;
    auto net = L::serial({L::Dense({.W_std = w1, .b_std = b1, .parameterization = sp}), L::Relu(),
                          L::Dense({.W_std = w2, .b_std = b2, .parameterization = sp})});
    L::Kernels k = net.kernel(x, {}, {.width = width});
    auto nngp = vec(k.nngp), ntk = vec(k.ntk);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) {
        const double k12 = K1(i, j), n1 = std::sqrt(K1(i, i)), n2 = std::sqrt(K1(j, j));
        // theta = 0 exactly on the diagonal (acos(1 - 1e-16) would be 1.5e-8)
        const double theta = i == j ? 0.0 : std::acos(std::clamp(k12 / (n1 * n2), -1.0, 1.0));
        const double arccos1 = n1 * n2 * (std::sin(theta) + (kPi - theta) * std::cos(theta)) / (2 * kPi);
        const double arccos0 = (kPi - theta) / (2 * kPi);
        // d f / d W1 sums x.x' (not the mean), d f / d b1 gives 1; the readout's fan_in is width.
        const double ntk1 = d * dot_mean(xv, i, j, d) + 1.0;
        const double want_nngp = w2 * w2 * arccos1 + b2 * b2;
        const double want_ntk = width * arccos1 + w2 * w2 * arccos0 * ntk1 + 1.0;
        CHECK(std::abs(nngp[i * N + j] - want_nngp) <= 1e-12 * (1 + std::abs(want_nngp)));
        CHECK(std::abs(ntk[i * N + j] - want_ntk) <= 1e-12 * (1 + std::abs(want_ntk)));
      }
  }

  SECTION("Erf (Williams' arcsine kernel)") {
    auto net = L::serial({L::Dense({.W_std = w1, .b_std = b1}), L::Erf(),
                          L::Dense({.W_std = w2, .b_std = b2})});
    L::Kernels k = net.kernel(x);
    auto nngp = vec(k.nngp), ntk = vec(k.ntk);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) {
        const double k12 = K1(i, j), s1 = 1 + 2 * K1(i, i), s2 = 1 + 2 * K1(j, j);
        const double arcsine = 2 / kPi * std::asin(2 * k12 / std::sqrt(s1 * s2));
        // E[erf'(u) erf'(v)] = 4/pi * det(I + 2 Sigma)^(-1/2)
        const double dot = 4 / kPi / std::sqrt(s1 * s2 - 4 * k12 * k12);
        const double want_nngp = w2 * w2 * arcsine + b2 * b2;
        const double want_ntk = want_nngp + w2 * w2 * dot * k12;
        CHECK(std::abs(nngp[i * N + j] - want_nngp) <= 1e-12 * (1 + std::abs(want_nngp)));
        CHECK(std::abs(ntk[i * N + j] - want_ntk) <= 1e-12 * (1 + std::abs(want_ntk)));
      }
  }
}

namespace {

// Monte Carlo over `seeds` independent finite twins of `net` (width `width`):
//   NNGP: per seed, the channel mean of f_c(x_i) f_c(x_j) (f: the twin's output, every layer
//         `width` wide, pixel pairs as the analytic kernel lays them out);
//   NTK:  per seed, tools::ntk of the twin of serial(net, readout) with one output.
// Each seed gives an unbiased estimate when the network has a single elementwise layer (a
// random linear map of Gaussian inputs is exactly Gaussian at any width; linear layers after
// it average exactly), so the seed mean is within a few standard errors of the limit. The
// test passes when every entry satisfies |mean - analytic| <= z * SE + 1e-9 (z = 5.5: with
// <= 5000 entries, a false failure has probability < 1e-3).
struct McResult {
  double max_z = 0;      // max over entries of |mean - analytic| / SE
  double max_z_off = 0;  // the same against 1.15 * analytic (the test's power)
};

McResult mc_compare(const std::vector<std::vector<double>>& samples, const std::vector<double>& want) {
  const size_t S = samples.size(), E = want.size();
  McResult r;
  for (size_t e = 0; e < E; ++e) {
    double m = 0, m2 = 0;
    for (const auto& s : samples) m += s[e];
    m /= S;
    for (const auto& s : samples) m2 += (s[e] - m) * (s[e] - m);
    const double se = std::sqrt(m2 / (S - 1) / S) + 1e-9;
    r.max_z = std::max(r.max_z, std::abs(m - want[e]) / se);
    r.max_z_off = std::max(r.max_z_off, std::abs(m - 1.15 * want[e]) / se);
  }
  return r;
}

std::vector<double> channel_kernel(const Tensor& f, bool full) {
  // f: [N, C] or [N, C, H, W] -> [N, N] or [N, N, P(, P)] channel means
  const int64_t N = f.size(0), C = f.size(1), P = f.dim() == 4 ? f.size(2) * f.size(3) : 1;
  const std::vector<double> v = vec(f);
  const int64_t S = full ? P * P : P;
  std::vector<double> out(N * N * S, 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j)
      for (int64_t c = 0; c < C; ++c) {
        const double* a = v.data() + (i * C + c) * P;
        const double* b = v.data() + (j * C + c) * P;
        double* o = out.data() + (i * N + j) * S;
        if (full)
          for (int64_t p = 0; p < P; ++p)
            for (int64_t q = 0; q < P; ++q) o[p * P + q] += a[p] * b[q] / C;
        else
          for (int64_t p = 0; p < P; ++p) o[p] += a[p] * b[p] / C;
      }
  return out;
}

struct McCase {
  std::string what;
  L::Layer net;
  kern::Shape x_shape;
};

void run_mc(const McCase& c, int64_t width, int seeds) {
  INFO(c.what);
  Tensor x = inputs(c.x_shape, 7);
  const bool images = c.x_shape.size() == 4;
  const int64_t C = c.x_shape[1];
  const std::array<int64_t, 2> hw = images ? std::array<int64_t, 2>{c.x_shape[2], c.x_shape[3]}
                                           : std::array<int64_t, 2>{0, 0};
  // NNGP of the net's output
  L::Kernels k = c.net.kernel(x);
  const bool full = k.nngp.dim() == 6;
  std::vector<std::vector<double>> nngp_samples, ntk_samples;
  // one output: images are pooled first (a Dense on images acts per pixel)
  auto readout = full || k.nngp.dim() == 4
                     ? L::serial({c.net, L::GlobalAvgPool(), L::Dense({.W_std = 0.9, .b_std = 0.3})})
                     : L::serial({c.net, L::Dense({.W_std = 0.9, .b_std = 0.3})});
  L::Kernels kr = readout.kernel(x);
  for (int s = 0; s < seeds; ++s) {
    kern::Generator g(1000 + s);
    auto twin = c.net.twin(C, 4 * width, 4 * width, hw, &g);  // forward only: cheap
    {
      kern::NoGradGuard guard;
      nngp_samples.push_back(channel_kernel((*twin)(x), full));
    }
    auto twin_r = readout.twin(C, width, 1, hw, &g);
    ntk_samples.push_back(vec(kern::tools::ntk(*twin_r, x)));
  }
  McResult rn = mc_compare(nngp_samples, vec(k.nngp));
  McResult rk = mc_compare(ntk_samples, vec(kr.ntk));
  INFO("NNGP max z " << rn.max_z << " (vs 1.15x: " << rn.max_z_off << "); NTK max z " << rk.max_z
                     << " (vs 1.15x: " << rk.max_z_off << ")");
  CHECK(rn.max_z < 5.5);
  CHECK(rk.max_z < 5.5);
  // the test has power: a 15% error in the kernel would be seen
  CHECK(rn.max_z_off > 5.5);
  CHECK(rk.max_z_off > 5.5);
}

}  // namespace

TEST_CASE("limits: the vectorized ReLU / LeakyReLU maps equal the std::atan2 formula at every angle",
          "[limits]") {
  // Inputs on circles of different radii at 2000 angles over [0, 2 pi), plus near-duplicates and
  // near-opposites (theta ~ 1e-9 and pi - 1e-9), so that the map's arc-cosine angle atan2(s, k)
  // sweeps (0, pi] through every branch of detail::atan2_vec (|k| < s, |k| > s, k < 0, s = 0).
  // Reference: the same closed form with std::atan2 on the same rounded k, v1, v2 (Dense with
  // W_std 1, b_std 0 makes them x.x'/2 exactly). A wrong polynomial coefficient or a branch
  // mix-up misses by >1e-8.
  std::vector<double> angles;
  for (int i = 0; i < 2000; ++i) angles.push_back(2 * kPi * i / 2000.0);
  for (double eps : {1e-9, 1e-6, 1e-3}) angles.insert(angles.end(), {eps, kPi - eps, kPi + eps});
  const int64_t N = static_cast<int64_t>(angles.size());
  std::vector<double> xs;
  for (int64_t i = 0; i < N; ++i) {
    const double radius = 0.5 + (i % 7) * 0.75;
    xs.push_back(radius * std::cos(angles[i]));
    xs.push_back(radius * std::sin(angles[i]));
  }
  Tensor x1 = kern::from_vector(std::vector<double>(xs.begin(), xs.begin() + 2), {1, 2});
  Tensor x2 = kern::from_vector(xs, {N, 2});
  for (double a : {0.0, 0.1}) {  // ReLU, LeakyReLU(0.1)
    auto net = L::serial({L::Dense({.W_std = 1.0, .b_std = 0.0}), L::ABRelu(a, 1.0)});
    L::Kernels k = net.kernel(x1, x2);
    auto nngp = vec(k.nngp), ntk = vec(k.ntk);
    const double factor = (a - 1) * (a - 1) / (2 * kPi), mean_sq = (a * a + 1) / 2;
    double worst = 0;
    for (int64_t j = 0; j < N; ++j) {
      const double k12 = (xs[0] * xs[2 * j] + xs[1] * xs[2 * j + 1]) / 2;
      const double v1 = (xs[0] * xs[0] + xs[1] * xs[1]) / 2, v2 = (xs[2 * j] * xs[2 * j] + xs[2 * j + 1] * xs[2 * j + 1]) / 2;
      const double r = std::sqrt(v1 * v2), s = std::sqrt(std::max((r - k12) * (r + k12), 0.0));
      const double theta = (s == 0.0 && k12 == 0.0) ? kPi / 2 : std::atan2(s, k12);
      const double kdot = mean_sq - factor * theta;
      const double want_nngp = factor * s + kdot * k12, want_ntk = kdot * k12;  // ntk: K1 * kdot
      worst = std::max({worst, std::abs(nngp[j] - want_nngp) / r, std::abs(ntk[j] - want_ntk) / r});
    }
    INFO("a = " << a << ": max |kern - reference| / sqrt(v1 v2) = " << worst);
    CHECK(worst < 1e-14);
  }
}

TEST_CASE("limits: the conv map on full covariances equals the brute-force patch sum", "[limits]") {
  // out[p, q] = 1/(kh kw) sum_{dh, dw} in[ph*s + dh - pad_h, pw*s + dw - pad_w, qh*s + dh - pad_h,
  // qw*s + dw - pad_w] (zero outside), written here as a plain 4-D loop, against Conv's map on
  // the input kernel of random images: SAME stride 1 (the fast path), non-square, 5x5 windows,
  // a window larger than the image, stride 2 and VALID (the general path).
  struct Case {
    int64_t h, w, kh, kw, stride;
    L::Padding padding;
  };
  for (Case c : {Case{7, 7, 3, 3, 1, L::Padding::Same}, Case{5, 9, 3, 3, 1, L::Padding::Same},
                 Case{6, 4, 5, 3, 1, L::Padding::Same}, Case{3, 2, 5, 5, 1, L::Padding::Same},
                 Case{7, 6, 3, 3, 2, L::Padding::Same}, Case{7, 6, 3, 2, 1, L::Padding::Valid}}) {
    Tensor x1 = inputs({2, 3, c.h, c.w}, 11), x2 = inputs({3, 3, c.h, c.w}, 12);
    L::Kernel k = L::input_kernel(x1, x2, /*full=*/true);
    const std::vector<double> before = k.nngp;
    L::Conv({c.kh, c.kw}, {.stride = {c.stride, c.stride}, .padding = c.padding, .W_std = 1.0, .b_std = 0.0})
        .apply(k);
    auto axis = [&](int64_t in, int64_t win) {  // output size, low padding (XLA's SAME)
      if (c.padding == L::Padding::Valid) return std::pair<int64_t, int64_t>{(in - win) / c.stride + 1, 0};
      const int64_t out = (in + c.stride - 1) / c.stride;
      return std::pair<int64_t, int64_t>{out, std::max<int64_t>((out - 1) * c.stride + win - in, 0) / 2};
    };
    const auto [ho, ph] = axis(c.h, c.kh);
    const auto [wo, pw] = axis(c.w, c.kw);
    REQUIRE(k.h == ho);
    REQUIRE(k.w == wo);
    const int64_t P = c.h * c.w, Po = ho * wo;
    double worst = 0;
    for (int64_t u = 0; u < 6; ++u)
      for (int64_t a = 0; a < ho; ++a)
        for (int64_t b = 0; b < wo; ++b)
          for (int64_t e = 0; e < ho; ++e)
            for (int64_t f = 0; f < wo; ++f) {
              double sum = 0;
              for (int64_t dh = 0; dh < c.kh; ++dh)
                for (int64_t dw = 0; dw < c.kw; ++dw) {
                  const int64_t i1 = a * c.stride + dh - ph, j1 = b * c.stride + dw - pw;
                  const int64_t i2 = e * c.stride + dh - ph, j2 = f * c.stride + dw - pw;
                  if (i1 < 0 || i1 >= c.h || j1 < 0 || j1 >= c.w || i2 < 0 || i2 >= c.h || j2 < 0 || j2 >= c.w)
                    continue;
                  sum += before[u * P * P + (i1 * c.w + j1) * P + i2 * c.w + j2];
                }
              const double want = sum / static_cast<double>(c.kh * c.kw);
              const double got = k.nngp[u * Po * Po + (a * wo + b) * Po + e * wo + f];
              worst = std::max(worst, std::abs(got - want));
            }
    INFO(c.h << "x" << c.w << " window " << c.kh << "x" << c.kw << " stride " << c.stride);
    CHECK(worst < 1e-13);
  }
}

TEST_CASE("limits: every layer's kernel map agrees with Monte Carlo over finite twins", "[limits]") {
  const L::DenseOptions d1{.W_std = 1.3, .b_std = 0.2};
  const L::ConvOptions c1{.W_std = 1.2, .b_std = 0.1};
  const std::vector<McCase> mlp = {
      {"Dense+Relu", L::serial({L::Dense(d1), L::Relu()}), {4, 6}},
      {"Dense+LeakyRelu", L::serial({L::Dense(d1), L::LeakyRelu(0.2)}), {4, 6}},
      {"Dense+ABRelu", L::serial({L::Dense(d1), L::ABRelu(-0.5, 1.5)}), {4, 6}},
      {"Dense+Erf", L::serial({L::Dense(d1), L::Erf(1.2, 0.7, 0.3)}), {4, 6}},
      {"Dense+Gelu", L::serial({L::Dense(d1), L::Gelu()}), {4, 6}},
      {"Dense+Identity", L::serial({L::Dense(d1), L::Identity()}), {4, 6}},
      {"Dense+Relu+Dense", L::serial({L::Dense(d1), L::Relu(), L::Dense({.W_std = 1.1, .b_std = 0.5})}), {4, 6}},
      {"residual fan_sum", L::serial({L::Dense(d1), L::fan_sum({L::serial({L::Relu(), L::Dense()}), L::Identity()})}), {4, 6}},
  };
  for (const auto& c : mlp) run_mc(c, 256, 32);
  const std::vector<McCase> cnn = {
      {"Conv SAME+Relu (full)+GAP", L::serial({L::Conv(3, c1), L::Relu(), L::GlobalAvgPool()}), {3, 2, 5, 5}},
      {"Conv+Relu+AvgPool", L::serial({L::Conv(3, c1), L::Relu(), L::AvgPool({2, 2})}), {2, 2, 5, 5}},
      {"Conv+Erf+AvgPool SAME stride 1", L::serial({L::Conv(3, c1), L::Erf(), L::AvgPool({3, 3}, {.stride = {1, 1}, .padding = L::Padding::Same})}), {2, 2, 4, 4}},
      {"Conv VALID stride 2+Relu+Flatten (diagonal)", L::serial({L::Conv({2, 3}, {.stride = {2, 1}, .padding = L::Padding::Valid, .W_std = 1.1, .b_std = 0.3}), L::Relu(), L::Flatten()}), {3, 2, 6, 5}},
      {"Conv+Relu+Conv stride 2 SAME (odd pad)+GAP", L::serial({L::Conv(3, c1), L::Relu(), L::Conv(2, {.stride = {2, 2}, .W_std = 0.9, .b_std = 0.2}), L::GlobalAvgPool()}), {2, 2, 5, 5}},
      {"Conv+Relu+Dense(1x1)+Flatten", L::serial({L::Conv(3, c1), L::Relu(), L::Dense({.W_std = 1.1}), L::Flatten()}), {2, 2, 4, 4}},
      {"Conv+LayerNorm+GAP", L::serial({L::Conv(3, c1), L::LayerNorm(), L::GlobalAvgPool()}), {2, 2, 4, 4}},
  };
  for (const auto& c : cnn) run_mc(c, 64, 32);
}

TEST_CASE("limits: LayerNorm's map is the normalized covariance (finite-width bias ~1/n)", "[limits]") {
  // LayerNorm then Relu: two nonlinear steps; at width 2048 the bias is far below the tolerance.
  Tensor x = inputs({4, 5}, 3);
  auto net = L::serial({L::Dense({.W_std = 1.5, .b_std = 0.3}), L::LayerNorm(), L::Relu()});
  std::vector<std::vector<double>> samples;
  for (int s = 0; s < 30; ++s) {
    kern::Generator g(50 + s);
    auto twin = net.twin(5, 2048, 2048, {0, 0}, &g);
    kern::NoGradGuard guard;
    samples.push_back(channel_kernel((*twin)(x), false));
  }
  McResult r = mc_compare(samples, vec(net.kernel(x).nngp));
  INFO("max z " << r.max_z);
  CHECK(r.max_z < 5.5);
}

TEST_CASE("limits: bad descriptions and inputs throw kern::Error naming the layer", "[limits]") {
  auto mlp = L::serial({L::Dense(), L::Relu(), L::Dense()});
  auto check_throws = [](auto fn, const std::string& needle) {
    try {
      fn();
      FAIL("no exception; expected one mentioning " << needle);
    } catch (const kern::Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  check_throws([&] { mlp.kernel(inputs({3, 4}, 1), inputs({3, 5}, 2)); }, "differ beyond the batch");
  check_throws([&] { mlp.kernel(inputs({3, 4, 2}, 1)); }, "[N, F] or [N, C, H, W]");
  // Flatten keeps only the diagonal; pooling after it is on vectors
  auto flat_gap = L::serial({L::Conv(3), L::Relu(), L::Flatten(), L::GlobalAvgPool()});
  check_throws([&] { flat_gap.kernel(inputs({2, 1, 4, 4}, 1)); }, "GlobalAvgPool: needs images");
  // GAP needs the full pixel-pixel covariance
  auto gap = L::serial({L::Conv(3), L::Relu(), L::GlobalAvgPool(), L::Dense()});
  check_throws([&] { gap.kernel(inputs({2, 1, 4, 4}, 1), {}, {.force_diagonal = true}); },
               "GlobalAvgPool: needs full pixel-pixel covariances");
  check_throws([&] { L::serial({L::Dense(), L::Relu(), L::Relu()}).kernel(inputs({2, 3}, 1)); },
               "ABRelu(0, 1): the kernel maps of elementwise layers need Gaussian inputs");
  check_throws([&] { L::serial({L::Dense(), L::Conv(3)}).kernel(inputs({2, 3}, 1)); },
               "limits::Conv: needs images");
  check_throws([&] { L::serial({L::Conv(5, {.padding = L::Padding::Valid})}).kernel(inputs({2, 1, 3, 3}, 1)); },
               "limits::Conv: VALID window 5 is larger than the input size 3");
  const auto sp = L::Parameterization::Standard;
  check_throws([&] {
    L::serial({L::Dense({.parameterization = sp}), L::Relu(), L::Dense({.parameterization = sp})})
        .kernel(inputs({2, 3}, 1));
  }, "set KernelOptions::width");
  check_throws([&] { L::Dense({.b_std = 0.5, .bias = false}); }, "b_std 0.5 given with bias = false");
}

TEST_CASE("limits: batching over pairs and x2 give the same kernel as one block", "[limits]") {
  auto net = L::serial({L::Conv(3, {.W_std = 1.4, .b_std = 0.1}), L::Relu(), L::Conv(3), L::Relu(),
                        L::AvgPool({2, 2}), L::Flatten(), L::Dense()});
  Tensor x1 = inputs({5, 2, 6, 6}, 1), x2 = inputs({3, 2, 6, 6}, 2);
  L::Kernels a = net.kernel(x1, x2), b = net.kernel(x1, x2, {.batch_size = 2});
  L::Kernels self = net.kernel(x1), self_b = net.kernel(x1, {}, {.batch_size = 2});
  auto va = vec(a.ntk), vb = vec(b.ntk), sa = vec(self.nngp), sb = vec(self_b.nngp);
  REQUIRE(va.size() == 15);
  for (size_t i = 0; i < va.size(); ++i) CHECK(std::abs(va[i] - vb[i]) <= 1e-13 * std::abs(va[i]));
  for (size_t i = 0; i < sa.size(); ++i) CHECK(std::abs(sa[i] - sb[i]) <= 1e-13 * std::abs(sa[i]));
  // symmetric self-kernel
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 5; ++j) CHECK(std::abs(sa[i * 5 + j] - sa[j * 5 + i]) <= 1e-14 * std::abs(sa[i * 5 + j]));
}

namespace {

// mean over seeds of ||Theta_twin - Theta_inf||_F / ||Theta_inf||_F
double twin_distance(const L::Layer& net, const Tensor& x, int64_t width, int seeds,
                     std::array<int64_t, 2> hw, L::Parameterization) {
  auto want = vec(net.kernel(x, {}, {.width = width}).ntk);
  double norm = 0;
  for (double v : want) norm += v * v;
  double total = 0;
  for (int s = 0; s < seeds; ++s) {
    kern::Generator g(77 + s);
    auto twin = net.twin(x.size(1), width, 1, hw, &g);
    auto got = vec(kern::tools::ntk(*twin, x));
    double d = 0;
    for (size_t i = 0; i < got.size(); ++i) d += (got[i] - want[i]) * (got[i] - want[i]);
    total += std::sqrt(d / norm);
  }
  return total / seeds;
}

}  // namespace

TEST_CASE("limits: the finite twin's empirical NTK approaches the analytic one with width",
          "[limits]") {
  // Deep nets (3 nonlinearities): the distance is O(width^-1/2); 16x the width -> ~1/4.
  Tensor x = inputs({4, 5}, 12);
  for (auto par : {L::Parameterization::NTK, L::Parameterization::Standard}) {
    INFO((par == L::Parameterization::NTK ? "ntk" : "standard"));
    const L::DenseOptions o{.W_std = 1.4, .b_std = 0.2, .parameterization = par};
    auto mlp = L::serial({L::Dense(o), L::Relu(), L::Dense(o), L::Erf(), L::Dense(o), L::Gelu(),
                          L::Dense(o)});
    const double d64 = twin_distance(mlp, x, 64, 3, {0, 0}, par);
    const double d1024 = twin_distance(mlp, x, 1024, 3, {0, 0}, par);
    INFO("distance at 64: " << d64 << ", at 1024: " << d1024);
    CHECK(d1024 < 0.08);
    CHECK(d1024 < 0.5 * d64);
  }
  // a small CNN with a residual block, LayerNorm and GAP
  Tensor xi = inputs({3, 2, 5, 5}, 13);
  const L::ConvOptions c{.W_std = 1.3, .b_std = 0.1};
  auto cnn = L::serial({L::Conv(3, c),
                        L::fan_sum({L::serial({L::Relu(), L::Conv(3, c), L::Relu(), L::Conv(3, c)}), L::Identity()}),
                        L::LayerNorm(), L::Relu(), L::AvgPool({2, 2}, {.stride = {1, 1}}), L::GlobalAvgPool(),
                        L::Dense({.W_std = 1.0, .b_std = 0.1})});
  const double d16 = twin_distance(cnn, xi, 16, 3, {5, 5}, L::Parameterization::NTK);
  const double d256 = twin_distance(cnn, xi, 256, 3, {5, 5}, L::Parameterization::NTK);
  INFO("CNN distance at 16: " << d16 << ", at 256: " << d256);
  CHECK(d256 < 0.1);
  CHECK(d256 < 0.5 * d16);
}
