// conv2d and its two backward ops: hand-computed values, first and second derivatives by
// finite differences, oneDNN vs reference agreement, bad input, and an HVP through a CNN.
#include "backend_paths.hpp"
#include "gradcheck.hpp"

#include <chrono>

using namespace kern;

namespace {

const DType f64 = DType::Float64;

Tensor vals(const std::vector<double>& v, const Shape& shape, DType dt = f64) {
  return from_vector<double>(v, shape).to(dt);
}

Conv2dParams cp(std::array<int64_t, 2> stride, std::array<int64_t, 2> padding, std::array<int64_t, 2> dilation,
                int64_t groups) {
  Conv2dParams p;
  p.stride = stride;
  p.padding = padding;
  p.dilation = dilation;
  p.groups = groups;
  return p;
}

struct ConvCase {
  const char* name;
  Shape x, w;
  Conv2dParams p;
};

// Small float64 cases covering every feature of the op.
std::vector<ConvCase> grad_cases() {
  return {
      {"plain 3x3", {2, 3, 5, 5}, {4, 3, 3, 3}, {}},
      {"stride 2", {1, 2, 7, 7}, {3, 2, 3, 3}, cp({2, 2}, {0, 0}, {1, 1}, 1)},
      {"padding 1", {1, 2, 4, 5}, {3, 2, 3, 3}, cp({1, 1}, {1, 1}, {1, 1}, 1)},
      {"dilation 2", {1, 2, 7, 6}, {2, 2, 3, 2}, cp({1, 1}, {1, 0}, {2, 2}, 1)},
      {"groups 2", {1, 4, 5, 5}, {6, 2, 3, 3}, cp({1, 1}, {1, 1}, {1, 1}, 2)},
      {"depthwise", {2, 3, 5, 5}, {3, 1, 3, 3}, cp({1, 1}, {1, 1}, {1, 1}, 3)},
      {"depthwise x2 multiplier", {1, 2, 5, 5}, {4, 1, 3, 3}, cp({1, 1}, {1, 1}, {1, 1}, 2)},
      {"1x3 band", {1, 2, 4, 6}, {2, 2, 1, 3}, cp({1, 1}, {0, 1}, {1, 1}, 1)},
      {"3x1 band", {1, 2, 6, 4}, {2, 2, 3, 1}, cp({1, 1}, {1, 0}, {1, 1}, 1)},
      {"stride not dividing", {1, 2, 6, 8}, {2, 2, 3, 3}, cp({2, 2}, {0, 0}, {1, 1}, 1)},
      {"mixed params", {1, 2, 7, 9}, {2, 1, 2, 3}, cp({2, 3}, {1, 0}, {1, 2}, 2)},
  };
}

Tensor randn64(const Shape& s, Generator& gen) { return randn(s, f64, &gen); }

}  // namespace

TEST_CASE("conv2d matches hand-computed values", "[conv]") {
  for (auto backend : {Backend::Reference, Backend::Fast}) {
    BackendGuard bg(backend);
    for (DType dt : {DType::Float32, f64}) {
      INFO("backend " << (backend == Backend::Fast ? "fast" : "reference") << ", " << dtype_name(dt));
      // x = [[1 2 3] [4 5 6] [7 8 9]], w = [[1 2] [3 4]], stride 2, padding 1, bias 0.5:
      // y[0,0] = 4*1, y[0,1] = 3*2 + 4*3, y[1,0] = 2*4 + 4*7, y[1,1] = 5 + 2*6 + 3*8 + 4*9; each + 0.5.
      Tensor x = vals({1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 1, 3, 3}, dt);
      Tensor w = vals({1, 2, 3, 4}, {1, 1, 2, 2}, dt);
      Tensor b = vals({0.5}, {1}, dt);
      Tensor y = conv2d(x, w, b, cp({2, 2}, {1, 1}, {1, 1}, 1));
      REQUIRE(max_abs_diff(y, vals({4.5, 18.5, 36.5, 77.5}, {1, 1, 2, 2}, dt)) < 1e-6);
      // Dilation 2 on 3x3 with a 2x2 kernel of ones: the four corners 1 + 3 + 7 + 9.
      Tensor y2 = conv2d(x, ones({1, 1, 2, 2}, dt), {}, cp({1, 1}, {0, 0}, {2, 2}, 1));
      REQUIRE(max_abs_diff(y2, vals({20}, {1, 1, 1, 1}, dt)) < 1e-6);
      // groups 2: channel 0 (all ones) * 2, channel 1 ([1 2; 3 4]) * -1 (1x1 kernels).
      Tensor xg = vals({1, 1, 1, 1, 1, 2, 3, 4}, {1, 2, 2, 2}, dt);
      Tensor yg = conv2d(xg, vals({2, -1}, {2, 1, 1, 1}, dt), {}, cp({1, 1}, {0, 0}, {1, 1}, 2));
      REQUIRE(max_abs_diff(yg, vals({2, 2, 2, 2, -1, -2, -3, -4}, {1, 2, 2, 2}, dt)) < 1e-6);
      // d sum(conv(x, ones 2x2)) / dx counts the windows covering each pixel of a 3x3 input.
      Tensor gx = conv2d_backward_input(ones({1, 1, 2, 2}, dt), ones({1, 1, 2, 2}, dt), {1, 1, 3, 3}, {});
      REQUIRE(max_abs_diff(gx, vals({1, 2, 1, 2, 4, 2, 1, 2, 1}, {1, 1, 3, 3}, dt)) < 1e-6);
      // ... and d/dw sums the window-shifted inputs: w[i][j] <- sum of x[i:i+2, j:j+2].
      Tensor gw = conv2d_backward_weight(ones({1, 1, 2, 2}, dt), x, {1, 1, 2, 2}, {});
      REQUIRE(max_abs_diff(gw, vals({12, 16, 24, 28}, {1, 1, 2, 2}, dt)) < 1e-6);
      // Stride 2 on a 4-row input with a 1x1 kernel: row 3 is never read, so it gets no gradient.
      Tensor gs = conv2d_backward_input(vals({1, 2, 3, 4}, {1, 1, 2, 2}, dt), vals({10}, {1, 1, 1, 1}, dt),
                                        {1, 1, 4, 3}, cp({2, 2}, {0, 0}, {1, 1}, 1));
      REQUIRE(max_abs_diff(gs, vals({10, 0, 20, 0, 0, 0, 30, 0, 40, 0, 0, 0}, {1, 1, 4, 3}, dt)) < 1e-6);
    }
  }
}

TEST_CASE("conv2d reads non-contiguous inputs and gradients", "[conv]") {
  Generator gen(5);
  for (auto backend : {Backend::Reference, Backend::Fast}) {
    BackendGuard bg(backend);
    for (DType dt : {DType::Float32, f64}) {
      // Transposed views of x ([N, C, W, H] -> [N, C, H, W]) and of w, and an expanded grad_out.
      Tensor xt = randn({2, 3, 7, 6}, dt, &gen).transpose(2, 3), wt = randn({4, 3, 3, 3}, dt, &gen).transpose(2, 3);
      const Conv2dParams p = cp({2, 1}, {1, 1}, {1, 1}, 1);
      REQUIRE_FALSE(xt.is_contiguous());
      REQUIRE(max_abs_diff(conv2d(xt, wt, {}, p), conv2d(xt.contiguous(), wt.contiguous(), {}, p)) < 1e-5);
      Tensor gy = full({1, 1, 1, 1}, 1.5, dt).expand({2, 4, 3, 7});
      REQUIRE(max_abs_diff(conv2d_backward_input(gy, wt, xt.shape(), p),
                           conv2d_backward_input(gy.contiguous(), wt.contiguous(), xt.shape(), p)) < 1e-5);
      REQUIRE(max_abs_diff(conv2d_backward_weight(gy, xt, wt.shape(), p),
                           conv2d_backward_weight(gy.contiguous(), xt.contiguous(), wt.shape(), p)) < 1e-4);
    }
  }
}

TEST_CASE("conv2d output size", "[conv]") {
  REQUIRE(conv_output_size(6, 3, 2, 0, 1) == 2);
  REQUIRE(conv_output_size(7, 3, 2, 1, 1) == 4);
  REQUIRE(conv_output_size(32, 31, 1, 15, 1) == 32);
  REQUIRE(conv_output_size(7, 3, 1, 0, 2) == 3);
}

TEST_CASE("conv2d gradients w.r.t. input, weight and bias", "[conv][gradcheck]") {
  Generator gen(7);
  for (const auto& c : grad_cases()) {
    INFO(c.name);
    std::vector<Tensor> in{randn64(c.x, gen), randn64(c.w, gen), randn64({c.w[0]}, gen)};
    testing::Fn f = [&](const std::vector<Tensor>& t) { return conv2d(t[0], t[1], t[2], c.p); };
    KERN_GRADCHECK(f, in);
  }
}

TEST_CASE("conv2d second derivatives", "[conv][gradgradcheck]") {
  Generator gen(8);
  for (const auto& c : grad_cases()) {
    INFO(c.name);
    std::vector<Tensor> in{randn64(c.x, gen), randn64(c.w, gen), randn64({c.w[0]}, gen)};
    // Linear in each argument: the second derivative couples x and w (cross terms), and the
    // square makes the bias term second-order too.
    testing::Fn f = [&](const std::vector<Tensor>& t) { return square(conv2d(t[0], t[1], t[2], c.p)); };
    KERN_GRADGRADCHECK(f, in);
  }
}

TEST_CASE("conv2d backward kernels are differentiable ops", "[conv][gradcheck][gradgradcheck]") {
  Generator gen(9);
  for (const auto& c : grad_cases()) {
    INFO(c.name);
    const int64_t Ho = conv_output_size(c.x[2], c.w[2], c.p.stride[0], c.p.padding[0], c.p.dilation[0]);
    const int64_t Wo = conv_output_size(c.x[3], c.w[3], c.p.stride[1], c.p.padding[1], c.p.dilation[1]);
    const Shape ys{c.x[0], c.w[0], Ho, Wo};
    Tensor gy = randn64(ys, gen), w = randn64(c.w, gen), x = randn64(c.x, gen);
    testing::Fn bi = [&](const std::vector<Tensor>& t) { return conv2d_backward_input(t[0], t[1], c.x, c.p); };
    testing::Fn bw = [&](const std::vector<Tensor>& t) { return conv2d_backward_weight(t[0], t[1], c.w, c.p); };
    REQUIRE(bi({gy, w}).shape() == c.x);
    REQUIRE(bw({gy, x}).shape() == c.w);
    KERN_GRADCHECK(bi, (std::vector<Tensor>{gy, w}));
    KERN_GRADCHECK(bw, (std::vector<Tensor>{gy, x}));
    testing::Fn bi2 = [&](const std::vector<Tensor>& t) { return square(bi(t)); };
    testing::Fn bw2 = [&](const std::vector<Tensor>& t) { return square(bw(t)); };
    KERN_GRADGRADCHECK(bi2, (std::vector<Tensor>{gy, w}));
    KERN_GRADGRADCHECK(bw2, (std::vector<Tensor>{gy, x}));
  }
}

TEST_CASE("conv2d backward ops are adjoints of the forward", "[conv]") {
  // <conv(x, w), gy> = <x, bwd_input(gy, w)> = <w, bwd_weight(gy, x)>, for every case.
  Generator gen(10);
  for (const auto& c : grad_cases()) {
    INFO(c.name);
    Tensor x = randn64(c.x, gen), w = randn64(c.w, gen);
    Tensor y = conv2d(x, w, {}, c.p);
    Tensor gy = randn64(y.shape(), gen);
    const double lhs = dot(y, gy).item();
    REQUIRE(dot(x, conv2d_backward_input(gy, w, c.x, c.p)).item() == Approx(lhs).epsilon(1e-12));
    REQUIRE(dot(w, conv2d_backward_weight(gy, x, c.w, c.p)).item() == Approx(lhs).epsilon(1e-12));
  }
}

namespace {

// Relative agreement of the fast path with the reference, scaled by the reference's size.
void require_close(const Tensor& fast, const Tensor& ref, const char* what) {
  INFO(what << ": shapes " << fmt::format("{} / {}", fast.shape(), ref.shape()));
  REQUIRE(fast.shape() == ref.shape());
  const double scale = std::max(1e-30, max(abs(ref)).item());
  const double diff = max_abs_diff(fast, ref);
  INFO("max |fast - ref| = " << diff << ", max |ref| = " << scale);
  REQUIRE(diff <= 1e-4 * scale);
}

// `kernel` is the primitive whose fast path must run: Conv2d (oneDNN) or DepthwiseConv2d
// (kern's direct kernels); the reference side must run its loops only.
void compare_backends(const Shape& xs, const Shape& ws, const Conv2dParams& p, uint64_t seed,
                      testing::Primitive kernel) {
  using testing::Path;
  Generator gen(seed);
  Tensor x = randn(xs, DType::Float32, &gen), w = randn(ws, DType::Float32, &gen);
  Tensor b = randn({ws[0]}, DType::Float32, &gen);
  Tensor y_ref, gx_ref, gw_ref, y_fast, gx_fast, gw_fast;
  Tensor gy;
  const auto ref_paths = testing::paths_of([&] {
    BackendGuard bg(Backend::Reference);
    y_ref = conv2d(x, w, b, p);
    gy = randn(y_ref.shape(), DType::Float32, &gen);
    gx_ref = conv2d_backward_input(gy, w, xs, p);
    gw_ref = conv2d_backward_weight(gy, x, ws, p);
  });
  INFO("reference side: " << testing::describe(ref_paths));
  REQUIRE(ref_paths.total(Path::Fast) == 0);
  REQUIRE(ref_paths(kernel, Path::Reference) == 3);  // forward and both backward kernels
  const auto fast_paths = testing::paths_of([&] {
    BackendGuard bg(Backend::Fast);
    y_fast = conv2d(x, w, b, p);
    gx_fast = conv2d_backward_input(gy, w, xs, p);
    gw_fast = conv2d_backward_weight(gy, x, ws, p);
    // Second call hits the primitive cache and must give the same numbers.
    REQUIRE(max_abs_diff(conv2d(x, w, b, p), y_fast) == 0.0);
  });
  INFO("fast side: " << testing::describe(fast_paths));
  REQUIRE(fast_paths(kernel, Path::Fast) == 4);
  REQUIRE(fast_paths.total(Path::Reference) == 0);
  require_close(y_fast, y_ref, "forward");
  require_close(gx_fast, gx_ref, "backward input");
  require_close(gw_fast, gw_ref, "backward weight");
}

}  // namespace

TEST_CASE("conv2d oneDNN fast path agrees with the reference", "[conv][backend]") {
  constexpr auto kDepthwise = testing::Primitive::DepthwiseConv2d;
  SECTION("3x3, groups 1") {
    compare_backends({2, 32, 16, 16}, {48, 32, 3, 3}, cp({1, 1}, {1, 1}, {1, 1}, 1), 1, testing::Primitive::Conv2d);
  }
  SECTION("depthwise 7x7 pad 3") {
    compare_backends({8, 64, 32, 32}, {64, 1, 7, 7}, cp({1, 1}, {3, 3}, {1, 1}, 64), 2, kDepthwise);
  }
  SECTION("depthwise 31x31 pad 15") {
    compare_backends({2, 8, 32, 32}, {8, 1, 31, 31}, cp({1, 1}, {15, 15}, {1, 1}, 8), 3, kDepthwise);
  }
  SECTION("depthwise 1x11 band") {
    compare_backends({2, 16, 20, 20}, {16, 1, 1, 11}, cp({1, 1}, {0, 5}, {1, 1}, 16), 4, kDepthwise);
  }
  SECTION("depthwise 11x1 band") {
    compare_backends({2, 16, 20, 20}, {16, 1, 11, 1}, cp({1, 1}, {5, 0}, {1, 1}, 16), 5, kDepthwise);
  }
  // Planes narrower than 16 run the flattened small-plane kernels (ConvNeXt's late stages),
  // with the taps that only read padding skipped (a 1x1 plane keeps only the centre tap).
  SECTION("depthwise 7x7 pad 3 on 8x8, 4x4, 2x2, 1x1 planes") {
    for (int64_t s : {8, 4, 2, 1}) {
      INFO("plane " << s << "x" << s);
      compare_backends({3, 5, s, s}, {5, 1, 7, 7}, cp({1, 1}, {3, 3}, {1, 1}, 5), 10 + s, kDepthwise);
    }
  }
  SECTION("depthwise small planes: non-square, padding < k / 2, 31x31 on 4x4, width 15") {
    compare_backends({2, 4, 5, 3}, {4, 1, 3, 3}, cp({1, 1}, {1, 1}, {1, 1}, 4), 20, kDepthwise);
    compare_backends({2, 3, 9, 6}, {3, 1, 7, 5}, cp({1, 1}, {2, 1}, {1, 1}, 3), 21, kDepthwise);
    compare_backends({2, 3, 4, 4}, {3, 1, 31, 31}, cp({1, 1}, {15, 15}, {1, 1}, 3), 22, kDepthwise);
    compare_backends({2, 3, 11, 15}, {3, 1, 7, 7}, cp({1, 1}, {3, 3}, {1, 1}, 3), 23, kDepthwise);
    compare_backends({1, 2, 3, 20}, {2, 1, 3, 7}, cp({1, 1}, {0, 0}, {1, 1}, 2), 24, kDepthwise);
  }
  // Planes of at most 16 pixels run the channel-vectorized kernels (tap triples over
  // [pixels, channels] blocks); more than 64 channels exercise the weight gradient's blocks.
  SECTION("depthwise tiny planes: 4x4 ... 1x1, 70 channels, non-square, valid and partial padding") {
    compare_backends({3, 70, 4, 4}, {70, 1, 7, 7}, cp({1, 1}, {3, 3}, {1, 1}, 70), 30, kDepthwise);
    compare_backends({3, 70, 2, 2}, {70, 1, 7, 7}, cp({1, 1}, {3, 3}, {1, 1}, 70), 31, kDepthwise);
    compare_backends({5, 130, 1, 1}, {130, 1, 7, 7}, cp({1, 1}, {3, 3}, {1, 1}, 130), 32, kDepthwise);
    compare_backends({2, 9, 2, 5}, {9, 1, 3, 5}, cp({1, 1}, {1, 1}, {1, 1}, 9), 33, kDepthwise);
    compare_backends({2, 6, 4, 3}, {6, 1, 3, 3}, cp({1, 1}, {0, 0}, {1, 1}, 6), 34, kDepthwise);
    compare_backends({1, 3, 3, 3}, {3, 1, 31, 31}, cp({1, 1}, {15, 15}, {1, 1}, 3), 35, kDepthwise);
  }
  SECTION("stride 2") {
    compare_backends({2, 16, 17, 17}, {32, 16, 3, 3}, cp({2, 2}, {1, 1}, {1, 1}, 1), 6, testing::Primitive::Conv2d);
  }
  SECTION("stride 2, size not divisible, dilation 2, groups 4") {
    compare_backends({2, 16, 18, 19}, {24, 4, 3, 3}, cp({2, 2}, {1, 0}, {2, 2}, 4), 7, testing::Primitive::Conv2d);
  }
}

TEST_CASE("conv2d rejects bad input with the op name and shapes", "[conv][errors]") {
  Tensor x = zeros({1, 3, 5, 5});
  using Catch::Contains;
  // wrong channels: weight wants 2 input channels
  REQUIRE_THROWS_WITH(conv2d(x, zeros({4, 2, 3, 3})), Contains("conv2d") && Contains("[1, 3, 5, 5]") &&
                                                           Contains("[4, 2, 3, 3]"));
  // wrong weight rank
  REQUIRE_THROWS_WITH(conv2d(x, zeros({4, 3, 3})), Contains("conv2d") && Contains("[4, 3, 3]") &&
                                                       Contains("[1, 3, 5, 5]"));
  // groups not dividing C_in
  REQUIRE_THROWS_WITH(conv2d(x, zeros({4, 1, 3, 3}), {}, cp({1, 1}, {0, 0}, {1, 1}, 2)),
                      Contains("conv2d") && Contains("groups") && Contains("[1, 3, 5, 5]"));
  // integer input
  REQUIRE_THROWS_WITH(conv2d(zeros({1, 3, 5, 5}, DType::Int64), zeros({4, 3, 3, 3}, DType::Int64)),
                      Contains("conv2d") && Contains("int64") && Contains("[1, 3, 5, 5]"));
  // mixed dtypes
  REQUIRE_THROWS_WITH(conv2d(x, zeros({4, 3, 3, 3}, f64)), Contains("conv2d") && Contains("float64"));
  // negative padding
  REQUIRE_THROWS_WITH(conv2d(x, zeros({4, 3, 3, 3}), {}, cp({1, 1}, {-1, 0}, {1, 1}, 1)),
                      Contains("conv2d") && Contains("padding") && Contains("[1, 3, 5, 5]"));
  // kernel larger than the (padded) input
  REQUIRE_THROWS_WITH(conv2d(zeros({1, 1, 3, 3}), zeros({1, 1, 5, 5})),
                      Contains("conv2d") && Contains("larger") && Contains("[1, 1, 3, 3]") && Contains("[1, 1, 5, 5]"));
  // bias of the wrong size
  REQUIRE_THROWS_WITH(conv2d(x, zeros({4, 3, 3, 3}), zeros({3})), Contains("conv2d") && Contains("bias"));
  // backward ops check grad_out against the geometry
  REQUIRE_THROWS_WITH(conv2d_backward_input(zeros({1, 4, 2, 2}), zeros({4, 3, 3, 3}), {1, 3, 5, 5}, {}),
                      Contains("conv2d_backward_input") && Contains("[1, 4, 2, 2]") && Contains("[1, 4, 3, 3]"));
  REQUIRE_THROWS_WITH(conv2d_backward_weight(zeros({1, 4, 3, 3}), x, {4, 2, 3, 3}, {}),
                      Contains("conv2d_backward_weight") && Contains("[4, 2, 3, 3]"));
}

TEST_CASE("Hessian-vector product through a small CNN matches finite differences", "[conv][gradgradcheck]") {
  // loss(x, w1, b1, w2) = sum(conv(tanh(conv(x, w1) + b1), w2, stride 2)^2): float64, exact HVP
  // by double backward vs central differences of the gradient along v.
  Generator gen(11);
  std::vector<Tensor> primals{randn64({2, 2, 6, 6}, gen), randn64({3, 2, 3, 3}, gen) * 0.5, randn64({3}, gen),
                              randn64({2, 3, 3, 3}, gen) * 0.5};
  std::vector<Tensor> v;
  for (auto& p : primals) v.push_back(randn64(p.shape(), gen));
  TensorFn loss = [](const std::vector<Tensor>& p) {
    Tensor h = tanh(conv2d(p[0], p[1], p[2], cp({1, 1}, {1, 1}, {1, 1}, 1)));
    return square(conv2d(h, p[3], {}, cp({2, 2}, {0, 0}, {1, 1}, 1))).sum();
  };
  auto hv = hvp(loss, primals, v).hvp;
  auto gradient_at = [&](double t) {
    std::vector<Tensor> p;
    for (size_t i = 0; i < primals.size(); ++i) p.push_back((primals[i] + v[i] * t).detach().requires_grad_());
    return grad({loss(p)}, p);
  };
  const double eps = 1e-5;
  auto gp = gradient_at(eps), gm = gradient_at(-eps);
  for (size_t i = 0; i < primals.size(); ++i) {
    INFO("primal " << i);
    Tensor fd = (gp[i] - gm[i]) / (2 * eps);
    REQUIRE(hv[i].shape() == primals[i].shape());
    REQUIRE(max_abs_diff(hv[i], fd) <= 1e-6 * std::max(1.0, max(abs(fd)).item()));
  }
}
