#pragma once
// Shape: the sizes of a tensor's dimensions, outermost first (PyTorch order: NCHW, [B, C, L]).
#include <fmt/format.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace kern {

struct Shape;

namespace detail {
/// Throws kern::Error: the element count of `shape` does not fit in int64.
[[noreturn]] void throw_numel_overflow(const Shape& shape);
}  // namespace detail

/// Sizes are int64 and every size product is overflow-checked: a shape whose element count
/// (or contiguous strides, or byte size) does not fit in int64 is a kern::Error, never a
/// wrapped-around count. A shape with a 0 size has 0 elements, however large the others are.
struct Shape : std::vector<int64_t> {
  using std::vector<int64_t>::vector;
  Shape() = default;
  Shape(const std::vector<int64_t>& v) : std::vector<int64_t>(v) {}
  /// The element count, or nullopt when the product of the sizes overflows int64.
  /// (0 when any size is 0; negative sizes are multiplied as they are.)
  std::optional<int64_t> checked_numel() const noexcept {
    for (auto s : *this)
      if (s == 0) return 0;
    int64_t n = 1;
    for (auto s : *this)
      if (__builtin_mul_overflow(n, s, &n)) return std::nullopt;
    return n;
  }
  /// The element count; throws kern::Error when it does not fit in int64.
  int64_t numel() const {
    const auto n = checked_numel();
    if (!n) detail::throw_numel_overflow(*this);
    return *n;
  }
  int64_t ndim() const { return static_cast<int64_t>(size()); }
};

/// A list of dimension indices (negative counts from the end, as in PyTorch).
using Dims = std::vector<int64_t>;

/// Contiguous (row-major) strides of a shape, in elements (a size-0 dim counts as 1, as in
/// PyTorch). Throws kern::Error when a stride does not fit in int64.
std::vector<int64_t> contiguous_strides(const Shape& shape);
/// The bytes of `numel` elements of `elem_size` bytes; throws kern::Error naming `op` and the
/// shape when the product does not fit in int64.
int64_t checked_nbytes(const Shape& shape, int64_t elem_size, const char* op);
/// The broadcast of two shapes (NumPy rules); throws naming `op` when they do not broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
/// Wraps a possibly negative dim into [0, ndim); throws naming `op` when out of range.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

}  // namespace kern

template <>
struct fmt::formatter<kern::Shape> {
  constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
  auto format(const kern::Shape& s, format_context& ctx) const {
    auto out = fmt::format_to(ctx.out(), "[");
    for (size_t i = 0; i < s.size(); ++i) out = i ? fmt::format_to(out, ", {}", s[i]) : fmt::format_to(out, "{}", s[i]);
    return fmt::format_to(out, "]");
  }
};
