// bf16 autocast state (thread-local, nestable), the recorded float32 -> bf16 conversion the
// autocast ops use, and memory::saved_activation_bytes.
#include <kern/autocast.hpp>
#include <kern/autograd.hpp>
#include <kern/tensor.hpp>

#include <unordered_set>
#include <vector>

#include "../backend/backend.hpp"
#include "../ops/autocast_internal.hpp"

namespace kern {

namespace {
thread_local DType g_autocast = DType::Float32;  // Float32 = off
}

bool autocast_enabled() { return g_autocast == DType::BFloat16; }
DType autocast_dtype() { return g_autocast; }

AutocastGuard::AutocastGuard(DType dtype, bool enabled) : prev_(g_autocast) {
  KERN_CHECK(dtype == DType::BFloat16 || dtype == DType::Float32, "AutocastGuard: autocast to ", dtype,
             " is not supported (BFloat16 turns autocast on, Float32 turns it off)");
  g_autocast = enabled ? dtype : DType::Float32;
}

AutocastGuard::~AutocastGuard() { g_autocast = prev_; }

std::string autocast_isa() { return backend::bf16_impl_info(); }

namespace detail {

bool autocast_applies(const Tensor& a, const Tensor& b) {
  return g_autocast == DType::BFloat16 && a.dtype() == DType::Float32 && b.dtype() == DType::Float32;
}

Tensor autocast_graph_input(const Tensor& t) {
  // Leaves that require grad are matched by identity (and the module holds them anyway); a
  // producer whose backward reads its output's values (tanh, exp, softmax, ...) needs t alive.
  if (t.is_leaf() && t.requires_grad()) return t;
  if (t.grad_fn() && node_reads_output(*t.grad_fn())) return t;
  auto alias = std::make_shared<TensorImpl>(t.impl());
  alias->storage.reset();
  alias->grad.reset();
  return Tensor(std::move(alias));
}

Tensor autocast_record_cast(const Tensor& values, const Tensor& source) {
  if (!grad_mode_enabled() || !source.requires_grad()) return values;
  // A fresh handle on the values' storage: record_op marks its output, not `values`.
  auto fresh = std::make_shared<TensorImpl>(values.impl());
  fresh->grad.reset();
  fresh->grad_fn.reset();
  fresh->requires_grad = false;
  return record_op("autocast_to_bfloat16", Tensor(std::move(fresh)), {source}, [](const BackwardContext& c) {
    return std::vector<Tensor>{c.grad.to(DType::Float32)};
  }, SavedValues::none());
}

Tensor autocast_cast(const Tensor& t) {
  Tensor out;
  {
    NoGradGuard ng;
    out = t.detach().to(DType::BFloat16);
  }
  // The conversion's backward needs only the gradient, so the node need not keep the float32
  // values: an intermediate is recorded through a storage-less alias that carries its grad_fn
  // (the engine routes gradients by grad_fn), so that t's float32 buffer is freed once nothing
  // else holds it. The engine then hands t's producer a storage-less stand-in for its output.
  if (!grad_mode_enabled() || !t.requires_grad()) return out;
  return autocast_record_cast(out, autocast_graph_input(t));
}

}  // namespace detail

namespace memory {

std::size_t saved_activation_bytes(const Tensor& root) {
  if (!root.defined() || !root.grad_fn()) return 0;
  std::unordered_set<const Node*> seen;
  std::unordered_set<const Storage*> storages;
  std::vector<const Node*> stack{root.grad_fn().get()};
  std::size_t bytes = 0;
  while (!stack.empty()) {
    const Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    for (const Tensor& in : n->inputs()) {
      if (!in.defined()) continue;
      if (in.grad_fn()) stack.push_back(in.grad_fn().get());
      if (in.is_leaf() && in.requires_grad()) continue;  // a parameter
      const Storage* st = in.impl().storage.get();
      if (st && storages.insert(st).second) bytes += st->nbytes;
    }
  }
  return bytes;
}

}  // namespace memory

}  // namespace kern
