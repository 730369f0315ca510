#pragma once
// Softmax family (the elementwise activations live in elementwise.hpp).
#include <kern/tensor.hpp>

namespace kern {

/// x: [*] -> [*], exp(x) / sum(exp(x), dim), numerically stable (the row max is subtracted).
/// float32 runs on oneDNN on the fast backend; the backward is differentiable to any order.
Tensor softmax(const Tensor& x, int64_t dim);
/// x: [*] -> [*], x - logsumexp(x, dim).
Tensor log_softmax(const Tensor& x, int64_t dim);

}  // namespace kern
