#pragma once
#ifndef KERN_BUILDING_MODELS  // private to kern_models: see CMakeLists.txt (layering)
#error "models/grad_sample/rule_util.hpp is private to kern_models"
#endif
// Helpers shared by the zoo's per-sample gradient rules (models/grad_sample/*.cpp; the
// contract is kern/nn/grad_sample.hpp). Not installed.
#include <kern/error.hpp>
#include <kern/nn/dropout.hpp>
#include <kern/nn/grad_sample.hpp>
#include <kern/nn/module.hpp>

#include <fmt/format.h>

#include <string>

namespace kern::models::grad_sample_detail {

/// Checks what every rule relies on: defined tensors, grad_output shaped like output, one
/// floating dtype, and a batch dim N shared by input and output. `who` names the module type.
inline void check_call(const char* who, const Tensor& input, const Tensor& output, const Tensor& grad_output) {
  KERN_CHECK(input.defined() && output.defined() && grad_output.defined(), who,
             " grad-sample rule: input, output and grad_output must be defined tensors");
  KERN_CHECK(grad_output.shape() == output.shape(), who, " grad-sample rule: grad_output ", grad_output.shape(),
             " must have the output's shape ", output.shape());
  KERN_CHECK(is_floating(output.dtype()) && grad_output.dtype() == output.dtype(), who,
             " grad-sample rule: output (", output.dtype(), ") and grad_output (", grad_output.dtype(),
             ") must have the same floating dtype");
  KERN_CHECK(input.dim() >= 1 && output.dim() >= 1 && input.size(0) == output.size(0), who,
             " grad-sample rule: input ", input.shape(), " and output ", output.shape(),
             " must share the batch dim N (dim 0)");
}

/// A DropPath / Dropout child that is active (training mode, rate > 0) draws a random mask the
/// rule cannot know: per-sample gradients are then undefined for the recomputation.
inline void check_inactive(const char* who, const nn::Module* m, const std::string& child) {
  if (m == nullptr || !m->is_training()) return;
  double p = 0.0;
  if (auto* dp = dynamic_cast<const nn::DropPath*>(m)) p = dp->options().drop_prob();
  if (auto* d = dynamic_cast<const nn::Dropout*>(m)) p = d->options().p();
  KERN_CHECK(p == 0.0, who, " grad-sample rule: ", child, " (", m->name(), ", p = ", p,
             ") is active in training mode: its random mask is unknown to the rule; call eval()");
}

/// The per-sample gradient of the stored tensor from the per-sample gradient of what forward
/// used (stored tensor x multiplier, see nn::Param).
inline Tensor times_multiplier(const Tensor& g, double multiplier) { return multiplier == 1.0 ? g : g * multiplier; }

}  // namespace kern::models::grad_sample_detail
