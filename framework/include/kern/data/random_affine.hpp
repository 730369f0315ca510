#pragma once
// RandomAffine: a random affine map per image, resampled bilinearly (torchvision's
// RandomAffine, with per-axis scales and shears). Pixel coordinates (x = column, y = row,
// y pointing down) about the image centre; each sample's forward map is
//     p_out - c = A (p_in - c) + t,   A = Rot(angle) Shear(shx, shy) diag(sx, sy)
//     Rot(a) = [[cos a, sin a], [-sin a, cos a]]   (a > 0: counter-clockwise as displayed)
//     Shear = [[1, tan(shear_x)], [tan(shear_y), 1]]
// Draws per sample, in this order: angle, shear_x, shear_y, sx, sy (sy = sx unless
// scale_per_axis), tx, ty -- all uniform in their ranges, from the generator given.
//
//   kern::data::RandomAffine aff({.degrees = {-20, 20}, .translate = {0.1, 0.1}});
//   Generator gen(0);
//   Tensor y = aff(x, gen);   // x: [B, C, H, W]
#include <kern/generator.hpp>
#include <kern/tensor.hpp>

#include <array>

namespace kern::data {

struct RandomAffineOptions {
  std::array<double, 2> degrees{0, 0};    // rotation angle range, degrees
  std::array<double, 2> translate{0, 0};  // max |tx| / W and |ty| / H (fractions in [0, 1])
  std::array<double, 2> scale{1, 1};      // scale range (> 0)
  bool scale_per_axis = false;            // draw sx and sy independently
  std::array<double, 2> shear_x{0, 0};    // x-shear angle range, degrees (torchvision's shear)
  std::array<double, 2> shear_y{0, 0};    // y-shear angle range, degrees
  double fill = 0.0;                      // value of pixels mapped from outside the image
};

class RandomAffine {
 public:
  explicit RandomAffine(const RandomAffineOptions& options = {});
  /// x: [B, C, H, W] or [C, H, W] (float32/float64) -> same shape.
  Tensor operator()(const Tensor& x, Generator& gen) const;
  /// The forward maps drawn for B images of H x W: [B, 2, 3] = [A | t] in pixel units about
  /// the centre (what operator() would apply with the same generator state).
  Tensor sample_maps(int64_t B, int64_t H, int64_t W, Generator& gen) const;
  const RandomAffineOptions& options() const { return options_; }

 private:
  RandomAffineOptions options_;
};

/// Applies the forward maps [A | t] (pixel units about the centre, [B, 2, 3]) to x [B, C, H, W]
/// by bilinear resampling of the inverse map (grid_sample, align_corners = false); pixels whose
/// source lies outside read `fill`. Differentiable in x and maps.
Tensor affine_transform(const Tensor& x, const Tensor& maps, double fill = 0.0);

}  // namespace kern::data
