#pragma once
// Gradient clipping with PyTorch's semantics (torch.nn.utils.clip_grad_norm_ / _value_).
// Parameters whose .grad is undefined are skipped. The clipped gradient replaces .grad
// (a new tensor: a .grad may share storage with other tensors of the graph).
#include <kern/tensor.hpp>

#include <limits>
#include <vector>

namespace kern::optim {

/// The norm of all gradients together, as if concatenated (norm_type = p >= 0 or infinity).
/// When max_norm / (total + 1e-6) < 1 every gradient is multiplied by that factor.
/// Returns the total norm before clipping (0 when no parameter has a gradient). With
/// error_if_nonfinite, a NaN/Inf total norm throws instead of scaling.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm,
                       double norm_type = 2.0, bool error_if_nonfinite = false);

/// Clamps every gradient element to [-clip_value, clip_value].
void clip_grad_value_(const std::vector<Tensor>& params, double clip_value);

/// The same total norm without modifying anything.
double grad_norm(const std::vector<Tensor>& params, double norm_type = 2.0);

inline constexpr double inf = std::numeric_limits<double>::infinity();

}  // namespace kern::optim
