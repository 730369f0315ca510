#pragma once
// flip and rot90 (torch.flip / torch.rot90 semantics). Both return new contiguous tensors
// (copies, as PyTorch's flip) and are differentiable to any order: the backward of flip is
// flip, the backward of rot90(k) is rot90(-k).
#include <kern/tensor.hpp>

namespace kern {

/// Reverses the order of elements along each dim in `dims` (negative dims count from the end;
/// a dim may appear once). x: [...] -> same shape. Any dtype.
///   out[..., i, ...] = x[..., n - 1 - i, ...] along every flipped dim of size n.
Tensor flip(const Tensor& x, const Dims& dims);

/// Rotates by k * 90 degrees in the plane of `dims` (two distinct dims), from the first dim
/// towards the second, as torch.rot90: k = 1 is flip(dims[1]) then transpose(dims[0], dims[1]).
/// x: [..., A, ..., B, ...] -> [..., B, ..., A, ...] for odd k (same shape for even k).
/// For the default dims {-2, -1} and k = 1: out[..., i, j] = x[..., j, W - 1 - i]
/// (counter-clockwise when row 0 is drawn at the top). Any integer k (taken mod 4).
Tensor rot90(const Tensor& x, int64_t k = 1, const Dims& dims = {-2, -1});

}  // namespace kern
