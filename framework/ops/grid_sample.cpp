// grid_sample (bilinear, zeros padding) and affine_grid. grid_sample is a composite: the
// integer corner indices and the in-bounds masks are constants computed from the grid's
// values; the bilinear weights are differentiable functions of the grid; the corner values come
// from gather. Its derivatives of every order are therefore those of gather / scatter_add and
// elementwise ops (exact double backward in input and grid, the mixed terms included).
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include <algorithm>
#include <cmath>

#include "kernel_utils.hpp"

namespace kern {

namespace {

// The unnormalized coordinate: [-1, 1] -> pixel index space of a size-n axis.
Tensor unnormalize(const Tensor& g, int64_t n, bool align_corners) {
  if (align_corners) return (g + 1.0) * (0.5 * static_cast<double>(n - 1));
  return ((g + 1.0) * static_cast<double>(n) - 1.0) * 0.5;
}

// floor of a coordinate tensor (values only, no graph): as the dtype and as int64. Non-finite
// coordinates get a far-away corner (every neighbour is out of bounds).
struct Floor {
  Tensor value;  // same dtype as the coordinate
  std::vector<int64_t> index;
};
Floor floor_of(const Tensor& t) {
  const Tensor c = t.detach().contiguous();
  Floor f;
  f.value = empty(c.shape(), c.dtype());
  f.index.resize(c.numel());
  detail::dispatch_float(c.dtype(), "grid_sample", [&]<typename T>() {
    const T* p = c.data_ptr<T>();
    T* o = f.value.data_ptr<T>();
    for (int64_t i = 0; i < c.numel(); ++i) {
      const double v = static_cast<double>(p[i]);
      // |v| > 2^40 is far outside any image: clamp before the int conversion
      const double fl = std::isfinite(v) ? std::floor(std::clamp(v, -0x1p40, 0x1p40)) : -0x1p40;
      o[i] = static_cast<T>(fl);
      f.index[i] = static_cast<int64_t>(fl);
    }
  });
  return f;
}

}  // namespace

Tensor grid_sample(const Tensor& input, const Tensor& grid, const GridSampleOptions& o) {
  KERN_CHECK(o.mode == "bilinear", "grid_sample: mode '", o.mode, "' is not supported (only 'bilinear')");
  KERN_CHECK(o.padding_mode == "zeros", "grid_sample: padding_mode '", o.padding_mode,
             "' is not supported (only 'zeros')");
  KERN_CHECK(input.dim() == 4, "grid_sample: input must be [N, C, H, W], got ", input.shape());
  KERN_CHECK(grid.dim() == 4 && grid.size(3) == 2, "grid_sample: grid must be [N, Ho, Wo, 2], got ",
             grid.shape());
  KERN_CHECK(grid.size(0) == input.size(0), "grid_sample: grid ", grid.shape(), " and input ",
             input.shape(), " have different batch sizes");
  KERN_CHECK(input.dtype() == grid.dtype() && is_floating(input.dtype()), "grid_sample: input (",
             input.dtype(), ") and grid (", grid.dtype(), ") must have the same floating dtype");
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Ho = grid.size(1), Wo = grid.size(2), P = Ho * Wo;
  KERN_CHECK(H > 0 && W > 0, "grid_sample: input ", input.shape(), " has an empty spatial dim");
  if (N == 0 || C == 0 || P == 0) return zeros({N, C, Ho, Wo}, input.dtype());

  const Tensor g = grid.reshape({N, P, 2});
  const Tensor ix = unnormalize(g.select(2, 0), W, o.align_corners);  // [N, P]
  const Tensor iy = unnormalize(g.select(2, 1), H, o.align_corners);
  const Floor fx = floor_of(ix), fy = floor_of(iy);
  const Tensor wx1 = ix - fx.value, wy1 = iy - fy.value;  // differentiable in the grid
  const Tensor wx0 = 1.0 - wx1, wy0 = 1.0 - wy1;
  const Tensor flat = input.reshape({N, C, H * W});
  Tensor out;
  for (int dy = 0; dy < 2; ++dy)
    for (int dx = 0; dx < 2; ++dx) {
      // The corner's flat index (0 where out of bounds) and its in-bounds mask.
      std::vector<int64_t> idx(N * P);
      std::vector<double> mask(N * P);
      for (int64_t k = 0; k < N * P; ++k) {
        const int64_t x = fx.index[k] + dx, y = fy.index[k] + dy;
        const bool in = x >= 0 && x < W && y >= 0 && y < H;
        idx[k] = in ? y * W + x : 0;
        mask[k] = in ? 1.0 : 0.0;
      }
      const Tensor index = from_vector(idx, {N, 1, P}).expand({N, C, P});
      const Tensor m = from_vector(mask, {N, P}).to(input.dtype());
      const Tensor w = (dx ? wx1 : wx0) * (dy ? wy1 : wy0) * m;  // [N, P]
      const Tensor term = gather(flat, 2, index) * w.unsqueeze(1);
      out = out.defined() ? out + term : term;
    }
  return out.reshape({N, C, Ho, Wo});
}

Tensor affine_grid(const Tensor& theta, const Shape& size, bool align_corners) {
  KERN_CHECK(size.size() == 4, "affine_grid: size must be {N, C, H, W}, got ", size);
  KERN_CHECK(theta.dim() == 3 && theta.size(0) == size[0] && theta.size(1) == 2 && theta.size(2) == 3,
             "affine_grid: theta must be [N = ", size[0], ", 2, 3], got ", theta.shape());
  KERN_CHECK(is_floating(theta.dtype()), "affine_grid: theta must be floating, got ", theta.dtype());
  const int64_t N = size[0], H = size[2], W = size[3];
  KERN_CHECK(H > 0 && W > 0, "affine_grid: size ", size, " has an empty spatial dim");
  // Normalized pixel-centre coordinates along an axis of n pixels.
  auto axis = [&](int64_t n) {
    std::vector<double> v(n);
    for (int64_t i = 0; i < n; ++i) {
      if (align_corners) v[i] = n == 1 ? 0.0 : -1.0 + 2.0 * static_cast<double>(i) / static_cast<double>(n - 1);
      else v[i] = (2.0 * static_cast<double>(i) + 1.0) / static_cast<double>(n) - 1.0;
    }
    return v;
  };
  const auto xs = axis(W), ys = axis(H);
  std::vector<double> base(H * W * 3);
  for (int64_t i = 0; i < H; ++i)
    for (int64_t j = 0; j < W; ++j) {
      double* b = &base[(i * W + j) * 3];
      b[0] = xs[j], b[1] = ys[i], b[2] = 1.0;
    }
  const Tensor B = from_vector(base, {1, H * W, 3}).to(theta.dtype()).expand({N, H * W, 3});
  // [N, HW, 3] x [N, 3, 2] -> [N, HW, 2]
  return bmm(B, theta.transpose(1, 2)).reshape({N, H, W, 2});
}

}  // namespace kern
