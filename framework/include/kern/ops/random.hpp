#pragma once
// Random ops driven by an explicit Generator (default_generator() when null).
#include <kern/tensor.hpp>

namespace kern {

/// Zeroes elements with probability p and scales the rest by 1/(1-p) when training; p must be
/// in [0, 1] (p = 1 gives zeros). The mask is drawn sequentially from `gen` in row-major
/// order: the same seed gives the same mask on any thread count. Eval mode returns x.
Tensor dropout(const Tensor& x, double p, bool training, Generator* gen = nullptr);

}  // namespace kern
