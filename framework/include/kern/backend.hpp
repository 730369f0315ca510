#pragma once
// Which implementation runs the primitives that have two: the fast path (oneDNN and kern's
// direct kernels, float32) or the reference path (Eigen / plain loops, any dtype; the test
// oracle). float64 always runs the reference path.
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

}  // namespace kern
