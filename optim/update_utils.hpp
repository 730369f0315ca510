#pragma once
#ifndef KERN_BUILDING_OPTIM  // private to kern_optim: see CMakeLists.txt (layering)
#error "optim/update_utils.hpp is private to kern_optim; include <kern/optim/...> instead"
#endif
// Internal helpers of optim/*.cpp (not a public header): dtype dispatch and in-place access to
// a parameter's elements as one contiguous array.
#include <kern/autograd.hpp>
#include <kern/tensor.hpp>

#include <string_view>

namespace kern::optim::detail {

/// Calls f.template operator()<T>() with T = float or double, the parameter's dtype.
template <typename F>
void dispatch_float(DType dt, std::string_view op, F&& f) {
  if (dt == DType::Float32) return f.template operator()<float>();
  if (dt == DType::Float64) return f.template operator()<double>();
  throw Error(fmt::format("{}: expected a float32 or float64 tensor, got {}", op, dt));
}

/// Runs f(contiguous tensor) on the parameter's elements and writes them back in place.
/// Parameters are almost always contiguous; a strided one is updated through a copy. Bumps
/// the parameter's version counter (a backward that recorded the old values then throws).
template <typename F>
void update_in_place(const Tensor& param, F&& f) {
  NoGradGuard ng;
  if (param.is_contiguous()) {
    param.bump_version();
    f(param);
    return;
  }
  Tensor work = param.detach().contiguous();
  f(work);
  Tensor(param).copy_(work);
}

/// A zero-filled contiguous buffer shaped and typed like `param`.
inline Tensor zeros_like_param(const Tensor& param) {
  return zeros(param.shape(), param.dtype());
}

}  // namespace kern::optim::detail
