#pragma once
#ifndef KERN_BUILDING_FRAMEWORK  // private to kern_core: see CMakeLists.txt (layering)
#error "framework/ops/autocast_internal.hpp is private to kern_core; include <kern/autocast.hpp>"
#endif
// How the autocast ops (mm, bmm, linear, conv2d) enter bf16: framework/autograd/autocast.cpp.
#include <kern/autocast.hpp>
#include <kern/autograd.hpp>
#include <kern/tensor.hpp>

namespace kern::detail {

/// Autocast is on and both operands are float32: the op reruns on autocast_cast()'s results.
bool autocast_applies(const Tensor& a, const Tensor& b);

/// Does the backward of node n read its output's values (SavedValues::output)? Defined in
/// framework/autograd/engine.cpp.
bool node_reads_output(const Node& n);

/// t (float32) as a new bf16 tensor, recorded as a differentiable conversion whose backward
/// converts the gradient back to float32. The node does not keep t's storage alive when t is
/// an intermediate (the backward reads no values), so only the bf16 copy is saved.
Tensor autocast_cast(const Tensor& t);

}  // namespace kern::detail
