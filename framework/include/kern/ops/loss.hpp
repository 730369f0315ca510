#pragma once
// Losses. reduction: "mean" (default), "sum" or "none".
#include <kern/tensor.hpp>

#include <string_view>

namespace kern {

/// logits: [N, C], target: [N] int64 class indices in [0, C) -> scalar (or [N] with "none").
/// label_smoothing eps as in torch.nn.functional.cross_entropy:
/// loss_i = (1 - eps) * nll_i + eps * mean_c(-log_softmax(logits)[i, c]).
/// A label outside [0, C) throws (there is no ignore_index).
Tensor cross_entropy(const Tensor& logits, const Tensor& target, double label_smoothing = 0.0,
                     std::string_view reduction = "mean");
/// log_probs: [N, C], target: [N] int64 -> scalar (or [N]).
Tensor nll_loss(const Tensor& log_probs, const Tensor& target, std::string_view reduction = "mean");
/// mean((input - target)^2) (or sum / none); input and target must have the same shape.
Tensor mse_loss(const Tensor& input, const Tensor& target, std::string_view reduction = "mean");

}  // namespace kern
