// Per-primitive counters of which implementation ran (kern/backend.hpp): one relaxed atomic
// increment per call, read by tests that must prove the fast path (or the reference) ran.
#include <atomic>

#include "backend.hpp"

namespace kern::backend {

namespace {
constexpr size_t kPrimitives = static_cast<size_t>(Primitive::Count);
std::atomic<uint64_t> g_counts[kPrimitives][2];
}  // namespace

void count_path(Primitive p, Path path) {
  g_counts[static_cast<size_t>(p)][static_cast<size_t>(path)].fetch_add(1, std::memory_order_relaxed);
}

PathCounts path_counts() {
  PathCounts c;
  for (size_t p = 0; p < kPrimitives; ++p)
    for (size_t k = 0; k < 2; ++k) c.n[p][k] = g_counts[p][k].load(std::memory_order_relaxed);
  return c;
}

uint64_t PathCounts::total(Path path) const {
  uint64_t s = 0;
  for (auto& row : n) s += row[static_cast<size_t>(path)];
  return s;
}

PathCounts PathCounts::operator-(const PathCounts& earlier) const {
  PathCounts d;
  for (size_t p = 0; p < kPrimitives; ++p)
    for (size_t k = 0; k < 2; ++k) d.n[p][k] = n[p][k] - earlier.n[p][k];
  return d;
}

const char* primitive_name(Primitive p) {
  switch (p) {
    case Primitive::Gemm: return "gemm";
    case Primitive::Conv2d: return "conv2d";
    case Primitive::DepthwiseConv2d: return "depthwise_conv2d";
    case Primitive::Eltwise: return "eltwise";
    case Primitive::Softmax: return "softmax";
    case Primitive::LayerNorm: return "layer_norm";
    case Primitive::MaxPool2d: return "max_pool2d";
    case Primitive::AvgPool2d: return "avg_pool2d";
    case Primitive::Count: break;
  }
  return "?";
}

}  // namespace kern::backend
