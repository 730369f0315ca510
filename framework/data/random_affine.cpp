// RandomAffine and affine_transform (see random_affine.hpp), built on affine_grid + grid_sample.
#include <kern/autograd.hpp>
#include <kern/data/random_affine.hpp>
#include <kern/ops.hpp>

#include <cmath>
#include <numbers>
#include <vector>

namespace kern::data {

namespace {

void check_range(const std::array<double, 2>& r, const char* name, double lo, double hi) {
  KERN_CHECK(std::isfinite(r[0]) && std::isfinite(r[1]) && r[0] <= r[1] && r[0] >= lo && r[1] <= hi,
             "RandomAffine: ", name, " must be a range [min, max] within [", lo, ", ", hi, "], got [",
             r[0], ", ", r[1], "]");
}

double draw(const std::array<double, 2>& r, Generator& gen) {
  return r[0] == r[1] ? r[0] : r[0] + (r[1] - r[0]) * gen.uniform();
}

}  // namespace

RandomAffine::RandomAffine(const RandomAffineOptions& o) : options_(o) {
  check_range(o.degrees, "degrees", -360, 360);
  check_range(o.shear_x, "shear_x", -89, 89);
  check_range(o.shear_y, "shear_y", -89, 89);
  check_range(o.scale, "scale", 1e-6, 1e6);
  KERN_CHECK(o.translate[0] >= 0 && o.translate[0] <= 1 && o.translate[1] >= 0 && o.translate[1] <= 1,
             "RandomAffine: translate fractions must be in [0, 1], got (", o.translate[0], ", ",
             o.translate[1], ")");
}

Tensor RandomAffine::sample_maps(int64_t B, int64_t H, int64_t W, Generator& gen) const {
  const auto& o = options_;
  const double deg = std::numbers::pi / 180.0;
  std::vector<double> m(B * 6);
  for (int64_t n = 0; n < B; ++n) {
    const double a = draw(o.degrees, gen) * deg;
    const double hx = std::tan(draw(o.shear_x, gen) * deg), hy = std::tan(draw(o.shear_y, gen) * deg);
    const double sx = draw(o.scale, gen), sy = o.scale_per_axis ? draw(o.scale, gen) : sx;
    const double mx = o.translate[0] * static_cast<double>(W), my = o.translate[1] * static_cast<double>(H);
    const double tx = draw({-mx, mx}, gen), ty = draw({-my, my}, gen);
    const double c = std::cos(a), s = std::sin(a);
    // Rot [[c, s], [-s, c]] * Shear [[1, hx], [hy, 1]] * diag(sx, sy)
    const double r00 = c + s * hy, r01 = c * hx + s, r10 = -s + c * hy, r11 = -s * hx + c;
    double* p = &m[n * 6];
    p[0] = r00 * sx, p[1] = r01 * sy, p[2] = tx;
    p[3] = r10 * sx, p[4] = r11 * sy, p[5] = ty;
  }
  return from_vector(m, {B, 2, 3});
}

Tensor affine_transform(const Tensor& x, const Tensor& maps, double fill) {
  KERN_CHECK(x.dim() == 4 && is_floating(x.dtype()), "affine_transform: x must be floating [B, C, H, W], got ",
             x.shape(), " ", x.dtype());
  KERN_CHECK(maps.dim() == 3 && maps.size(0) == x.size(0) && maps.size(1) == 2 && maps.size(2) == 3,
             "affine_transform: maps must be [B = ", x.size(0), ", 2, 3], got ", maps.shape());
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  const Tensor M = maps.to(x.dtype());
  // Inverse map in pixel units: p_in - c = A^-1 (p_out - c - t); in normalized coordinates
  // u = D (p - c), D = diag(2 / W, 2 / H): u_in = D A^-1 D^-1 u_out - D A^-1 t.
  const Tensor a = M.select(2, 0).select(1, 0), b = M.select(2, 1).select(1, 0);
  const Tensor c = M.select(2, 0).select(1, 1), d = M.select(2, 1).select(1, 1);
  const Tensor tx = M.select(2, 2).select(1, 0), ty = M.select(2, 2).select(1, 1);
  const Tensor det = a * d - b * c;
  const Tensor i00 = d / det, i01 = -b / det, i10 = -c / det, i11 = a / det;
  const double dx = 2.0 / static_cast<double>(W), dy = 2.0 / static_cast<double>(H);
  const Tensor t00 = i00, t01 = i01 * (dx / dy), t10 = i10 * (dy / dx), t11 = i11;
  const Tensor t02 = -(i00 * tx + i01 * ty) * dx, t12 = -(i10 * tx + i11 * ty) * dy;
  const Tensor theta = stack({stack({t00, t01, t02}, 1), stack({t10, t11, t12}, 1)}, 1);
  const Tensor grid = affine_grid(theta, x.shape(), false);
  Tensor y = grid_sample(x, grid);
  if (fill != 0.0) y = y + fill * (1.0 - grid_sample(ones_like(x.narrow(1, 0, 1)), grid));
  return y;
}

Tensor RandomAffine::operator()(const Tensor& x, Generator& gen) const {
  KERN_CHECK(x.dim() == 3 || x.dim() == 4, "RandomAffine: expected images [B, C, H, W] or [C, H, W], got ",
             x.shape());
  KERN_CHECK(is_floating(x.dtype()), "RandomAffine: expected float32 or float64 images, got ", x.dtype());
  NoGradGuard ng;
  const Tensor b = x.dim() == 3 ? x.unsqueeze(0) : x;
  const Tensor maps = sample_maps(b.size(0), b.size(2), b.size(3), gen);
  const Tensor y = affine_transform(b.detach(), maps, options_.fill);
  return x.dim() == 3 ? y.squeeze(0) : y;
}

}  // namespace kern::data
