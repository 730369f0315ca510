#pragma once
// Softmax family (the elementwise activations live in elementwise.hpp).
#include <kern/tensor.hpp>

namespace kern {

Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);

}  // namespace kern
