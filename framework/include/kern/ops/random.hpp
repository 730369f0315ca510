#pragma once
// Random ops driven by an explicit Generator (default_generator() when null).
#include <kern/tensor.hpp>

namespace kern {

/// Zeroes elements with probability p and scales the rest by 1/(1-p) when training.
Tensor dropout(const Tensor& x, double p, bool training, Generator* gen = nullptr);

}  // namespace kern
