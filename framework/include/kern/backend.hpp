#pragma once
// Which implementation runs the primitives that have two: the fast path (oneDNN and kern's
// direct kernels, float32) or the reference path (Eigen / plain loops, any dtype; the test
// oracle). float64 always runs the reference path.
#include <array>
#include <cstddef>
#include <cstdint>

namespace kern {

enum class Backend { Fast, Reference };

void set_backend(Backend b);
Backend get_backend();

/// Selects a backend in a scope.
class BackendGuard {
 public:
  explicit BackendGuard(Backend b) : prev_(get_backend()) { set_backend(b); }
  ~BackendGuard() { set_backend(prev_); }
  BackendGuard(const BackendGuard&) = delete;
  BackendGuard& operator=(const BackendGuard&) = delete;

 private:
  Backend prev_;
};

namespace backend {

/// The primitive families with a fast and a reference implementation. DepthwiseConv2d is
/// kern's direct kernel for plain depthwise convolutions (forward and both backwards); its
/// reference is the general convolution loop run on such a geometry.
enum class Primitive {
  Gemm,             // matmul / mm / bmm / linear: oneDNN sgemm | Eigen
  Conv2d,           // conv2d and its two backward kernels: oneDNN | kern's loops
  DepthwiseConv2d,  // the same on a plain depthwise geometry: kern's direct kernels | loops
  Eltwise,          // exp, log, sqrt, abs, tanh, sigmoid, relu, gelu (+ gelu backward)
  Softmax,          // softmax and log_softmax forward
  LayerNorm,        // layer_norm forward
  MaxPool2d,        // max_pool2d forward
  AvgPool2d,        // avg_pool2d / adaptive_avg_pool2d forward (and their adjoints)
  Count
};
enum class Path { Fast, Reference };

/// How often each implementation ran (calls into it, all threads) since the process started.
/// Counting is one relaxed atomic increment per primitive call, so it stays on in release
/// builds; tests take a snapshot before and after a call to prove which path ran:
///   auto before = kern::backend::path_counts();
///   ... run an op ...
///   auto ran = kern::backend::path_counts() - before;
///   REQUIRE(ran(Primitive::Conv2d, Path::Fast) > 0);
struct PathCounts {
  std::array<std::array<uint64_t, 2>, static_cast<std::size_t>(Primitive::Count)> n{};
  uint64_t operator()(Primitive p, Path path) const { return n[static_cast<std::size_t>(p)][static_cast<std::size_t>(path)]; }
  /// Sum over every primitive.
  uint64_t total(Path path) const;
  PathCounts operator-(const PathCounts& earlier) const;
};
PathCounts path_counts();
const char* primitive_name(Primitive p);

}  // namespace backend
}  // namespace kern
