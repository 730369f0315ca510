// The fused double-backward paths that Hessian-vector products run (layer_norm_backward and its
// derivatives, gelu_double_backward, the small-plane depthwise kernels), checked against
// finite differences (float64 gradcheck / gradgradcheck), against the same functions written
// from elementwise primitives (the "composite" path: mean, rsqrt, erf, ...), and, on a small
// ConvNeXt, tools::Hessian products against central differences of the gradient.
#include <kern/models/convnext.hpp>
#include <kern/tools/hessian.hpp>

#include <cmath>
#include <map>

#include "gradcheck.hpp"

using namespace kern;
namespace tools = kern::tools;

namespace {

const DType f64 = DType::Float64;

// LayerNorm over the last dim from primitives only (no fused kernel anywhere).
Tensor composite_layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  Tensor xc = x - mean(x, {-1}, true);
  Tensor y = xc * rsqrt(mean(xc * xc, {-1}, true) + eps);
  if (w.defined()) y = y * w;
  if (b.defined()) y = y + b;
  return y;
}

Tensor composite_gelu(const Tensor& x) { return x * 0.5 * (erf(x * M_SQRT1_2) + 1.0); }

// H v of f at xs, by double backward: d/dxs <grad f(xs), v>.
std::vector<Tensor> hvp_of(const testing::Fn& f, const std::vector<Tensor>& xs, const std::vector<Tensor>& v) {
  return kern::hvp(f, xs, v).hvp;
}

double rel_diff(const Tensor& a, const Tensor& b) {
  return max_abs_diff(a, b) / std::max(1e-300, max(abs(b)).item());
}

}  // namespace

TEST_CASE("layer_norm_backward: gradients and second derivatives by finite differences", "[hvp][norm][gradgradcheck]") {
  Generator gen(31);
  Tensor x = randn({3, 2, 5}, f64, &gen), g = randn({3, 2, 5}, f64, &gen), w = randn({5}, f64, &gen);
  // d/d(g, x, w) of the input gradient: runs the fused double backward (no graph recorded).
  testing::Fn with_w = [](const std::vector<Tensor>& t) { return layer_norm_backward(t[0], t[1], {5}, t[2], 1e-3); };
  KERN_GRADCHECK(with_w, {g, x, w});
  // One order more: the double backward recorded in differentiable ops.
  KERN_GRADGRADCHECK(with_w, {g, x, w});
  testing::Fn no_w = [](const std::vector<Tensor>& t) { return layer_norm_backward(t[0], t[1], {2, 5}, {}, 1e-3); };
  KERN_GRADCHECK(no_w, {g, x});
  KERN_GRADGRADCHECK(no_w, {g, x});
}

TEST_CASE("layer_norm: HVP through the fused backward equals the composite LayerNorm's", "[hvp][norm]") {
  Generator gen(32);
  Tensor x = randn({6, 7}, f64, &gen), w = randn({7}, f64, &gen), b = randn({7}, f64, &gen);
  Tensor t = randn({6, 7}, f64, &gen);  // makes the loss non-trivial in every input
  auto loss = [&](bool fused) {
    return [&, fused](const std::vector<Tensor>& p) {
      Tensor y = fused ? layer_norm(p[0], {7}, p[1], p[2], 1e-5) : composite_layer_norm(p[0], p[1], p[2], 1e-5);
      return sum(tanh(y) * t);
    };
  };
  std::vector<Tensor> v{randn({6, 7}, f64, &gen), randn({7}, f64, &gen), randn({7}, f64, &gen)};
  auto fused = hvp_of(loss(true), {x, w, b}, v);
  auto composite = hvp_of(loss(false), {x, w, b}, v);
  for (size_t i = 0; i < 3; ++i) {
    INFO("block " << i);
    CHECK(rel_diff(fused[i], composite[i]) < 1e-12);
  }
  // The layer_norm gradgradcheck of the op itself (existing [norm] test) checks finite
  // differences; here also the forward values agree.
  CHECK(rel_diff(layer_norm(x, {7}, w, b, 1e-5), composite_layer_norm(x, w, b, 1e-5)) < 1e-13);
}

TEST_CASE("gelu_double_backward: finite differences and the composite GELU's HVP", "[hvp][activation][gradgradcheck]") {
  Generator gen(33);
  Tensor u = randn({4, 6}, f64, &gen), g = randn({4, 6}, f64, &gen), x = randn({4, 6}, f64, &gen) * 2.0;
  testing::Fn f = [](const std::vector<Tensor>& t) { return gelu_double_backward(t[0], t[1], t[2]); };
  KERN_GRADCHECK(f, {u, g, x});
  KERN_GRADGRADCHECK(f, {u, g, x});
  // gelu's second and third derivatives through the fused ops vs the erf composite.
  testing::Fn gb = [](const std::vector<Tensor>& t) { return gelu_backward(t[0], t[1]); };
  KERN_GRADGRADCHECK(gb, {g, x});
  Tensor t = randn({4, 6}, f64, &gen);
  auto loss = [&](bool fused) {
    return [&, fused](const std::vector<Tensor>& p) {
      return sum(square(fused ? gelu(p[0]) : composite_gelu(p[0])) * t);
    };
  };
  Tensor v = randn({4, 6}, f64, &gen);
  CHECK(rel_diff(hvp_of(loss(true), {x}, {v})[0], hvp_of(loss(false), {x}, {v})[0]) < 1e-12);
}

// float32 runs a polynomial exp (framework/ops/elementwise.cpp, exp_approx) so that the loop
// vectorizes: against the float64 op on x over [-14, 14] (where exp(-x^2/2) spans 1 .. 1e-43,
// through the clamp at the normal range) and special values, every element within 4 float32
// ulp of the terms' scale (relative 5e-7, see below) or 1e-33 absolute (the clamp); NaN stays NaN.
TEST_CASE("gelu_double_backward in float32 agrees with float64", "[hvp][activation]") {
  Tensor x64 = arange(-14.0, 14.0, 1.4e-4, f64);
  const int64_t n = x64.numel();
  Generator gen(5);
  Tensor u64 = randn({n}, f64, &gen), g64 = randn({n}, f64, &gen);
  Tensor want = gelu_double_backward(u64, g64, x64);
  Tensor got = gelu_double_backward(u64.to(DType::Float32), g64.to(DType::Float32), x64.to(DType::Float32));
  // the float32 inputs are rounded: compare against float64 evaluated at the rounded inputs
  Tensor want_r = gelu_double_backward(u64.to(DType::Float32).to(f64), g64.to(DType::Float32).to(f64),
                                       x64.to(DType::Float32).to(f64));
  // Relative to the terms' scale |u g phi(x)| (2 + x^2) (the float32 difference 2 - x^2 alone
  // cancels near x = sqrt(2), with any exp) times the argument's conditioning (1 + x^2 / 2).
  Tensor xr = x64.to(DType::Float32).to(f64);
  // (1 + x^2 / 2): the float32 product x^2 / 2 has a relative error of an ulp, which exp turns
  // into an absolute error of the argument times x^2 / 2 (in libm's exp as well).
  Tensor scale = abs(u64.to(DType::Float32).to(f64) * g64.to(DType::Float32).to(f64)) *
                 exp(square(xr) * -0.5) * 0.3989422804014327 * (square(xr) + 2.0) * (square(xr) * 0.5 + 1.0);
  auto w = want_r.to_vector<double>(), gv = got.to(f64).to_vector<double>(), sc = scale.to_vector<double>();
  double worst = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double err = std::abs(gv[i] - w[i]);
    if (err > 1e-33) worst = std::max(worst, err / sc[i]);
  }
  CHECK(worst < 5e-7);

  CHECK(rel_diff(got.to(f64), want) < 1e-6);
  Tensor special = tensor({0.0, 1.4142135, -1.4142135, 40.0, std::nan("")}, DType::Float32);
  auto s = gelu_double_backward(ones_like(special), ones_like(special), special).to_vector<float>();
  CHECK(s[0] == Approx(2 * 0.3989422804).epsilon(1e-6));
  CHECK(std::abs(s[1]) < 1e-6);
  CHECK(std::abs(s[3]) < 1e-30);
  CHECK(std::isnan(s[4]));
}

TEST_CASE("gelu_double_backward and layer_norm_backward reject bad input", "[hvp][errors]") {
  Tensor a = zeros({2, 3}, f64), b = zeros({3, 2}, f64);
  CHECK_THROWS_WITH(gelu_double_backward(a, b, a), Catch::Contains("gelu_double_backward") && Catch::Contains("[3, 2]"));
  CHECK_THROWS_WITH(gelu_double_backward(a, a.to(DType::Float32), a), Catch::Contains("gelu_double_backward"));
  CHECK_THROWS_WITH(layer_norm_backward(a, b, {2}), Catch::Contains("layer_norm_backward") && Catch::Contains("[2, 3]"));
  CHECK_THROWS_WITH(layer_norm_backward(a, a, {2}), Catch::Contains("layer_norm_backward") &&
                                                        Catch::Contains("normalized_shape"));
  CHECK_THROWS_WITH(layer_norm_backward(a, a, {3}, zeros({2}, f64)), Catch::Contains("weight"));
}

namespace {

// A ConvNeXt with every feature of the zoo net at toy size: two stages (a downsample), 7x7
// depthwise convs on 4x4 and 2x2 planes, layer scale 1, NHWC LayerNorm + Linear Mlp.
models::ConvNeXtOptions small_convnext() {
  return {.depths = {1, 1}, .dims = {4, 8}, .num_classes = 3, .in_chans = 1, .kernel_size = 7,
          .ls_init_value = 1.0, .patch_size = 2};
}

// The same network written out from the parameters by name, with the composite LayerNorm and
// GELU above (convolutions and linears are primitives).
Tensor composite_convnext(const std::map<std::string, Tensor>& p, const Tensor& x) {
  auto P = [&](const std::string& n) { return p.at(n); };
  auto ln2d = [&](const Tensor& t, const std::string& n) {
    return composite_layer_norm(t.permute({0, 2, 3, 1}), P(n + ".weight"), P(n + ".bias"), 1e-6).permute({0, 3, 1, 2});
  };
  auto conv = [&](const Tensor& t, const std::string& n, int64_t stride, int64_t pad, int64_t groups) {
    Conv2dParams cp;
    cp.stride = {stride, stride};
    cp.padding = {pad, pad};
    cp.groups = groups;
    return conv2d(t, P(n + ".weight"), P(n + ".bias"), cp);
  };
  Tensor h = ln2d(conv(x, "stem.0", 2, 0, 1), "stem.1");
  const int64_t dims[2] = {4, 8};
  for (int s = 0; s < 2; ++s) {
    const std::string st = "stages." + std::to_string(s);
    if (s > 0) h = conv(ln2d(h, st + ".downsample.0"), st + ".downsample.1", 2, 0, 1);
    const std::string b = st + ".blocks.0";
    Tensor r = conv(h, b + ".conv_dw", 1, 3, dims[s]).permute({0, 2, 3, 1});
    r = composite_layer_norm(r, P(b + ".norm.weight"), P(b + ".norm.bias"), 1e-6);
    r = linear(composite_gelu(linear(r, P(b + ".mlp.fc1.weight"), P(b + ".mlp.fc1.bias"))),
               P(b + ".mlp.fc2.weight"), P(b + ".mlp.fc2.bias"));
    h = r.permute({0, 3, 1, 2}) * P(b + ".gamma").reshape({1, -1, 1, 1}) + h;
  }
  Tensor pooled = mean(h, {2, 3}, true);
  Tensor f = composite_layer_norm(pooled.permute({0, 2, 3, 1}), P("head.norm.weight"), P("head.norm.bias"), 1e-6);
  return linear(f.reshape({x.size(0), -1}), P("head.fc.weight"), P("head.fc.bias"));
}

}  // namespace

TEST_CASE("Hessian of a small ConvNeXt: composite path and finite differences of the gradient", "[hvp][hessian]") {
  manual_seed(34);
  models::ConvNeXt model(small_convnext());
  model.to(f64);
  model.eval();
  Generator gen(35);
  Tensor x = randn({3, 1, 8, 8}, f64, &gen), y = randint(0, 3, {3}, &gen);
  {
    // Random non-trivial norms and biases (init leaves them 1 / 0).
    NoGradGuard ng;
    for (auto& p : model.parameters()) p.copy_(p + randn(p.shape(), f64, &gen) * 0.1);
  }
  tools::Hessian H(model, x, y, tools::mean_cross_entropy);
  auto params = H.params();
  Tensor v = randn({H.size()}, f64, &gen);
  Tensor hv = H.apply(v);

  // (a) The composite network's HVP (no fused norm / GELU backward anywhere).
  auto named = model.named_parameters();
  REQUIRE(named.size() == params.size());
  testing::Fn composite_loss = [&](const std::vector<Tensor>& ps) {
    std::map<std::string, Tensor> m;
    for (size_t i = 0; i < ps.size(); ++i) m[named[i].first] = ps[i];
    return tools::mean_cross_entropy(composite_convnext(m, x), y);
  };
  CHECK(std::abs(composite_loss(params).item() - H.loss().item()) < 1e-13);
  Tensor hv_composite = tools::flatten_vectors(hvp_of(composite_loss, params, tools::unflatten_vector(v, params)));
  CHECK(rel_diff(hv, hv_composite) < 1e-11);

  // (b) Central differences of the model's gradient along v.
  auto gradient_at = [&](double t) {
    std::vector<Tensor> saved;
    {
      NoGradGuard ng;
      auto vs = tools::unflatten_vector(v, params);
      for (size_t i = 0; i < params.size(); ++i) {
        saved.push_back(params[i].clone());
        params[i].copy_(params[i] + vs[i] * t);
      }
    }
    Tensor loss = tools::mean_cross_entropy(model(x), y);
    Tensor g = tools::flatten_vectors(grad({loss}, params));
    NoGradGuard ng;
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
    return g;
  };
  const double eps = 1e-5;
  Tensor fd = (gradient_at(eps) - gradient_at(-eps)) / (2 * eps);
  INFO("max |Hv - fd| = " << max_abs_diff(hv, fd) << ", max |Hv| = " << max(abs(hv)).item());
  CHECK(rel_diff(hv, fd) < 1e-6);
}

TEST_CASE("Hessian of a small ConvNeXt in float32 on the fast kernels matches float64", "[hvp][hessian][backend]") {
  // The float32 path runs the fast kernels (small-plane depthwise, oneDNN GELU backward and
  // layer norm); the float64 one the reference loops.
  manual_seed(36);
  models::ConvNeXt model(small_convnext());
  model.eval();
  Generator gen(37);
  Tensor x = randn({4, 1, 8, 8}, DType::Float32, &gen), y = randint(0, 3, {4}, &gen);
  tools::Hessian h32(model, x, y, tools::mean_cross_entropy);
  Tensor v = randn({h32.size()}, DType::Float32, &gen);
  Tensor hv32 = h32.apply(v);
  model.to(f64);
  tools::Hessian h64(model, x.to(f64), y, tools::mean_cross_entropy);
  Tensor hv64 = h64.apply(v.to(f64));
  INFO("max |Hv32 - Hv64| = " << max_abs_diff(hv32.to(f64), hv64) << ", max |Hv64| = " << max(abs(hv64)).item());
  CHECK(rel_diff(hv32.to(f64), hv64) < 1e-3);
}
