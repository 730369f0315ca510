#pragma once
// 2-D pooling over [N, C, H, W].
#include <kern/tensor.hpp>

#include <array>

namespace kern {

struct Pool2dParams {
  std::array<int64_t, 2> kernel{2, 2};
  std::array<int64_t, 2> stride{0, 0};  // 0 = the kernel size (PyTorch's default)
  std::array<int64_t, 2> padding{0, 0};
  bool ceil_mode = false;
  bool count_include_pad = true;  // avg_pool2d only
};

/// x: [N, C, H, W] -> [N, C, Ho, Wo]; gradient flows to the first maximum of each window.
Tensor max_pool2d(const Tensor& x, const Pool2dParams& params);
Tensor avg_pool2d(const Tensor& x, const Pool2dParams& params);
/// x: [N, C, H, W] -> [N, C, oh, ow], PyTorch's adaptive window boundaries.
Tensor adaptive_avg_pool2d(const Tensor& x, std::array<int64_t, 2> output_size);

}  // namespace kern
