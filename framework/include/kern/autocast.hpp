#pragma once
// Mixed precision: kern's torch.autocast("cpu", dtype=torch.bfloat16).
//
//   {
//     kern::AutocastGuard guard(kern::DType::BFloat16);
//     auto loss = kern::nn::cross_entropy(model->forward(x), y);   // forward under autocast
//   }
//   loss.backward();                                               // grads are float32
//
// Inside the region, mm, bmm, matmul, linear and conv2d (dense, grouped, depthwise) with
// float32 operands convert their input and weight to bfloat16 through a recorded,
// differentiable conversion (its backward converts the gradient back to float32) and run on
// oneDNN's bf16 kernels with float32 accumulation. Everything else (norms, softmax, losses,
// reductions, elementwise ops) stays float32. linear records the conversions and the product
// as one node ("linear_autocast") whose gradients come out in float32 straight from the bf16
// GEMMs. Parameters stay float32 master weights and their .grad is float32.
//
// Output dtype: kern's bf16 products return **float32** (PyTorch returns bf16): the oneDNN
// primitive accumulates in float32 and writes float32, so every op downstream (layer_norm,
// softmax, losses, residual adds) keeps working without casts and nothing is rounded twice.
// The backward of a bf16 product converts the incoming float32 gradient to bf16 and runs its
// GEMMs / convolutions in bf16 too (as PyTorch's autocast backward does); it is built from
// kern's differentiable ops, so higher-order derivatives through an autocast region work.
//
// Memory: a product that ran in bf16 keeps only its bf16 operands for backward (half the
// bytes of the float32 input); the conversion node does not keep the float32 activation.
// memory::saved_activation_bytes(loss) shows it.
//
// The state is thread-local (as PyTorch's): a guard affects the thread that made it.
// Guards nest; AutocastGuard(DType::Float32) or AutocastGuard(DType::BFloat16, false)
// disables autocast inside a region (torch.autocast(enabled=False)). Float16 autocast is not
// supported (kern::Error).
#include <kern/dtype.hpp>

#include <cstddef>
#include <string>

namespace kern {

class Tensor;

/// True when ops on this thread run under bf16 autocast.
bool autocast_enabled();
/// BFloat16 under autocast, Float32 otherwise.
DType autocast_dtype();

class AutocastGuard {
 public:
  /// dtype BFloat16 (enabled = true) turns autocast on until the guard dies; Float32 or
  /// enabled = false turns it off. Any other dtype throws kern::Error.
  explicit AutocastGuard(DType dtype, bool enabled = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  DType prev_;
};

/// What oneDNN dispatches for kern's bf16 products on this CPU, e.g.
/// "cpu isa avx512_core_bf16; matmul brg:avx512_core_bf16; conv brg:avx512_core_bf16": the
/// effective ISA and the implementation names of a probe matmul and convolution. A name
/// without "bf16" or "amx" in it means oneDNN emulates bf16 (or falls back) on this CPU.
std::string autocast_isa();

namespace memory {

/// Bytes of the tensors the autograd graph behind `root` keeps for backward: the distinct
/// storages held by every node reachable from root.grad_fn(), except leaves that require
/// grad (parameters, counted by the model). 0 for a tensor without a graph.
std::size_t saved_activation_bytes(const Tensor& root);

}  // namespace memory

}  // namespace kern
