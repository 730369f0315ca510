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

/// What a node may record for t when its backward does not read t's values: t itself, or a
/// storage-less alias carrying t's grad_fn and metadata, so that t's float32 buffer is freed
/// once nothing else holds it (not for leaves that require grad, nor when t's producer reads
/// its output).
Tensor autocast_graph_input(const Tensor& t);

/// `values` (bf16, computed from source without recording) recorded as the conversion of
/// `source` (a tensor or autocast_graph_input's alias); returns `values` itself when grad mode
/// is off or source needs no gradient.
Tensor autocast_record_cast(const Tensor& values, const Tensor& source);

/// t (float32) as a new bf16 tensor, recorded as a differentiable conversion whose backward
/// converts the gradient back to float32. The node does not keep t's storage alive when t is
/// an intermediate (the backward reads no values), so only the bf16 copy is saved.
Tensor autocast_cast(const Tensor& t);

}  // namespace kern::detail
