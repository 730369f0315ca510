// grid_sample / affine_grid (framework/ops/grid_sample.cpp) against PyTorch-made values
// (tests/data/grid_sample.safetensors, made by tests/data/make_grid_sample.py) and an
// independent per-pixel loop, gradient checks of first and second order in input and grid,
// and RandomAffine / affine_transform (framework/data/random_affine.cpp).
#include "gradcheck.hpp"

#include <catch2/catch.hpp>
#include <kern/data/random_affine.hpp>
#include <kern/io/safetensors.hpp>
#include <kern/kern.hpp>

#include <cmath>
#include <vector>

using namespace kern;

namespace {

constexpr DType F64 = DType::Float64;

double max_abs(const Tensor& t) { return max(abs(t)).item(); }

// The bilinear sample of image [H, W] (row-major) at pixel coordinates (px, py), 0 outside,
// as the weighted sum over every pixel within distance 1 (tent weights): no floor, no corners.
double tent_sample(const std::vector<double>& img, int64_t H, int64_t W, double px, double py) {
  double s = 0;
  for (int64_t r = 0; r < H; ++r)
    for (int64_t c = 0; c < W; ++c) {
      const double wx = std::max(0.0, 1 - std::abs(px - double(c)));
      const double wy = std::max(0.0, 1 - std::abs(py - double(r)));
      s += wx * wy * img[r * W + c];
    }
  return s;
}

// grid_sample by the definition, per output pixel.
Tensor reference_grid_sample(const Tensor& x, const Tensor& grid, bool align) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = grid.size(1), Wo = grid.size(2);
  const auto xv = x.contiguous().to(F64).to_vector<double>();
  const auto gv = grid.contiguous().to(F64).to_vector<double>();
  std::vector<double> out(N * C * Ho * Wo);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j) {
        const double gx = gv[((n * Ho + i) * Wo + j) * 2], gy = gv[((n * Ho + i) * Wo + j) * 2 + 1];
        const double px = align ? (gx + 1) / 2 * (W - 1) : ((gx + 1) * W - 1) / 2;
        const double py = align ? (gy + 1) / 2 * (H - 1) : ((gy + 1) * H - 1) / 2;
        for (int64_t c = 0; c < C; ++c) {
          std::vector<double> img(xv.begin() + (n * C + c) * H * W, xv.begin() + (n * C + c + 1) * H * W);
          out[((n * C + c) * Ho + i) * Wo + j] = tent_sample(img, H, W, px, py);
        }
      }
  return from_vector(out, {N, C, Ho, Wo});
}

}  // namespace

TEST_CASE("grid_sample and affine_grid match PyTorch", "[grid_sample]") {
  io::SafetensorsFile f = io::load_safetensors(KERN_TEST_DATA_DIR "/grid_sample.safetensors");
  const Tensor x = f.get("input"), grid = f.get("grid"), v = f.get("v"), theta = f.get("theta");
  for (int align = 0; align < 2; ++align) {
    INFO("align_corners " << align);
    Tensor xi = x.detach(), gi = grid.detach();
    xi.requires_grad_(true);
    gi.requires_grad_(true);
    const Tensor out = grid_sample(xi, gi, {.align_corners = align == 1});
    CHECK(max_abs(out - f.get(fmt::format("out.{}", align))) < 1e-12);
    auto g = kern::grad({(out * v).sum()}, {xi, gi});
    CHECK(max_abs(g[0] - f.get(fmt::format("grad_input.{}", align))) < 1e-12);
    CHECK(max_abs(g[1] - f.get(fmt::format("grad_grid.{}", align))) < 1e-12);
    CHECK(max_abs(affine_grid(theta, {2, 3, 4, 5}, align == 1) - f.get(fmt::format("affine_grid.{}", align))) <
          1e-12);
  }
}

TEST_CASE("grid_sample matches the per-pixel definition", "[grid_sample]") {
  Generator gen(2);
  for (DType dt : {DType::Float64, DType::Float32})
    for (bool align : {false, true}) {
      const Tensor x = randn({2, 2, 5, 7}, dt, &gen);
      const Tensor grid = rand({2, 4, 3, 2}, dt, &gen) * 2.6 - 1.3;  // some points outside
      const double tol = dt == F64 ? 1e-12 : 1e-5;
      CHECK(max_abs(grid_sample(x, grid, {.align_corners = align}).to(F64) -
                    reference_grid_sample(x, grid, align)) < tol);
    }
  // the identity map reproduces the image (both conventions)
  const Tensor x = randn({1, 3, 4, 6}, F64, &gen);
  const Tensor id = from_vector(std::vector<double>{1, 0, 0, 0, 1, 0}, {1, 2, 3});
  for (bool align : {false, true})
    CHECK(max_abs(grid_sample(x, affine_grid(id, x.shape(), align), {.align_corners = align}) - x) < 1e-12);
}

TEST_CASE("grid_sample gradcheck and gradgradcheck in input and grid (float64)", "[grid_sample]") {
  Generator gen(4);
  const Tensor x = randn({1, 2, 3, 4}, F64, &gen);
  const Tensor grid = rand({1, 2, 3, 2}, F64, &gen) * 2.4 - 1.2;
  for (bool align : {false, true}) {
    kern::testing::Fn f = [align](const std::vector<Tensor>& in) {
      return grid_sample(in[0], in[1], {.align_corners = align});
    };
    KERN_GRADCHECK(f, {x, grid});
    KERN_GRADGRADCHECK(f, {x, grid});
  }
  const Tensor theta = randn({1, 2, 3}, F64, &gen) * 0.5;
  kern::testing::Fn fa = [&x](const std::vector<Tensor>& in) {
    return grid_sample(in[0], affine_grid(in[1], in[0].shape()));
  };
  KERN_GRADCHECK(fa, {x, theta});
  KERN_GRADGRADCHECK(fa, {x, theta});
}

TEST_CASE("affine_transform resamples the inverse map about the centre", "[grid_sample][random_affine]") {
  Generator gen(6);
  const int64_t H = 6, W = 7;
  const Tensor x = randn({2, 1, H, W}, F64, &gen);
  const Tensor maps = from_vector(std::vector<double>{1.1, 0.3, 0.7, -0.2, 0.9, -0.4,  //
                                                      0.8, -0.1, 0, 0.25, 1.2, 1.0},
                                  {2, 2, 3});
  const Tensor y = data::affine_transform(x, maps);
  const auto xv = x.to_vector<double>(), mv = maps.to_vector<double>(), yv = y.to_vector<double>();
  const double cx = (W - 1) / 2.0, cy = (H - 1) / 2.0;
  double worst = 0;
  for (int64_t n = 0; n < 2; ++n) {
    const double* m = &mv[n * 6];
    const double det = m[0] * m[4] - m[1] * m[3];
    std::vector<double> img(xv.begin() + n * H * W, xv.begin() + (n + 1) * H * W);
    for (int64_t r = 0; r < H; ++r)
      for (int64_t c = 0; c < W; ++c) {
        const double ux = c - cx - m[2], uy = r - cy - m[5];
        const double px = (m[4] * ux - m[1] * uy) / det + cx, py = (-m[3] * ux + m[0] * uy) / det + cy;
        worst = std::max(worst, std::abs(tent_sample(img, H, W, px, py) - yv[(n * H + r) * W + c]));
      }
  }
  CHECK(worst < 1e-12);
}

TEST_CASE("RandomAffine: rotation by 90 degrees is rot90, seeds reproduce", "[random_affine]") {
  Generator gen(8);
  const Tensor x = randn({3, 2, 5, 5}, F64, &gen);
  data::RandomAffine rot({.degrees = {90, 90}});
  Generator g0(0);
  CHECK(max_abs(rot(x, g0) - rot90(x, 1, {-2, -1})) < 1e-12);
  data::RandomAffine aff({.degrees = {-20, 20}, .translate = {0.1, 0.1}, .scale = {0.8, 1.2},
                          .scale_per_axis = true, .shear_x = {-10, 10}, .shear_y = {-10, 10}});
  Generator a(5), b(5), c(6);
  const Tensor ya = aff(x, a), yb = aff(x, b), yc = aff(x, c);
  CHECK(max_abs(ya - yb) == 0);
  CHECK(max_abs(ya - yc) > 1e-3);
  // the maps drawn lie in the ranges: |det| within scale^2 * shear bounds, translations bounded
  Generator d(5);
  const auto m = aff.sample_maps(200, 5, 5, d).to_vector<double>();
  for (int64_t n = 0; n < 200; ++n) {
    CHECK(std::abs(m[n * 6 + 2]) <= 0.5);
    CHECK(std::abs(m[n * 6 + 5]) <= 0.5);
  }
  // one image [C, H, W]
  Generator e(1);
  CHECK(aff(x.select(0, 0), e).shape() == Shape{2, 5, 5});
}

TEST_CASE("grid_sample, affine_grid and RandomAffine reject bad input", "[grid_sample][random_affine]") {
  const Tensor x = zeros({1, 1, 3, 3}, F64);
  CHECK_THROWS_WITH(grid_sample(x, zeros({1, 2, 2, 3}, F64)), Catch::Contains("grid must be [N, Ho, Wo, 2]"));
  CHECK_THROWS_WITH(grid_sample(x, zeros({2, 2, 2, 2}, F64)), Catch::Contains("batch sizes"));
  CHECK_THROWS_WITH(grid_sample(x, zeros({1, 2, 2, 2})), Catch::Contains("same floating dtype"));
  CHECK_THROWS_WITH(grid_sample(x, zeros({1, 2, 2, 2}, F64), {.mode = "bicubic"}), Catch::Contains("bicubic"));
  CHECK_THROWS_WITH(affine_grid(zeros({1, 3, 3}, F64), {1, 1, 3, 3}), Catch::Contains("theta must be"));
  CHECK_THROWS_WITH(data::RandomAffine({.scale = {0, 1}}), Catch::Contains("scale"));
  CHECK_THROWS_WITH(data::RandomAffine({.translate = {2, 0}}), Catch::Contains("translate"));
}
