// flip and rot90: strided copies of a reversed / transposed view of the input, with their
// backwards (flip -> flip, rot90(k) -> rot90(-k)), so derivatives of any order are exact.
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include <string>

#include "kernel_utils.hpp"
#include "jvp_util.hpp"

namespace kern {

using G = std::vector<Tensor>;

namespace {

// Copies the view of x given by (shape, strides, offset) -- strides may be negative, offset is
// the element (relative to x's element 0) that the view's index 0 lands on -- into a new
// contiguous tensor.
Tensor copy_view(const Tensor& x, const Shape& shape, const std::vector<int64_t>& strides,
                 int64_t offset) {
  Tensor out = empty(shape, x.dtype());
  if (out.numel() == 0) return out;
  detail::dispatch_bytes(x.dtype(), [&]<typename T>() {  // moves elements: every dtype
    T* o = static_cast<T*>(out.raw_data());
    const T* src = static_cast<const T*>(x.raw_data()) + offset;
    detail::StridedLoop<2> loop(shape, {contiguous_strides(shape), strides});
    loop.run([&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
      T* oo = o + off[0];
      const T* ss = src + off[1];
      for (int64_t i = 0; i < n; ++i) oo[i * st[0]] = ss[i * st[1]];
    });
  });
  return out;
}

std::string dims_str(const Dims& dims) { return fmt::format("{}", Shape(dims)); }

}  // namespace

Tensor flip(const Tensor& x, const Dims& dims) {
  const int64_t nd = x.dim();
  std::vector<bool> flipped(std::max<int64_t>(nd, 1), false);
  for (int64_t d : dims) {
    KERN_CHECK(d >= -std::max<int64_t>(nd, 1) && d < std::max<int64_t>(nd, 1), "flip: dim ", d,
               " in dims ", dims_str(dims), " is out of range for a tensor of shape ", x.shape(),
               " (", nd, " dims)");
    const int64_t w = wrap_dim(d, nd, "flip");
    KERN_CHECK(!flipped[w], "flip: dim ", d, " appears more than once in dims ", dims_str(dims));
    flipped[w] = true;
  }
  std::vector<int64_t> strides = x.strides();
  int64_t offset = 0;
  for (int64_t d = 0; d < nd; ++d) {
    if (!flipped[d] || x.numel() == 0) continue;  // no elements: no offset (it could overflow)
    offset += (x.shape()[d] - 1) * strides[d];
    strides[d] = -strides[d];
  }
  Tensor out = copy_view(x, x.shape(), strides, offset);
  return record_op("flip", out, {x}, [dims](const BackwardContext& c) { return G{flip(c.grad, dims)}; },
                   SavedValues::none(), detail::linear_rule([dims](const Tensor& t) { return flip(t, dims); }));
}

Tensor rot90(const Tensor& x, int64_t k, const Dims& dims) {
  const int64_t nd = x.dim();
  KERN_CHECK(dims.size() == 2, "rot90: dims must name exactly 2 dims, got ", dims_str(dims));
  KERN_CHECK(nd >= 2, "rot90: input must have at least 2 dims, got shape ", x.shape());
  for (int64_t d : dims)
    KERN_CHECK(d >= -nd && d < nd, "rot90: dim ", d, " in dims ", dims_str(dims),
               " is out of range for a tensor of shape ", x.shape(), " (", nd, " dims)");
  const int64_t d0 = wrap_dim(dims[0], nd, "rot90"), d1 = wrap_dim(dims[1], nd, "rot90");
  KERN_CHECK(d0 != d1, "rot90: dims ", dims_str(dims), " name the same dim ", d0,
             " twice (the rotation plane needs two distinct dims)");
  const int64_t kk = ((k % 4) + 4) % 4;
  const Shape& s = x.shape();
  const auto& st = x.strides();
  Shape shape = s;
  std::vector<int64_t> strides = st;
  int64_t offset = 0;
  // last(d): the offset of the last element along d.
  // (0 without elements: with huge other sizes the product could overflow.)
  auto last = [&](int64_t d) { return x.numel() > 0 ? (s[d] - 1) * st[d] : 0; };
  switch (kk) {
    case 1:  // out[.., i, .., j, ..] = x[.., j, .., s1 - 1 - i, ..]
      shape[d0] = s[d1], shape[d1] = s[d0];
      strides[d0] = -st[d1], strides[d1] = st[d0];
      offset = last(d1);
      break;
    case 2:  // out[.., i, .., j, ..] = x[.., s0 - 1 - i, .., s1 - 1 - j, ..]
      strides[d0] = -st[d0], strides[d1] = -st[d1];
      offset = last(d0) + last(d1);
      break;
    case 3:  // out[.., i, .., j, ..] = x[.., s0 - 1 - j, .., i, ..]
      shape[d0] = s[d1], shape[d1] = s[d0];
      strides[d0] = st[d1], strides[d1] = -st[d0];
      offset = last(d0);
      break;
    default: break;  // k = 0: a copy
  }
  Tensor out = copy_view(x, shape, strides, offset);
  const Dims dd = dims;
  return record_op("rot90", out, {x},
                   [k, dd](const BackwardContext& c) { return G{rot90(c.grad, -k, dd)}; },
                   SavedValues::none(), detail::linear_rule([k, dd](const Tensor& t) { return rot90(t, k, dd); }));
}

}  // namespace kern
