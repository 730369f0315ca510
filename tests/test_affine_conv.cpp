// Affine lifting / group convolutions with SIREN kernels (models/lie/conv.cpp) and the
// AffConvNet zoo models: exact p4 equivariance on the 4 quarter turns (float64, 1e-10) and
// equality with kern's p4 LiftingConv2d / GroupConv2d given the same filters, gradient checks
// of the Siren and of both layers (float64), the wiring of sample sets, the zoo entries, errors.
#include "gradcheck.hpp"

#include <catch2/catch.hpp>
#include <kern/kern.hpp>
#include <kern/models/affine_conv.hpp>
#include <kern/models/equivariant.hpp>

#include <cmath>
#include <map>
#include <numbers>
#include <vector>

using namespace kern;
namespace lie = kern::models::lie;

namespace {

constexpr DType F64 = DType::Float64;

double max_abs(const Tensor& t) { return max(abs(t)).item(); }

lie::AffineConvOptions small(int64_t in, int64_t out, int64_t k, lie::Group g) {
  return lie::AffineConvOptions(in, out, k).group(g).hidden(8).hidden_layers(2).omega0(3.0);
}

// The quarter turns R^m as a sample set, written out (R (a, b) = (-b, a) on (row, col)).
lie::Samples quarter_turns(lie::Group g) {
  const std::vector<double> e = {1, 0, 0, 1, 0, -1, 1, 0, -1, 0, 0, -1, 0, 1, -1, 0};
  return lie::from_elements(from_vector(e, {4, 2, 2}), g);
}

void randomize(nn::Module& m, Generator& gen) {
  NoGradGuard ng;
  for (auto& p : m.parameters()) p.copy_(randn(p.shape(), p.dtype(), &gen) * 0.5);
}

}  // namespace

TEST_CASE("affine lifting and group convs are exactly p4-equivariant on quarter turns and equal kern's p4 layers",
          "[lie][affine_conv]") {
  Generator gen(21);
  const int64_t k = 3, Ci = 2, Cm = 3, Co = 2;
  const models::PlaneGroup p4("p4");
  for (auto group : {lie::Group::GL2, lie::Group::SL2}) {
    INFO(lie::group_name(group));
    const lie::Samples s = quarter_turns(group);
    auto lift = std::make_shared<lie::AffineLiftingConv>(small(Ci, Cm, k, group));
    auto gconv = std::make_shared<lie::AffineGroupConv>(small(Cm, Co, k, group));
    lift->to(F64);
    gconv->to(F64);
    randomize(*lift, gen);
    randomize(*gconv, gen);
    const Tensor x = randn({2, Ci, 7, 7}, F64, &gen);
    const Tensor y = lift->forward(x, s);    // [2, Cm, 4, 7, 7]
    const Tensor z = gconv->forward(y, s, s);  // [2, Co, 4, 7, 7]
    for (int64_t r = 1; r < 4; ++r) {
      const Tensor xr = rot90(x, r, {-2, -1});
      const Tensor yr = lift->forward(xr, s);
      CHECK(max_abs(yr - p4.transform_features(y, r)) < 1e-10);
      CHECK(max_abs(gconv->forward(p4.transform_features(y, r), s, s) - p4.transform_features(z, r)) < 1e-10);
    }
    // kern's p4 layers with the filters sampled from the same Siren kernels:
    //   lifting: weight[o, c](u) = kappa[o, c](u) / sqrt(Ci k^2)
    //   group:   weight[o, c, m](u) = kappa[o, c](u, e(R^m)) / (4 sqrt(Cm k^2)),
    //            e(R^m) = (0, .., 0, cos(m pi / 2), sin(m pi / 2))
    NoGradGuard ng;
    const Tensor u = lie::kernel_grid(k, F64);  // [k*k, 2]
    auto lp4 = std::make_shared<models::LiftingConv2d>(
        models::GroupConvOptions(Ci, Cm, k).group("p4").padding(nn::kSame).bias(true));
    lp4->to(F64);
    const Tensor kv = lift->kernel->forward(u).reshape({k, k, Cm, Ci}).permute({2, 3, 0, 1});
    lp4->weight.tensor().copy_(kv / std::sqrt(double(Ci * k * k)));
    lp4->bias.tensor().copy_(lift->bias());
    CHECK(max_abs((*lp4)(x) - y) < 1e-10);

    const int64_t E = lie::group_embedding_dim(group);
    std::vector<double> coords;
    for (int64_t m = 0; m < 4; ++m)
      for (int64_t p = 0; p < k * k; ++p) {
        const auto uv = u.select(0, p).to_vector<double>();
        coords.push_back(uv[0]);
        coords.push_back(uv[1]);
        for (int64_t e = 0; e < E - 2; ++e) coords.push_back(0.0);
        coords.push_back(std::cos(m * std::numbers::pi / 2));
        coords.push_back(std::sin(m * std::numbers::pi / 2));
      }
    const Tensor gk = gconv->kernel->forward(from_vector(coords, {4, k, k, 2 + E}));  // [4, k, k, Co*Cm]
    auto gp4 = std::make_shared<models::GroupConv2d>(
        models::GroupConvOptions(Cm, Co, k).group("p4").padding(nn::kSame).bias(true));
    gp4->to(F64);
    gp4->weight.tensor().copy_(gk.reshape({4, k, k, Co, Cm}).permute({3, 4, 0, 1, 2}) /
                               (4 * std::sqrt(double(Cm * k * k))));
    gp4->bias.tensor().copy_(gconv->bias());
    CHECK(max_abs((*gp4)(y) - z) < 1e-10);
  }
}

TEST_CASE("the Siren kernel and both layers pass gradcheck and gradgradcheck (float64)", "[lie][affine_conv]") {
  Generator gen(22);
  const auto group = lie::Group::GL2;
  const lie::Samples s = lie::sample({.group = group, .num_samples = 3, .log_std = 0.3}, &gen, F64);
  const lie::Samples s2 = lie::sample({.group = group, .num_samples = 2, .log_std = 0.3}, &gen, F64);
  auto opts = lie::AffineConvOptions(1, 2, 3).group(group).hidden(4).hidden_layers(1).omega0(2.0);
  auto lift = std::make_shared<lie::AffineLiftingConv>(opts);
  auto gconv = std::make_shared<lie::AffineGroupConv>(lie::AffineConvOptions(2, 1, 3).group(group).hidden(4)
                                                          .hidden_layers(1).omega0(2.0));
  lift->to(F64);
  gconv->to(F64);
  randomize(*lift, gen);
  randomize(*gconv, gen);
  // f(x, params...) through functional_call, so the check perturbs the Siren's weights too
  auto as_fn = [](nn::Module& m, std::function<Tensor(nn::Module&, const Tensor&)> call) {
    std::vector<std::string> names;
    for (auto& [n, p] : m.named_parameters()) names.push_back(n);
    return kern::testing::Fn([&m, names, call](const std::vector<Tensor>& in) {
      std::map<std::string, Tensor> sub;
      for (size_t i = 0; i < names.size(); ++i) sub[names[i]] = in[i + 1];
      const Tensor x = in[0];
      return nn::functional_call(m, nn::StateDict(sub.begin(), sub.end()),
                                 [&](nn::Module& mm) { return call(mm, x); });
    });
  };
  auto inputs = [](const Tensor& x, nn::Module& m) {
    std::vector<Tensor> v{x};
    for (auto& p : m.parameters()) v.push_back(p.detach());
    return v;
  };
  {
    auto f = as_fn(*lift, [&](nn::Module& m, const Tensor& x) {
      return static_cast<lie::AffineLiftingConv&>(m).forward(x, s);
    });
    const auto in = inputs(randn({1, 1, 4, 4}, F64, &gen), *lift);
    KERN_GRADCHECK(f, in);
    KERN_GRADGRADCHECK(f, in);
  }
  {
    // input on s (3 samples), output on s2 (2 samples): the two sets differ on purpose
    auto f = as_fn(*gconv, [&](nn::Module& m, const Tensor& x) {
      return static_cast<lie::AffineGroupConv&>(m).forward(x, s, s2);
    });
    const auto in = inputs(randn({1, 2, 3, 3, 3}, F64, &gen), *gconv);
    KERN_GRADCHECK(f, in);
    KERN_GRADGRADCHECK(f, in);
  }
  {
    // the Siren alone, in its input coordinates and parameters
    auto siren = std::make_shared<lie::Siren>(lie::SirenOptions{.in_features = 3, .out_features = 2,
                                                                .hidden = 5, .hidden_layers = 2, .omega0 = 3.0});
    siren->to(F64);
    auto f = as_fn(*siren, [](nn::Module& m, const Tensor& x) { return m.forward(x); });
    const auto in = inputs(randn({4, 3}, F64, &gen) * 0.5, *siren);
    KERN_GRADCHECK(f, in);
    KERN_GRADGRADCHECK(f, in);
  }
}

TEST_CASE("sample sets are wired per layer and checked", "[lie][affine_conv]") {
  Generator gen(23);
  const auto s3 = lie::sample({.group = lie::Group::SL2, .num_samples = 3}, &gen, F64);
  const auto s5 = lie::sample({.group = lie::Group::SL2, .num_samples = 5}, &gen, F64);
  auto lift = std::make_shared<lie::AffineLiftingConv>(small(1, 2, 3, lie::Group::SL2));
  auto gconv = std::make_shared<lie::AffineGroupConv>(small(2, 2, 3, lie::Group::SL2));
  lift->to(F64);
  gconv->to(F64);
  const Tensor y = lift->forward(randn({1, 1, 6, 6}, F64, &gen), s3);
  CHECK(y.shape() == Shape{1, 2, 3, 6, 6});
  CHECK(gconv->forward(y, s3, s5).shape() == Shape{1, 2, 5, 6, 6});
  CHECK_THROWS_WITH(gconv->forward(y, s5, s5), Catch::Contains("pass the set the input is defined on"));
  const auto gl = lie::sample({.group = lie::Group::GL2, .num_samples = 3}, &gen, F64);
  CHECK_THROWS_WITH(gconv->forward(y, gl, gl), Catch::Contains("gl2"));
  CHECK_THROWS_WITH(lift->forward(randn({1, 1, 6, 6}, F64, &gen)), Catch::Contains("sample set"));
  CHECK_THROWS_WITH(lie::AffineLiftingConv(lie::AffineConvOptions(1, 2, 4)), Catch::Contains("odd"));
}

TEST_CASE("affconv_gl2 / affconv_sl2 in the zoo: invariant on quarter turns, trains", "[lie][affine_conv][models]") {
  for (const char* name : {"affconv_gl2", "affconv_sl2"}) {
    INFO(name);
    REQUIRE(models::has_model(name));
    auto m = std::dynamic_pointer_cast<lie::AffConvNet>(models::create_model(name, {.num_classes = 10, .in_chans = 1}));
    REQUIRE(m);
    m->to(F64);
    m->eval();
    Generator gen(24);
    const Tensor x = randn({2, 1, 12, 12}, F64, &gen);
    const Tensor y = (*m)(x);
    CHECK(y.shape() == Shape{2, 10});
    // eval uses a fixed set: same output twice
    CHECK(max_abs((*m)(x) - y) == 0);
    // on the quarter turns the logits are invariant to rot90 of the input (global max)
    const auto q = quarter_turns(lie::parse_group(std::string(name).substr(8)));
    const Tensor a = m->forward(x, q), b = m->forward(rot90(x, 1, {-2, -1}), q);
    CHECK(max_abs(a - b) < 1e-10);
    // a backward reaches every parameter
    m->train();
    (*m)(x).pow(2).sum().backward();
    for (auto& [n, p] : m->named_parameters()) {
      INFO(n);
      CHECK(p.grad().defined());
    }
  }
}

namespace {

// The lifting conv's output on an analytic image f (three Gaussian blobs, coordinates in kernel
// units: the kernel grid has spacing delta = 2 / (k - 1)), sampled on a (2 R / delta + 1)^2
// canvas centred at 0 after the map y -> A y + b, i.e. the image is f(A y + b); returned at the
// output pixel whose coordinate is x, normalized to an integral (times delta^2 / scale, scale =
// 1 / sqrt(C_in k^2) = 1 / k): [C_out, S].
Tensor lift_at(lie::AffineLiftingConv& lift, const lie::Samples& s, int64_t k, const std::array<double, 4>& A,
               const std::array<double, 2>& b, const std::array<double, 2>& x) {
  const double delta = 2.0 / double(k - 1), R = 3.0;
  const int64_t n = std::llround(2 * R / delta) + 1;
  std::vector<double> img(n * n);
  const double blobs[3][3] = {{0.3, -0.2, 1.0}, {-0.4, 0.5, -0.7}, {0.1, 0.6, 0.5}};  // centre, weight
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const double y0 = -R + i * delta, y1 = -R + j * delta;
      const double z0 = A[0] * y0 + A[1] * y1 + b[0], z1 = A[2] * y0 + A[3] * y1 + b[1];
      double v = 0;
      for (auto& bl : blobs) v += bl[2] * std::exp(-((z0 - bl[0]) * (z0 - bl[0]) + (z1 - bl[1]) * (z1 - bl[1])) / (2 * 0.16));
      img[i * n + j] = v;
    }
  const Tensor y = lift.forward(from_vector(img, {1, 1, n, n}), s);  // [1, Co, S, n, n]
  const int64_t pi = std::llround((x[0] + R) / delta), pj = std::llround((x[1] + R) / delta);
  return y.select(0, 0).select(-1, pj).select(-1, pi) * (delta * delta * double(k));
}

}  // namespace

TEST_CASE("affine lifting conv is approximately equivariant for a general affine g; the error is the grid's",
          "[lie][affine_conv]") {
  // With a compactly supported kernel (envelope radius 1, the kernel grid's inscribed disk) and
  // samples and g whose transformed disks stay inside the kernel window (rotations; g has
  // singular values <= 1), the layer is a Riemann sum of an exactly equivariant integral:
  //   out'(x, g h) with input f(g^-1 .)  ==  out(g^-1 x, h) with input f.
  // The input is analytic (no input resampling); out(g^-1 x, h) is evaluated exactly by
  // translating f. The only error left is the grid sum's; its size is measured by the same
  // quantities on a grid twice as fine (k = 17 vs 9): tolerance = 2 x (|coarse - fine| of both
  // sides), and the equivariance error must shrink on the finer grid.
  Generator gen(25);
  auto lift = std::make_shared<lie::AffineLiftingConv>(
      lie::AffineConvOptions(1, 2, 9).group(lie::Group::GL2).hidden(8).hidden_layers(2).omega0(2.0).envelope(1.0).bias(false));
  auto lift_fine = std::make_shared<lie::AffineLiftingConv>(
      lie::AffineConvOptions(1, 2, 17).group(lie::Group::GL2).hidden(8).hidden_layers(2).omega0(2.0).envelope(1.0).bias(false));
  lift->to(F64);
  lift_fine->to(F64);
  randomize(*lift, gen);
  {  // the same continuous kernel in both
    NoGradGuard ng;
    auto src = lift->named_parameters();
    auto dst = lift_fine->named_parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].second.copy_(src[i].second);
  }
  const double a = 40 * std::numbers::pi / 180;
  const lie::Samples s = lie::from_elements(
      from_vector(std::vector<double>{1, 0, 0, 1, std::cos(a), -std::sin(a), std::sin(a), std::cos(a)}, {2, 2, 2}),
      lie::Group::GL2);
  const double t = 25 * std::numbers::pi / 180;
  // g = Rot(t) [[0.9, 0.15], [0, 0.85]]
  const double g[4] = {std::cos(t) * 0.9, std::cos(t) * 0.15 - std::sin(t) * 0.85, std::sin(t) * 0.9,
                       std::sin(t) * 0.15 + std::cos(t) * 0.85};
  const double det = g[0] * g[3] - g[1] * g[2];
  const std::array<double, 4> gi = {g[3] / det, -g[1] / det, -g[2] / det, g[0] / det}, id = {1, 0, 0, 1};
  const lie::Samples gs = lie::left_mul(from_vector(std::vector<double>(g, g + 4), {2, 2}), s);
  for (auto x : {std::array<double, 2>{0, 0}, {0.5, -0.25}, {-0.5, 0.5}}) {
    const std::array<double, 2> gx = {gi[0] * x[0] + gi[1] * x[1], gi[2] * x[0] + gi[3] * x[1]};
    // out'(x, g h): input f(g^-1 y); out(g^-1 x, h): input f(y + g^-1 x - x) at x
    auto transformed = [&](lie::AffineLiftingConv& l, int64_t k) { return lift_at(l, gs, k, gi, {0, 0}, x); };
    auto reference = [&](lie::AffineLiftingConv& l, int64_t k) {
      return lift_at(l, s, k, id, {gx[0] - x[0], gx[1] - x[1]}, x);
    };
    const Tensor tc = transformed(*lift, 9), rc = reference(*lift, 9);
    const Tensor tf = transformed(*lift_fine, 17), rf = reference(*lift_fine, 17);
    const double err_coarse = max_abs(tc - rc), err_fine = max_abs(tf - rf);
    const double grid_err = max_abs(tc - tf) + max_abs(rc - rf);
    INFO("x (" << x[0] << ", " << x[1] << "): |out| " << max_abs(rc) << ", equivariance error coarse " << err_coarse
               << " fine " << err_fine << ", grid error (coarse - fine) " << grid_err);
    CHECK(max_abs(rc) > 0.05);
    CHECK(err_coarse <= 2 * grid_err);
    CHECK(err_fine < 0.5 * err_coarse);
  }
}

namespace {

// The group conv's output on analytic feature maps on G: the map on input sample j is f_j (three
// Gaussian blobs whose weights depend on j), sampled like lift_at's image after y -> A y + b:
// input [1, 1, S_in, n, n]; returned at the output pixel x, normalized to an integral (times
// delta^2 / scale; scale = 1 / sqrt(C_in k^2) = 1 / k; the Monte-Carlo weight 1 / S_in stays):
// [C_out, S_out].
Tensor group_at(lie::AffineGroupConv& conv, const lie::Samples& in, const lie::Samples& out, int64_t k,
                const std::array<double, 4>& A, const std::array<double, 2>& b, const std::array<double, 2>& x) {
  const double delta = 2.0 / double(k - 1), R = 3.0;
  const int64_t n = std::llround(2 * R / delta) + 1, Si = in.size();
  std::vector<double> img(Si * n * n);
  const double blobs[3][2] = {{0.3, -0.2}, {-0.4, 0.5}, {0.1, 0.6}};
  const double weights[3][3] = {{1.0, -0.7, 0.5}, {-0.3, 0.9, 0.8}, {0.6, 0.4, -1.0}};  // [j][blob]
  for (int64_t j = 0; j < Si; ++j)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t l = 0; l < n; ++l) {
        const double y0 = -R + i * delta, y1 = -R + l * delta;
        const double z0 = A[0] * y0 + A[1] * y1 + b[0], z1 = A[2] * y0 + A[3] * y1 + b[1];
        double v = 0;
        for (int bl = 0; bl < 3; ++bl) {
          const double d0 = z0 - blobs[bl][0], d1 = z1 - blobs[bl][1];
          v += weights[j % 3][bl] * std::exp(-(d0 * d0 + d1 * d1) / (2 * 0.16));
        }
        img[(j * n + i) * n + l] = v;
      }
  const Tensor y = conv.forward(from_vector(img, {1, 1, Si, n, n}), in, out);  // [1, Co, S_out, n, n]
  const int64_t pi = std::llround((x[0] + R) / delta), pj = std::llround((x[1] + R) / delta);
  return y.select(0, 0).select(-1, pj).select(-1, pi) * (delta * delta * double(k));
}

}  // namespace

TEST_CASE("affine group conv is approximately equivariant for a general affine g, within the grid's error",
          "[lie][affine_conv]") {
  // G -> G. Transforming the input maps and both sample sets by g leaves the relative elements
  // h_s^-1 g_j, hence the kernel's group argument, unchanged; the spatial part is the lifting
  // conv's Riemann sum, so with a compact kernel (envelope radius 1) and samples / g whose
  // transformed disks stay inside the kernel window:
  //   out'(x, g h_s) with input maps f_j(g^-1 .) on {g g_j}  ==  out(g^-1 x, h_s) with f_j on {g_j}.
  // The inputs are analytic (no resampling); out(g^-1 x, h) is evaluated by translating the f_j.
  // Error left: the grid sum's. Measured (float64, this seed, the 3 points x): equivariance
  // error 3.0e-4..4.6e-4 of outputs 0.18..0.30 at k = 9, dropping to 1.2e-5..4.6e-5 at k = 17;
  // |coarse - fine| of both sides (the grid error) 3.0e-4..4.7e-4. Tolerance: 2 x that grid
  // error; and the error must shrink (< 0.5x) on the finer grid.
  Generator gen(26);
  auto make = [](int64_t k) {
    return std::make_shared<lie::AffineGroupConv>(lie::AffineConvOptions(1, 2, k)
                                                      .group(lie::Group::GL2)
                                                      .hidden(8)
                                                      .hidden_layers(2)
                                                      .omega0(2.0)
                                                      .envelope(1.0)
                                                      .bias(false));
  };
  auto conv = make(9), conv_fine = make(17);
  conv->to(F64);
  conv_fine->to(F64);
  randomize(*conv, gen);
  {  // the same continuous kernel in both
    NoGradGuard ng;
    auto src = conv->named_parameters();
    auto dst = conv_fine->named_parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].second.copy_(src[i].second);
  }
  // input set: identity, a 40 degree rotation, a shear-scale inside the kernel window; output set:
  // identity and a -30 degree rotation (different sets: the wiring is part of what is checked)
  const double a = 40 * std::numbers::pi / 180, c = -30 * std::numbers::pi / 180;
  const lie::Samples s_in = lie::from_elements(
      from_vector(std::vector<double>{1, 0, 0, 1, std::cos(a), -std::sin(a), std::sin(a), std::cos(a), 0.8, 0.1, 0, 0.9},
                  {3, 2, 2}),
      lie::Group::GL2);
  const lie::Samples s_out = lie::from_elements(
      from_vector(std::vector<double>{1, 0, 0, 1, std::cos(c), -std::sin(c), std::sin(c), std::cos(c)}, {2, 2, 2}),
      lie::Group::GL2);
  const double t = 25 * std::numbers::pi / 180;
  // g = Rot(t) [[0.9, 0.15], [0, 0.85]]: rotation, shear, det 0.77
  const double g[4] = {std::cos(t) * 0.9, std::cos(t) * 0.15 - std::sin(t) * 0.85, std::sin(t) * 0.9,
                       std::sin(t) * 0.15 + std::cos(t) * 0.85};
  const double det = g[0] * g[3] - g[1] * g[2];
  const std::array<double, 4> gi = {g[3] / det, -g[1] / det, -g[2] / det, g[0] / det}, id = {1, 0, 0, 1};
  const Tensor gt = from_vector(std::vector<double>(g, g + 4), {2, 2});
  const lie::Samples gs_in = lie::left_mul(gt, s_in), gs_out = lie::left_mul(gt, s_out);
  for (auto x : {std::array<double, 2>{0, 0}, {0.5, -0.25}, {-0.5, 0.5}}) {
    const std::array<double, 2> gx = {gi[0] * x[0] + gi[1] * x[1], gi[2] * x[0] + gi[3] * x[1]};
    auto transformed = [&](lie::AffineGroupConv& l, int64_t k) { return group_at(l, gs_in, gs_out, k, gi, {0, 0}, x); };
    auto reference = [&](lie::AffineGroupConv& l, int64_t k) {
      return group_at(l, s_in, s_out, k, id, {gx[0] - x[0], gx[1] - x[1]}, x);
    };
    const Tensor tc = transformed(*conv, 9), rc = reference(*conv, 9);
    const Tensor tf = transformed(*conv_fine, 17), rf = reference(*conv_fine, 17);
    const double err_coarse = max_abs(tc - rc), err_fine = max_abs(tf - rf);
    const double grid_err = max_abs(tc - tf) + max_abs(rc - rf);
    INFO("x (" << x[0] << ", " << x[1] << "): |out| " << max_abs(rc) << ", equivariance error coarse " << err_coarse
               << " fine " << err_fine << ", grid error (coarse - fine) " << grid_err);
    CHECK(max_abs(rc) > 0.05);
    CHECK(err_coarse <= 2 * grid_err);
    CHECK(err_fine < 0.5 * err_coarse);
    // a wrong wiring (output set not transformed with the input) breaks it by far more
    if (x[0] == 0 && x[1] == 0) {
      const Tensor wrong = group_at(*conv, gs_in, s_out, 9, gi, {0, 0}, x);
      CHECK(max_abs(wrong - rc) > 10 * grid_err);
    }
  }
}

TEST_CASE("AffConvNet lift_pool: quarter-turn invariant with and without it, bad values rejected",
          "[lie][affine_conv][models]") {
  Generator gen(27);
  const Tensor x = randn({2, 1, 12, 12}, F64, &gen);
  const auto q = quarter_turns(lie::Group::GL2);
  std::map<int64_t, Tensor> out;
  for (int64_t p : {1, 2, 3}) {  // 3 divides 12: the pooled grid stays p4-symmetric
    INFO("lift_pool " << p);
    lie::AffConvNet m(lie::AffConvNetOptions{.channels = 4, .num_blocks = 1, .kernel_size = 3, .num_samples = 4,
                                             .siren_hidden = 8, .lift_pool = p, .pool_after = {}});
    m.to(F64);
    Generator init(28);
    randomize(m, init);
    const Tensor a = m.forward(x, q), b = m.forward(rot90(x, 1, {-2, -1}), q);
    CHECK(a.shape() == Shape{2, 10});
    CHECK(max_abs(a - b) < 1e-10);
    out[p] = a;
  }
  CHECK(max_abs(out[1] - out[2]) > 1e-6);  // the pool is applied
  CHECK_THROWS_WITH(lie::AffConvNet(lie::AffConvNetOptions{.lift_pool = 0}),
                    Catch::Contains("lift_pool") && Catch::Contains("got 0"));
}
