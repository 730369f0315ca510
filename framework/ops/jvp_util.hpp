#pragma once
// Helpers for the forward-mode rules (kern/forward_ad.hpp) written next to each backward.
// Rules receive the inputs' tangents (undefined = zero) and return the output's tangent.
#include <kern/forward_ad.hpp>
#include <kern/ops.hpp>

#include <initializer_list>

namespace kern::detail {

/// A tangent of a broadcast input, at the output's shape (a view: no copy).
inline Tensor at_shape(const Tensor& t, const Shape& shape) {
  return !t.defined() || t.shape() == shape ? t : expand(t, shape);
}

/// The sum of the defined terms, at `shape`; undefined (zero) when none is defined.
inline Tensor sum_defined(std::initializer_list<Tensor> terms, const Shape& shape) {
  Tensor s;
  for (const Tensor& t : terms)
    if (t.defined()) s = s.defined() ? s + t : t;
  return at_shape(s, shape);
}

/// For an op linear in its one tensor input: J t = op(t).
template <typename F>
JvpRule linear_rule(F op) {
  return JvpRule([op](const JvpContext& c) { return op(c.tangents[0]); });
}

}  // namespace kern::detail
