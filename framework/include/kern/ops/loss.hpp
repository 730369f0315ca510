#pragma once
// Losses. reduction: "mean" (default), "sum" or "none".
#include <kern/tensor.hpp>

#include <string_view>

namespace kern {

/// logits: [N, C], target: [N] int64 class indices -> scalar (or [N] with "none").
/// label_smoothing as in torch.nn.functional.cross_entropy.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, double label_smoothing = 0.0,
                     std::string_view reduction = "mean");
/// log_probs: [N, C], target: [N] int64 -> scalar (or [N]).
Tensor nll_loss(const Tensor& log_probs, const Tensor& target, std::string_view reduction = "mean");
/// mean((input - target)^2) (or sum / none).
Tensor mse_loss(const Tensor& input, const Tensor& target, std::string_view reduction = "mean");

}  // namespace kern
