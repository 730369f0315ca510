// Equivariant layers (models/equivariant.cpp) and the flip / rot90 ops they are built on:
// flip / rot90 against index formulas, the point-group action against coordinate formulas,
// exact (float64) equivariance of the lifting conv, group conv, group batch norm and group
// pooling for every element of p4 and p4m, invariance of P4CNN / P4MCNN, gradient checks,
// a loop-formula reference of the p4 group convolution, and errors.
#include "gradcheck.hpp"

#include <catch2/catch.hpp>
#include <kern/kern.hpp>
#include <kern/models/equivariant.hpp>

#include <array>
#include <cmath>
#include <string>
#include <vector>

using namespace kern;
namespace models = kern::models;
using models::GroupConvOptions;
using models::PlaneGroup;

namespace {

constexpr DType F64 = DType::Float64;

// Row-major linear index of `idx` in `shape`.
int64_t lin(const Shape& shape, const std::vector<int64_t>& idx) {
  int64_t l = 0;
  for (size_t d = 0; d < shape.size(); ++d) l = l * shape[d] + idx[d];
  return l;
}

// Calls f(idx) for every multi-index of `shape`, in row-major order.
template <class F>
void for_each_index(const Shape& shape, F&& f) {
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t e = 0; e < shape.numel(); ++e) {
    f(idx);
    for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

// The group element g = 4 m + r acting on centred (row, col) offsets, written out from the
// definition in equivariant.hpp: R (a, b) = (-b, a), M (a, b) = (a, -b), g = R^r M^m.
std::array<int64_t, 2> act(int64_t g, std::array<int64_t, 2> u) {
  if (g >= 4) u = {u[0], -u[1]};
  for (int64_t i = 0; i < g % 4; ++i) u = {-u[1], u[0]};
  return u;
}
// g^-1 u, by brute force over the inverse's definition (act(g, v) == u).
std::array<int64_t, 2> act_inv(int64_t g, std::array<int64_t, 2> u) {
  // R^-1 (a, b) = (b, -a); g^-1 = M^m R^-r.
  for (int64_t i = 0; i < g % 4; ++i) u = {u[1], -u[0]};
  if (g >= 4) u = {u[0], -u[1]};
  return u;
}

template <class M>
std::shared_ptr<M> f64(std::shared_ptr<M> m) {
  m->to(F64);
  return m;
}

// A random bias so the bias path is part of the equivariance checks.
void randomize_bias(Tensor b, Generator& gen) {
  if (!b.defined()) return;
  NoGradGuard ng;
  b.copy_(randn(b.shape(), b.dtype(), &gen));
}

}  // namespace

TEST_CASE("flip matches the index formula", "[models][equivariant]") {
  Generator gen(1);
  const Tensor x = randn({2, 3, 4, 5}, F64, &gen);
  for (bool permuted : {false, true}) {
    // A non-contiguous view with the same logical shape.
    const Tensor xv = permuted ? randn({5, 2, 4, 3}, F64, &gen).permute({1, 3, 2, 0}) : x;
    const Shape s = xv.shape();
    const auto v = xv.contiguous().to_vector<double>();
    for (const Dims& dims : std::vector<Dims>{{}, {0}, {1, 3}, {-1, 0, 2}, {0, 1, 2, 3}}) {
      std::vector<bool> fl(4, false);
      for (int64_t d : dims) fl[(d + 4) % 4] = true;
      const Tensor y = flip(xv, dims);
      REQUIRE(y.shape() == s);
      REQUIRE(y.is_contiguous());
      const auto out = y.to_vector<double>();
      for_each_index(s, [&](const std::vector<int64_t>& i) {
        std::vector<int64_t> src = i;
        for (int d = 0; d < 4; ++d)
          if (fl[d]) src[d] = s[d] - 1 - i[d];
        REQUIRE(out[lin(s, i)] == v[lin(s, src)]);
      });
    }
  }
  // Integer tensors too.
  const Tensor n = arange(6).reshape({2, 3});
  CHECK(flip(n, {1}).to_vector<int64_t>() == std::vector<int64_t>{2, 1, 0, 5, 4, 3});
}

TEST_CASE("rot90 matches the index formula and torch's examples", "[models][equivariant]") {
  // torch.rot90(torch.tensor([[1, 2], [3, 4]]), 1, [0, 1]) == [[2, 4], [1, 3]]
  const Tensor a = tensor({1, 2, 3, 4}, F64).reshape({2, 2});
  CHECK(rot90(a, 1, {0, 1}).to_vector<double>() == std::vector<double>{2, 4, 1, 3});
  CHECK(rot90(a, -1, {0, 1}).to_vector<double>() == std::vector<double>{3, 1, 4, 2});
  CHECK(rot90(a, 1, {1, 0}).to_vector<double>() == std::vector<double>{3, 1, 4, 2});

  Generator gen(2);
  const Tensor x = randn({2, 3, 4, 5}, F64, &gen);
  const Shape s = x.shape();
  const auto v = x.to_vector<double>();
  for (const Dims& dims : std::vector<Dims>{{-2, -1}, {1, 3}, {3, 0}}) {
    const int64_t d0 = (dims[0] + 4) % 4, d1 = (dims[1] + 4) % 4;
    const int64_t n0 = s[d0], n1 = s[d1];
    for (int64_t k = -5; k <= 5; ++k) {
      const int64_t kk = ((k % 4) + 4) % 4;
      const Tensor y = rot90(x, k, dims);
      Shape want = s;
      if (kk % 2) std::swap(want[d0], want[d1]);
      REQUIRE(y.shape() == want);
      const auto out = y.to_vector<double>();
      for_each_index(want, [&](const std::vector<int64_t>& i) {
        std::vector<int64_t> src = i;
        const int64_t p = i[d0], q = i[d1];
        // Rotating from d0 towards d1, k times (torch.rot90).
        if (kk == 1) src[d0] = q, src[d1] = n1 - 1 - p;
        if (kk == 2) src[d0] = n0 - 1 - p, src[d1] = n1 - 1 - q;
        if (kk == 3) src[d0] = n0 - 1 - q, src[d1] = p;
        REQUIRE(out[lin(want, i)] == v[lin(s, src)]);
      });
    }
  }
  // rot90 composes: four quarter turns are the identity, and -k undoes k.
  CHECK(max_abs_diff(rot90(rot90(x, 3, {1, 3}), -3, {1, 3}), x) == 0.0);
  CHECK(max_abs_diff(rot90(rot90(rot90(rot90(x)))), x) == 0.0);
}

TEST_CASE("flip and rot90 gradients are flips and inverse rotations", "[models][equivariant]") {
  Generator gen(3);
  Tensor x = randn({3, 4}, F64, &gen).requires_grad_();
  const Tensor v = randn({4, 3}, F64, &gen);
  auto g = grad({rot90(x, 1)}, {x}, {v});
  CHECK(max_abs_diff(g[0], rot90(v, -1)) == 0.0);
  const Tensor w = randn({3, 4}, F64, &gen);
  g = grad({flip(x, {0, 1})}, {x}, {w});
  CHECK(max_abs_diff(g[0], flip(w, {0, 1})) == 0.0);
}

TEST_CASE("flip and rot90 errors name the op and the bad dim", "[models][equivariant][errors]") {
  CHECK_THROWS_AS(flip(zeros({2, 3}), {5}), Error);
  CHECK_THROWS_WITH(flip(zeros({2, 3}), {-3}), Catch::Contains("flip: dim -3"));
  CHECK_THROWS_WITH(flip(zeros({2, 3}), {0, 0}), Catch::Contains("flip: dim 0 appears more than once"));
  CHECK_THROWS_WITH(rot90(zeros({2, 3}), 1, {0, 3}), Catch::Contains("rot90: dim 3"));
  CHECK_THROWS_WITH(rot90(zeros({2, 3}), 1, {1, 1}), Catch::Contains("rot90: dims [1, 1]"));
  CHECK_THROWS_WITH(rot90(zeros({2, 3}), 1, {0, 1, 0}), Catch::Contains("rot90: dims must name exactly 2"));
  CHECK_THROWS_WITH(rot90(zeros({4}), 1, {0, 0}), Catch::Contains("rot90: input must have at least 2 dims"));
}

TEST_CASE("the point group acts on images as its coordinate formula", "[models][equivariant]") {
  Generator gen(4);
  const int64_t n = 5, c = 2;  // centre (2, 2)
  const Tensor x = randn({3, n, n}, F64, &gen);
  const auto v = x.to_vector<double>();
  for (const char* name : {"p4", "p4m"}) {
    const PlaneGroup G(name);
    CHECK(G.order() == (std::string(name) == "p4" ? 4 : 8));
    for (int64_t g = 0; g < G.order(); ++g) {
      INFO(name << " g = " << g);
      // (T_g x)(u) = x(g^-1 u) in centred coordinates.
      const auto out = G.transform_image(x, g).to_vector<double>();
      for_each_index({3, n, n}, [&](const std::vector<int64_t>& i) {
        const auto src = act_inv(g, {i[1] - c, i[2] - c});
        REQUIRE(out[lin({3, n, n}, i)] == v[lin({3, n, n}, {i[0], src[0] + c, src[1] + c})]);
      });
      // Group axioms, against the action: T_a T_b = T_(ab), g g^-1 = e.
      CHECK(G.mul(g, G.inv(g)) == 0);
      CHECK(G.mul(G.inv(g), g) == 0);
      for (int64_t b = 0; b < G.order(); ++b) {
        CHECK(max_abs_diff(G.transform_image(G.transform_image(x, b), g),
                           G.transform_image(x, G.mul(g, b))) == 0.0);
        const auto u = act(g, act(b, {1, 2}));
        CHECK(u == act(G.mul(g, b), {1, 2}));
      }
    }
  }
}

TEST_CASE("lifting and group convolutions are exactly equivariant", "[models][equivariant]") {
  Generator gen(5);
  for (const char* name : {"p4", "p4m"}) {
    const PlaneGroup G(name);
    for (int64_t pad : {1, 0}) {  // 'same' on 9x9, and valid (9x9 -> 7x7)
      INFO(name << " padding " << pad);
      auto lift = f64(std::make_shared<models::LiftingConv2d>(GroupConvOptions(3, 4, 3).group(name).padding(pad)));
      auto gconv = f64(std::make_shared<models::GroupConv2d>(GroupConvOptions(4, 2, 3).group(name).padding(pad)));
      randomize_bias(lift->bias.tensor(), gen);
      randomize_bias(gconv->bias.tensor(), gen);
      const Tensor x = randn({2, 3, 9, 9}, F64, &gen);
      const Tensor f = randn({2, 4, G.order(), 9, 9}, F64, &gen);
      const Tensor lx = (*lift)(x), gf = (*gconv)(f);
      REQUIRE(lx.shape() == Shape{2, 4, G.order(), 9 - 2 + 2 * pad, 9 - 2 + 2 * pad});
      REQUIRE(gf.shape() == Shape{2, 2, G.order(), 9 - 2 + 2 * pad, 9 - 2 + 2 * pad});
      for (int64_t g = 0; g < G.order(); ++g) {
        INFO("g = " << g);
        CHECK(max_abs_diff((*lift)(G.transform_image(x, g)), G.transform_features(lx, g)) < 1e-10);
        CHECK(max_abs_diff((*gconv)(G.transform_features(f, g)), G.transform_features(gf, g)) < 1e-10);
      }
      // Not vacuous: the output does change under the group (it is equivariant, not invariant).
      CHECK(max_abs_diff((*gconv)(G.transform_features(f, 1)), gf) > 1e-3);
    }
  }
}

TEST_CASE("group batch norm and group pooling commute with the group", "[models][equivariant]") {
  Generator gen(6);
  for (const char* name : {"p4", "p4m"}) {
    const PlaneGroup G(name);
    INFO(name);
    auto bn = f64(std::make_shared<models::GroupBatchNorm>(3, name));
    {
      NoGradGuard ng;
      bn->weight.tensor().copy_(randn({3}, F64, &gen));
      bn->bias.tensor().copy_(randn({3}, F64, &gen));
    }
    const Tensor f = randn({2, 3, G.order(), 5, 5}, F64, &gen) * 2.0 + 1.0;
    const Tensor y = (*bn)(f);
    // Statistics per channel over N, |G|, H, W (biased variance in training mode).
    const Tensor mu = f.mean({0, 2, 3, 4}, true);
    const Tensor var = ((f - mu) * (f - mu)).mean({0, 2, 3, 4}, true);
    const Tensor want = (f - mu) / (var + 1e-5).sqrt() * bn->weight.tensor().detach().reshape({1, 3, 1, 1, 1}) +
                        bn->bias.tensor().detach().reshape({1, 3, 1, 1, 1});
    CHECK(max_abs_diff(y, want) < 1e-12);
    for (int64_t g = 0; g < G.order(); ++g) {
      INFO("g = " << g);
      CHECK(max_abs_diff((*bn)(G.transform_features(f, g)), G.transform_features(y, g)) < 1e-10);
      for (const char* mode : {"max", "mean"}) {
        CHECK(max_abs_diff(models::group_pool(G.transform_features(f, g), mode),
                           G.transform_image(models::group_pool(f, mode), g)) < 1e-12);
      }
    }
    // Eval mode (running statistics) as well.
    bn->eval();
    const Tensor ye = (*bn)(f);
    for (int64_t g = 0; g < G.order(); ++g)
      CHECK(max_abs_diff((*bn)(G.transform_features(f, g)), G.transform_features(ye, g)) < 1e-10);
  }
  // group_pool semantics.
  const Tensor f = randn({1, 2, 4, 3, 3}, F64, &gen);
  CHECK(max_abs_diff(models::group_pool(f, "max"), max(f, 2).values) == 0.0);
  CHECK(max_abs_diff(models::group_pool(f, "mean"), f.sum({2}) / 4.0) < 1e-15);
}

TEST_CASE("P4CNN and P4MCNN are invariant to the point group", "[models][equivariant]") {
  Generator gen(7);
  struct Case {
    models::P4CNNOptions o;
    int64_t size;
  };
  std::vector<Case> cases = {
      {{.group = "p4", .in_chans = 1, .num_classes = 10}, 9},  // the default 7 x 10-channel P4CNN
      {{.group = "p4m", .in_chans = 2, .num_classes = 5, .channels = 7}, 11},
      // A 2x2 spatial max pool after layer 1 on an even size stays exactly equivariant.
      {{.group = "p4", .in_chans = 1, .num_classes = 3, .channels = 4, .num_layers = 3,
        .group_pool = "mean", .max_pool_after = 1},
       10},
  };
  for (auto& [o, size] : cases) {
    INFO(o.group << " " << size << "x" << size);
    auto model = f64(std::make_shared<models::P4CNN>(o));
    const PlaneGroup G(o.group);
    const Tensor x = randn({2, o.in_chans, size, size}, F64, &gen);
    for (bool training : {true, false}) {
      INFO("training " << training);
      model->train(training);
      const Tensor y = (*model)(x);
      REQUIRE(y.shape() == Shape{2, o.num_classes});
      for (int64_t g = 1; g < G.order(); ++g) {
        INFO("g = " << g);
        CHECK(max_abs_diff((*model)(G.transform_image(x, g)), y) < 1e-10);
      }
      // Not vacuous: another input gives other outputs, and p4 nets are not invariant to the
      // transpose (a diagonal mirror, in p4m but not in p4).
      CHECK(max_abs_diff((*model)(randn(x.shape(), F64, &gen)), y) > 1e-4);
      if (o.group == "p4") CHECK(max_abs_diff((*model)(x.transpose(2, 3)), y) > 1e-6);
    }
  }
}

TEST_CASE("lifting and group convolutions pass gradcheck", "[models][equivariant][gradcheck]") {
  Generator gen(8);
  auto lift = f64(std::make_shared<models::LiftingConv2d>(GroupConvOptions(2, 2, 3).group("p4m").padding(1)));
  testing::Fn lf = [&](const std::vector<Tensor>& in) {
    return nn::functional_call(*lift, nn::StateDict{{"weight", in[1]}, {"bias", in[2]}}, in[0]);
  };
  KERN_GRADCHECK(lf, (std::vector<Tensor>{randn({1, 2, 4, 4}, F64, &gen), randn({2, 2, 3, 3}, F64, &gen),
                                         randn({2}, F64, &gen)}));

  auto gconv = f64(std::make_shared<models::GroupConv2d>(GroupConvOptions(2, 2, 3).group("p4").padding(1)));
  testing::Fn gf = [&](const std::vector<Tensor>& in) {
    return nn::functional_call(*gconv, nn::StateDict{{"weight", in[1]}, {"bias", in[2]}}, in[0]);
  };
  const std::vector<Tensor> gin{randn({1, 2, 4, 4, 4}, F64, &gen), randn({2, 2, 4, 3, 3}, F64, &gen),
                                randn({2}, F64, &gen)};
  KERN_GRADCHECK(gf, gin);
  // Second order (what Hessian tools reach): exact through flip / rot90 / index_select.
  KERN_GRADGRADCHECK(gf, gin);
}

TEST_CASE("p4 group convolution matches its loop formula", "[models][equivariant]") {
  // out[n, o, r, i, j] = bias[o] + sum_{c, s, u} f[n, c, s, (i, j) + u] * w[o, c, s - r, R^-r u]
  // (Cohen & Welling eq. 10 with g = (r, (i, j)): psi(g^-1 h) for h = (s, y), u = y - (i, j)),
  // and the lifting layer: out[n, o, g, i, j] = bias[o] + sum_{c, u} x[n, c, (i, j) + u] w[o, c, g^-1 u].
  Generator gen(9);
  const int64_t C = 2, O = 2, H = 5, K = 3, P = 1;
  auto gconv = f64(std::make_shared<models::GroupConv2d>(GroupConvOptions(C, O, K).group("p4").padding(P)));
  randomize_bias(gconv->bias.tensor(), gen);
  const Tensor f = randn({1, C, 4, H, H}, F64, &gen);
  const auto fv = f.to_vector<double>();
  const auto wv = gconv->weight.tensor().detach().to_vector<double>();
  const auto bv = gconv->bias.tensor().detach().to_vector<double>();
  const auto out = (*gconv)(f).to_vector<double>();
  const Shape fs{1, C, 4, H, H}, ws{O, C, 4, K, K}, os{1, O, 4, H, H};
  const int64_t c0 = (K - 1) / 2;
  double worst = 0;
  for_each_index(os, [&](const std::vector<int64_t>& i) {
    const int64_t o = i[1], r = i[2];
    double want = bv[o];
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < 4; ++s)
        for (int64_t a = -c0; a <= c0; ++a)
          for (int64_t b = -c0; b <= c0; ++b) {
            const int64_t y0 = i[3] + a, y1 = i[4] + b;
            if (y0 < 0 || y0 >= H || y1 < 0 || y1 >= H) continue;  // zero padding
            const auto q = act_inv(r, {a, b});
            want += fv[lin(fs, {0, c, s, y0, y1})] * wv[lin(ws, {o, c, ((s - r) % 4 + 4) % 4, q[0] + c0, q[1] + c0})];
          }
    worst = std::max(worst, std::abs(out[lin(os, i)] - want));
  });
  CHECK(worst < 1e-12);

  // The p4m lifting layer, with mirrors.
  auto lift = f64(std::make_shared<models::LiftingConv2d>(GroupConvOptions(C, O, K).group("p4m").padding(P)));
  randomize_bias(lift->bias.tensor(), gen);
  const Tensor x = randn({1, C, H, H}, F64, &gen);
  const auto xv = x.to_vector<double>();
  const auto lw = lift->weight.tensor().detach().to_vector<double>();
  const auto lb = lift->bias.tensor().detach().to_vector<double>();
  const auto lout = (*lift)(x).to_vector<double>();
  const Shape xs{1, C, H, H}, lws{O, C, K, K}, los{1, O, 8, H, H};
  worst = 0;
  for_each_index(los, [&](const std::vector<int64_t>& i) {
    const int64_t o = i[1], g = i[2];
    double want = lb[o];
    for (int64_t c = 0; c < C; ++c)
      for (int64_t a = -c0; a <= c0; ++a)
        for (int64_t b = -c0; b <= c0; ++b) {
          const int64_t y0 = i[3] + a, y1 = i[4] + b;
          if (y0 < 0 || y0 >= H || y1 < 0 || y1 >= H) continue;
          const auto q = act_inv(g, {a, b});
          want += xv[lin(xs, {0, c, y0, y1})] * lw[lin(lws, {o, c, q[0] + c0, q[1] + c0})];
        }
    worst = std::max(worst, std::abs(lout[lin(los, i)] - want));
  });
  CHECK(worst < 1e-12);
}

TEST_CASE("P4CNN registry names, parameters and training step", "[models][equivariant]") {
  REQUIRE(models::has_model("p4cnn"));
  REQUIRE(models::has_model("p4mcnn"));
  auto model = models::create_model("p4cnn", {.num_classes = 10, .in_chans = 1});
  // 1 lifting conv [10, 1, 3, 3], 6 group convs [10, 10, 4, 3, 3], 7 BNs (2 x 10), head 10x10 + 10.
  int64_t params = 0;
  for (const Tensor& p : model->parameters()) params += p.numel();
  CHECK(params == 90 + 6 * 3600 + 7 * 20 + 110);
  CHECK(model->get_parameter("blocks.0.conv.weight").shape() == Shape{10, 1, 3, 3});
  CHECK(model->get_parameter("blocks.6.conv.weight").shape() == Shape{10, 10, 4, 3, 3});
  CHECK(model->get_buffer("blocks.3.bn.running_var").shape() == Shape{10});
  CHECK(model->get_parameter("head.weight").shape() == Shape{10, 10});
  auto m2 = models::create_model("p4mcnn", {.num_classes = 4, .in_chans = 3});
  CHECK(m2->get_parameter("blocks.1.conv.weight").shape() == Shape{7, 7, 8, 3, 3});
  CHECK(m2->get_parameter("blocks.0.conv.weight").shape() == Shape{7, 3, 3, 3});

  // A few SGD steps on a tiny batch reduce the loss (gradients reach every parameter).
  Generator gen(10);
  manual_seed(10);
  auto small = std::make_shared<models::P4CNN>(
      models::P4CNNOptions{.group = "p4m", .num_classes = 4, .channels = 4, .num_layers = 3});
  const Tensor x = randn({4, 1, 7, 7}, DType::Float32, &gen);
  const Tensor y = from_vector<int64_t>({0, 1, 2, 3}, {4});
  auto loss_of = [&] { return cross_entropy((*small)(x), y); };
  const double first = loss_of().item();
  for (int step = 0; step < 3; ++step) {
    for (auto& p : small->parameters()) p.zero_grad();
    Tensor loss = loss_of();
    loss.backward();
    NoGradGuard ng;
    for (auto& p : small->parameters()) {
      REQUIRE(p.grad().defined());
      p.copy_(p - p.grad() * 0.1);
    }
  }
  CHECK(loss_of().item() < first);
}

TEST_CASE("equivariant layers reject bad options and inputs", "[models][equivariant][errors]") {
  using Catch::Contains;
  CHECK_THROWS_AS(PlaneGroup("p6"), Error);
  CHECK_THROWS_WITH(models::GroupConv2d(GroupConvOptions(2, 2, 3).group("p6")),
                    Contains("GroupConv2d: group: unknown group 'p6'"));
  CHECK_THROWS_WITH(models::LiftingConv2d(GroupConvOptions(2, 2, 3).group("P4")),
                    Contains("LiftingConv2d: group: unknown group 'P4'"));
  CHECK_THROWS_WITH(models::GroupConv2d(GroupConvOptions(2, 2, 4).padding(nn::kSame)),
                    Contains("padding 'same' needs an odd kernel_size"));
  CHECK_THROWS_WITH(models::LiftingConv2d(GroupConvOptions(0, 2, 3)), Contains("in_channels"));

  models::LiftingConv2d lift(GroupConvOptions(3, 2, 3).group("p4m"));
  CHECK_THROWS_WITH(lift(zeros({1, 3, 4, 5, 5})), Contains("LiftingConv2d(p4m): input must be 4-D"));
  CHECK_THROWS_WITH(lift(zeros({1, 2, 5, 5})), Contains("has 2 channels but in_channels = 3"));

  models::GroupConv2d gconv(GroupConvOptions(3, 2, 3).group("p4"));
  CHECK_THROWS_WITH(gconv(zeros({1, 3, 5, 5})), Contains("GroupConv2d(p4): input must be 5-D"));
  CHECK_THROWS_WITH(gconv(zeros({1, 3, 8, 5, 5})), Contains("group axis (dim 2) of size 8 but |G| = 4"));
  CHECK_THROWS_WITH(gconv(zeros({1, 2, 4, 5, 5})), Contains("has 2 channels but in_channels = 3"));

  models::GroupBatchNorm bn(3, "p4m");
  CHECK_THROWS_WITH(bn(zeros({2, 3, 4, 5, 5})), Contains("GroupBatchNorm(p4m): input [2, 3, 4, 5, 5] has group axis"));
  CHECK_THROWS_WITH(bn(zeros({2, 3, 5, 5})), Contains("GroupBatchNorm(p4m): input must be 5-D"));
  CHECK_THROWS_WITH(bn(zeros({2, 4, 8, 5, 5})), Contains("num_features = 3"));
  CHECK_THROWS_WITH(models::GroupBatchNorm(3, "z2"), Contains("GroupBatchNorm: group: unknown group 'z2'"));

  CHECK_THROWS_WITH(models::group_pool(zeros({1, 2, 4, 3, 3}), "sum"), Contains("group_pool: unknown mode 'sum'"));
  CHECK_THROWS_WITH(models::group_pool(zeros({1, 2, 3, 3}), "max"), Contains("group_pool: input must be 5-D"));
  CHECK_THROWS_WITH(models::GroupPool("p4")(zeros({1, 2, 8, 3, 3})), Contains("GroupPool(p4): input must be"));

  CHECK_THROWS_WITH(models::P4CNN({.group = "p8"}), Contains("P4CNNOptions.group: unknown group 'p8'"));
  CHECK_THROWS_WITH(models::P4CNN({.kernel_size = 4}), Contains("P4CNNOptions.kernel_size"));
  CHECK_THROWS_WITH(models::P4CNN({.group_pool = "min"}), Contains("P4CNNOptions.group_pool"));
  CHECK_THROWS_WITH(models::P4CNN({.num_layers = 2, .max_pool_after = 2}), Contains("P4CNNOptions.max_pool_after"));
  CHECK_THROWS_WITH(models::P4CNN()(zeros({1, 3, 9, 9})), Contains("P4CNN(p4): input must be [N, in_chans = 1"));
  CHECK_THROWS_WITH(models::create_model("p4cnn", {.drop_path_rate = 0.1}), Contains("p4cnn: drop_path_rate"));
}

// ---- sampled Lie-group convolution (LieConv)

namespace {

// 3x3 homogeneous matrices of SE(2), row-major.
using Mat3 = std::array<double, 9>;
Mat3 se2(double th, double x, double y) {
  return {std::cos(th), -std::sin(th), x, std::sin(th), std::cos(th), y, 0, 0, 1};
}
Mat3 mat_mul(const Mat3& a, const Mat3& b) {
  Mat3 c{};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 3; ++k) c[i * 3 + j] += a[i * 3 + k] * b[k * 3 + j];
  return c;
}
Mat3 se2_inverse(const Mat3& g) {  // (R, t)^-1 = (R^T, -R^T t)
  const double tx = -(g[0] * g[2] + g[3] * g[5]), ty = -(g[1] * g[2] + g[4] * g[5]);
  return {g[0], g[3], tx, g[1], g[4], ty, 0, 0, 1};
}
// exp of (theta, v) in se(2): rotation R(theta), translation V(theta) v.
Mat3 se2_exp(double th, double v0, double v1) {
  double a = 1, b = 0;
  if (th != 0) a = std::sin(th) / th, b = (1 - std::cos(th)) / th;
  return se2(th, a * v0 - b * v1, b * v0 + a * v1);
}

}  // namespace

TEST_CASE("LieConv lifting: pairs are log(u_i^-1 u_j)", "[models][equivariant][lieconv]") {
  Generator gen(11);
  const int64_t N = 3, K = 4;
  const double theta0 = 0.3;
  const Tensor pos = randn({1, N, 2}, F64, &gen);
  const Tensor feat = randn({1, N, 2}, F64, &gen);
  const auto p = pos.to_vector<double>();

  const auto t2 = models::lie_lift("T2", pos, feat);
  REQUIRE(t2.pairs.shape() == Shape{1, N, N, 2});
  const auto tv = t2.pairs.to_vector<double>();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j)
      for (int c = 0; c < 2; ++c) CHECK(tv[(i * N + j) * 2 + c] == p[j * 2 + c] - p[i * 2 + c]);

  const auto c = models::lie_lift("SE2", pos, feat, {}, K, theta0);
  const int64_t M = N * K;
  REQUIRE(c.pairs.shape() == Shape{1, M, M, 3});
  REQUIRE(c.values.shape() == Shape{1, M, 2});
  CHECK(max_abs_diff(c.values.reshape({N, K, 2}).select(1, 3), feat.reshape({N, 2})) == 0.0);
  const auto a = c.pairs.to_vector<double>();
  const double pi = 3.14159265358979323846;
  double worst = 0;
  for (int64_t u = 0; u < M; ++u)
    for (int64_t v = 0; v < M; ++v) {
      const int64_t i = u / K, k = u % K, j = v / K, l = v % K;
      const Mat3 U = se2(theta0 + 2 * pi * k / K, p[i * 2], p[i * 2 + 1]);
      const Mat3 V = se2(theta0 + 2 * pi * l / K, p[j * 2], p[j * 2 + 1]);
      const Mat3 want = mat_mul(se2_inverse(U), V);
      const double* e = &a[(u * M + v) * 3];
      CHECK(e[0] > -pi - 1e-12);
      CHECK(e[0] <= pi + 1e-12);
      const Mat3 got = se2_exp(e[0], e[1], e[2]);
      for (int q = 0; q < 9; ++q) worst = std::max(worst, std::abs(got[q] - want[q]));
    }
  CHECK(worst < 1e-12);
}

TEST_CASE("LieConvNet is invariant to translations and sampled rotations", "[models][equivariant][lieconv]") {
  Generator gen(12);
  const int64_t B = 2, N = 7, K = 4;
  const double pi = 3.14159265358979323846;
  Tensor pos = randn({B, N, 2}, F64, &gen);
  const Tensor feat = randn({B, N, 3}, F64, &gen);
  Tensor mask = ones({B, N}, F64);
  mask.narrow(0, 1, 1).narrow(1, N - 1, 1).fill_(0.0);  // batch 1: the last point is padding
  // A rigid motion: rotation by s quarter turns (s * 2 pi / K) about the origin, then a shift.
  auto move = [&](const Tensor& x, int64_t s, double cx, double cy) {
    const double ph = 2 * pi * static_cast<double>(s) / K;
    const Tensor R = from_vector<double>({std::cos(ph), std::sin(ph), -std::sin(ph), std::cos(ph)}, {2, 2});
    return matmul(x, R) + from_vector<double>({cx, cy}, {2});  // rows x -> R(ph) x + c
  };
  for (const char* group : {"SE2", "T2"}) {
    INFO(group);
    for (double radius : {1e300, 1.5}) {
      INFO("radius " << radius);
      manual_seed(13);
      auto net = f64(std::make_shared<models::LieConvNet>(models::LieConvNetOptions{
          .group = group, .in_chans = 3, .num_classes = 4, .channels = 8, .num_layers = 2,
          .lift_samples = K, .kernel_hidden = 8, .radius = radius}));
      const Tensor y = net->forward(pos, feat, mask);
      REQUIRE(y.shape() == Shape{B, 4});
      CHECK(max_abs_diff(net->forward(move(pos, 0, 0.7, -1.9), feat, mask), y) < 1e-10);
      if (std::string(group) == "SE2") {
        for (int64_t s = 1; s < K; ++s) CHECK(max_abs_diff(net->forward(move(pos, s, -0.4, 2.3), feat, mask), y) < 1e-10);
        // Layer level: the lifted outputs shift k -> k + s.
        auto conv = f64(std::make_shared<models::LieConv>(models::LieConvOptions(3, 5).radius(radius)));
        const auto c0 = conv->forward(models::lie_lift("SE2", pos, feat, mask, K));
        const auto c1 = conv->forward(models::lie_lift("SE2", move(pos, 1, 0.2, 0.1), feat, mask, K));
        const Tensor v0 = c0.values.reshape({B, N, K, 5}), v1 = c1.values.reshape({B, N, K, 5});
        CHECK(max_abs_diff(v1.narrow(2, 1, K - 1), v0.narrow(2, 0, K - 1)) < 1e-10);
        CHECK(max_abs_diff(v1.select(2, 0), v0.select(2, K - 1)) < 1e-10);
        CHECK(max_abs_diff(v1, v0) > 1e-6);  // equivariant, not invariant
      } else {
        // T2 is only translation-equivariant: a quarter turn changes its output.
        CHECK(max_abs_diff(net->forward(move(pos, 1, 0.0, 0.0), feat, mask), y) > 1e-6);
      }
      // Padding is ignored: garbage at masked points changes nothing.
      Tensor pos2 = pos.clone(), feat2 = feat.clone();
      pos2.narrow(0, 1, 1).narrow(1, N - 1, 1).fill_(40.0);
      feat2.narrow(0, 1, 1).narrow(1, N - 1, 1).fill_(-7.0);
      CHECK(max_abs_diff(net->forward(pos2, feat2, mask), y) < 1e-12);
    }
  }
}

TEST_CASE("LieConv passes gradcheck in features, positions and weights", "[models][equivariant][lieconv][gradcheck]") {
  Generator gen(14);
  auto conv = f64(std::make_shared<models::LieConv>(models::LieConvOptions(2, 2).kernel_hidden(3)));
  testing::Fn f = [&](const std::vector<Tensor>& in) {
    return nn::functional_call(*conv, nn::StateDict{{"linear.weight", in[2]}, {"weightnet.0.weight", in[3]}},
                               [&](nn::Module&) { return conv->forward(models::lie_lift("SE2", in[0], in[1], {}, 3)).values; });
  };
  KERN_GRADCHECK(f, (std::vector<Tensor>{randn({1, 3, 2}, F64, &gen), randn({1, 3, 2}, F64, &gen),
                                        randn({2, 6}, F64, &gen), randn({3, 3}, F64, &gen)}));
  // A float32 training step reaches every parameter of the net.
  models::LieConvNet net({.in_chans = 1, .num_classes = 3, .channels = 4, .num_layers = 2, .lift_samples = 2});
  Tensor loss = cross_entropy(net.forward(randn({2, 5, 2}, DType::Float32, &gen), randn({2, 5, 1}, DType::Float32, &gen)),
                              from_vector<int64_t>({0, 2}, {2}));
  loss.backward();
  for (auto& [name, p] : net.named_parameters()) {
    INFO(name);
    REQUIRE(p.grad().defined());
    CHECK(std::isfinite(p.grad().abs().sum().item()));
  }
}

TEST_CASE("LieConv rejects bad groups and shapes", "[models][equivariant][lieconv][errors]") {
  using Catch::Contains;
  const Tensor pos = zeros({1, 4, 2}), feat = zeros({1, 4, 3});
  CHECK_THROWS_WITH(models::lie_lift("SO3", pos, feat), Contains("lie_lift: group: unknown Lie group 'SO3'"));
  CHECK_THROWS_WITH(models::lie_lift("SE2", zeros({1, 4, 3}), feat), Contains("lie_lift: positions must be [B, N, 2]"));
  CHECK_THROWS_WITH(models::lie_lift("SE2", pos, zeros({1, 5, 3})), Contains("lie_lift: features must be [B = 1, N = 4, C]"));
  CHECK_THROWS_WITH(models::lie_lift("SE2", pos, feat, zeros({4})), Contains("lie_lift: mask must be [B = 1, N = 4]"));
  CHECK_THROWS_WITH(models::LieConv(models::LieConvOptions(3, 2).group("E3")), Contains("LieConvOptions.group"));
  models::LieConv conv(models::LieConvOptions(2, 2));
  CHECK_THROWS_WITH(conv.forward(models::lie_lift("SE2", pos, feat)), Contains("values [1, 16, 3] have 3 channels but in_channels = 2"));
  CHECK_THROWS_WITH(conv.forward(models::lie_lift("T2", pos, zeros({1, 4, 2}))), Contains("LieConv(SE2): pairs must be [B, M, M, 3]"));
  CHECK_THROWS_WITH(models::LieConvNet({.group = "Z2"}), Contains("LieConvNetOptions.group"));
  CHECK_THROWS_WITH(models::LieConvNet({.in_chans = 2}).forward(pos, feat), Contains("features must be [B, N, in_chans = 2]"));
}
