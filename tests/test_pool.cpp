// Pooling: hand-computed values (first-max gradients, count_include_pad, ceil_mode, adaptive
// windows), first and second derivatives by finite differences, bad input.
#include "gradcheck.hpp"

using namespace kern;

namespace {

const DType f64 = DType::Float64;

Tensor vals(const std::vector<double>& v, const Shape& shape) { return from_vector<double>(v, shape).to(f64); }

Pool2dParams pp(std::array<int64_t, 2> kernel, std::array<int64_t, 2> stride, std::array<int64_t, 2> padding,
                bool ceil_mode = false, bool count_include_pad = true) {
  Pool2dParams p;
  p.kernel = kernel;
  p.stride = stride;
  p.padding = padding;
  p.ceil_mode = ceil_mode;
  p.count_include_pad = count_include_pad;
  return p;
}

}  // namespace

TEST_CASE("max_pool2d values and first-maximum gradient", "[pool]") {
  // 4x4 input, 2x2 windows: maxima 6, 8 / 12, 16; the top-left window holds two 6s (ties).
  Tensor x = vals({1, 6, 3, 4, 6, 2, 8, 7, 9, 10, 13, 14, 11, 12, 15, 16}, {1, 1, 4, 4});
  x.requires_grad_();
  Tensor y = max_pool2d(x, pp({2, 2}, {0, 0}, {0, 0}));
  REQUIRE(max_abs_diff(y, vals({6, 8, 12, 16}, {1, 1, 2, 2})) == 0.0);
  y.backward(vals({1, 2, 3, 4}, {1, 1, 2, 2}));
  // The tie in the first window goes to the first 6 in row-major order (row 0, col 1).
  REQUIRE(max_abs_diff(x.grad(), vals({0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 3, 0, 4}, {1, 1, 4, 4})) == 0.0);
  // Padding is ignored (-inf): 3x3 windows, stride 2, padding 1 over a 3x3 input of negatives.
  Tensor n = vals({-1, -2, -3, -4, -5, -6, -7, -8, -9}, {1, 1, 3, 3});
  Tensor yn = max_pool2d(n, pp({3, 3}, {2, 2}, {1, 1}));
  REQUIRE(max_abs_diff(yn, vals({-1, -2, -4, -5}, {1, 1, 2, 2})) == 0.0);
}

TEST_CASE("avg_pool2d count_include_pad and ceil_mode", "[pool]") {
  Tensor x = vals({1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 1, 3, 3});
  // 2x2 windows, stride 2, padding 1: windows {1}, {2,3}, {4,7}, {5,6,8,9}.
  Tensor with_pad = avg_pool2d(x, pp({2, 2}, {2, 2}, {1, 1}, false, true));
  REQUIRE(max_abs_diff(with_pad, vals({1.0 / 4, 5.0 / 4, 11.0 / 4, 28.0 / 4}, {1, 1, 2, 2})) < 1e-15);
  Tensor without = avg_pool2d(x, pp({2, 2}, {2, 2}, {1, 1}, false, false));
  REQUIRE(max_abs_diff(without, vals({1, 2.5, 5.5, 7}, {1, 1, 2, 2})) < 1e-15);
  // ceil_mode, 2x2 stride 2 on 3x3, no padding: the extra window holds {3, 6}, {7, 8}, {9}. The
  // divisor is the window clipped to input + padding (here the input), as in PyTorch.
  Tensor ceil = avg_pool2d(x, pp({2, 2}, {2, 2}, {0, 0}, true, true));
  REQUIRE(ceil.shape() == Shape{1, 1, 2, 2});
  REQUIRE(max_abs_diff(ceil, vals({3, 4.5, 7.5, 9}, {1, 1, 2, 2})) < 1e-15);
  // ceil_mode drops a window that would start in the right padding: H = 5, k = 2, s = 2, p = 1
  // gives (5 + 2 - 2 + 1) / 2 + 1 = 4 candidates, but the 4th starts at 6 - 1 = 5 >= H.
  REQUIRE(avg_pool2d(zeros({1, 1, 5, 5}, f64), pp({2, 2}, {2, 2}, {1, 1}, true)).shape() == Shape{1, 1, 3, 3});
  // H = 6, k = 3, s = 2, p = 1: floor mode 3 outputs, ceil mode 4.
  REQUIRE(max_pool2d(zeros({1, 1, 6, 6}, f64), pp({3, 3}, {2, 2}, {1, 1}, false)).shape() == Shape{1, 1, 3, 3});
  REQUIRE(max_pool2d(zeros({1, 1, 6, 6}, f64), pp({3, 3}, {2, 2}, {1, 1}, true)).shape() == Shape{1, 1, 4, 4});
  // Gradient of the count_include_pad = false average: each window spreads 1/count.
  Tensor xg = x.detach().requires_grad_();
  avg_pool2d(xg, pp({2, 2}, {2, 2}, {1, 1}, false, false)).sum().backward();
  REQUIRE(max_abs_diff(xg.grad(), vals({1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.5, 0.25, 0.25}, {1, 1, 3, 3})) < 1e-15);
}

TEST_CASE("adaptive_avg_pool2d uses PyTorch's uneven windows", "[pool]") {
  // 7 -> 3: windows [0, 3), [2, 5), [4, 7). With x[i][j] = 7i + j the window means are
  // 7 * {1, 3, 5}[a] + {1, 3, 5}[b].
  Tensor x = arange(0.0, 49.0, 1.0, f64).reshape({1, 1, 7, 7});
  Tensor y = adaptive_avg_pool2d(x, {3, 3});
  REQUIRE(max_abs_diff(y, vals({8, 10, 12, 22, 24, 26, 36, 38, 40}, {1, 1, 3, 3})) < 1e-12);
  // Global pooling is the mean.
  Tensor z = randn({2, 3, 5, 4}, f64);
  REQUIRE(max_abs_diff(adaptive_avg_pool2d(z, {1, 1}), z.mean({2, 3}, true)) < 1e-12);
}

TEST_CASE("pooling gradients", "[pool][gradcheck]") {
  Generator gen(21);
  Tensor x = randn({2, 2, 7, 7}, f64, &gen);
  const std::vector<std::pair<const char*, Pool2dParams>> cases{
      {"2x2", pp({2, 2}, {0, 0}, {0, 0})},
      {"3x3 s2 p1", pp({3, 3}, {2, 2}, {1, 1})},
      {"3x2 s(2,1) p(1,0) ceil", pp({3, 2}, {2, 1}, {1, 0}, true)},
      {"2x2 s2 ceil", pp({2, 2}, {2, 2}, {0, 0}, true)},
  };
  for (const auto& [name, p] : cases) {
    INFO(name);
    testing::Fn mx = [&, p = p](const std::vector<Tensor>& t) { return max_pool2d(t[0], p); };
    KERN_GRADCHECK(mx, {x});
    for (bool include : {true, false}) {
      INFO("count_include_pad " << include);
      Pool2dParams q = p;
      q.count_include_pad = include;
      testing::Fn av = [&](const std::vector<Tensor>& t) { return avg_pool2d(t[0], q); };
      KERN_GRADCHECK(av, {x});
    }
  }
  testing::Fn ad = [&](const std::vector<Tensor>& t) { return adaptive_avg_pool2d(t[0], {3, 3}); };
  KERN_GRADCHECK(ad, {x});
  testing::Fn ad2 = [&](const std::vector<Tensor>& t) { return adaptive_avg_pool2d(t[0], {4, 2}); };
  KERN_GRADCHECK(ad2, {x});
}

TEST_CASE("pooling second derivatives", "[pool][gradgradcheck]") {
  // The pools are (piecewise) linear, so the function squares their output: the second
  // derivative then runs through the pool's backward op and that op's own backward.
  Generator gen(22);
  Tensor x = randn({2, 2, 7, 7}, f64, &gen);
  const std::vector<std::pair<const char*, Pool2dParams>> cases{
      {"3x3 s2 p1", pp({3, 3}, {2, 2}, {1, 1})},
      {"3x2 s(2,1) p(1,0) ceil", pp({3, 2}, {2, 1}, {1, 0}, true)},
  };
  for (const auto& [name, p] : cases) {
    INFO(name);
    testing::Fn mx = [&, p = p](const std::vector<Tensor>& t) { return square(max_pool2d(tanh(t[0]), p)); };
    KERN_GRADGRADCHECK(mx, {x});
    for (bool include : {true, false}) {
      INFO("count_include_pad " << include);
      Pool2dParams q = p;
      q.count_include_pad = include;
      testing::Fn av = [&](const std::vector<Tensor>& t) { return square(avg_pool2d(t[0], q)); };
      KERN_GRADGRADCHECK(av, {x});
    }
  }
  testing::Fn ad = [&](const std::vector<Tensor>& t) { return square(adaptive_avg_pool2d(t[0], {3, 3})); };
  KERN_GRADGRADCHECK(ad, {x});
  // Max pool inside a product: d/dx of the gradient depends on which element is the max.
  Tensor w = randn({2, 2, 3, 3}, f64, &gen);
  testing::Fn mix = [&](const std::vector<Tensor>& t) { return max_pool2d(t[0], pp({3, 3}, {2, 2}, {1, 1})) * t[1]; };
  KERN_GRADGRADCHECK(mix, (std::vector<Tensor>{x.narrow(2, 0, 5).narrow(3, 0, 5).contiguous(), w}));
}

TEST_CASE("pooling rejects bad input with the op name and shapes", "[pool][errors]") {
  using Catch::Contains;
  REQUIRE_THROWS_WITH(max_pool2d(zeros({3, 5, 5}), pp({2, 2}, {0, 0}, {0, 0})),
                      Contains("max_pool2d") && Contains("[3, 5, 5]"));
  REQUIRE_THROWS_WITH(max_pool2d(zeros({1, 1, 3, 3}), pp({5, 5}, {0, 0}, {0, 0})),
                      Contains("max_pool2d") && Contains("larger") && Contains("[1, 1, 3, 3]"));
  REQUIRE_THROWS_WITH(max_pool2d(zeros({1, 1, 5, 5}), pp({2, 2}, {0, 0}, {2, 2})),
                      Contains("max_pool2d") && Contains("half") && Contains("[1, 1, 5, 5]"));
  REQUIRE_THROWS_WITH(max_pool2d(zeros({1, 1, 5, 5}, DType::Int64), pp({2, 2}, {0, 0}, {0, 0})),
                      Contains("max_pool2d") && Contains("int64") && Contains("[1, 1, 5, 5]"));
  REQUIRE_THROWS_WITH(max_pool2d(zeros({1, 1, 5, 5}), pp({2, 2}, {0, 0}, {-1, 0})),
                      Contains("max_pool2d") && Contains("padding") && Contains("[1, 1, 5, 5]"));
  REQUIRE_THROWS_WITH(avg_pool2d(zeros({1, 1, 5, 5}), pp({0, 2}, {0, 0}, {0, 0})),
                      Contains("avg_pool2d") && Contains("kernel") && Contains("[1, 1, 5, 5]"));
  REQUIRE_THROWS_WITH(adaptive_avg_pool2d(zeros({1, 5, 5}), {2, 2}),
                      Contains("adaptive_avg_pool2d") && Contains("[1, 5, 5]"));
  REQUIRE_THROWS_WITH(adaptive_avg_pool2d(zeros({1, 1, 5, 5}), {0, 2}),
                      Contains("adaptive_avg_pool2d") && Contains("[1, 1, 5, 5]"));
}
