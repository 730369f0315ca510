#pragma once
// Bilinear resampling of images at arbitrary points (torch.nn.functional.grid_sample /
// affine_grid semantics), differentiable with respect to the input AND the grid to any order:
// grid_sample is a composite of gather (whose backward is scatter_add, whose backward is
// gather) and elementwise ops, so create_graph derivatives are exact.
//
//   Tensor theta = ...;                                    // [N, 2, 3]
//   Tensor grid = kern::affine_grid(theta, {N, C, H, W});  // [N, H, W, 2]
//   Tensor y = kern::grid_sample(x, grid);                 // [N, C, H, W]
#include <kern/tensor.hpp>

#include <string>

namespace kern {

struct GridSampleOptions {
  /// Only "bilinear".
  std::string mode = "bilinear";
  /// Only "zeros": samples outside the image read 0.
  std::string padding_mode = "zeros";
  /// true: -1 and 1 are the centres of the corner pixels; false (PyTorch's default): the
  /// outer edges of the corner pixels.
  bool align_corners = false;
};

/// input: [N, C, H, W], grid: [N, Ho, Wo, 2] with (x, y) = (column, row) normalized to
/// [-1, 1] -> [N, C, Ho, Wo]:
///   out[n, c, i, j] = sum over the 4 neighbours (r, s) of (iy, ix) of
///                     (1 - |ix - s|) (1 - |iy - r|) input[n, c, r, s]   (0 outside)
///   ix = align_corners ? (x + 1) / 2 (W - 1) : ((x + 1) W - 1) / 2   (iy likewise with H)
/// Same dtype for both (float32 or float64). The derivative in the grid is the one-sided
/// (right) derivative where a coordinate is exactly an integer, as PyTorch.
Tensor grid_sample(const Tensor& input, const Tensor& grid, const GridSampleOptions& options = {});

/// theta: [N, 2, 3] (maps output (x, y, 1) to input (x, y), normalized coordinates), size:
/// {N, C, H, W} -> grid [N, H, W, 2] for grid_sample. Differentiable in theta.
Tensor affine_grid(const Tensor& theta, const Shape& size, bool align_corners = false);

}  // namespace kern
