#pragma once
// Shape: the sizes of a tensor's dimensions, outermost first (PyTorch order: NCHW, [B, C, L]).
#include <fmt/format.h>

#include <cstdint>
#include <vector>

namespace kern {

struct Shape : std::vector<int64_t> {
  using std::vector<int64_t>::vector;
  Shape() = default;
  Shape(const std::vector<int64_t>& v) : std::vector<int64_t>(v) {}
  int64_t numel() const {
    int64_t n = 1;
    for (auto s : *this) n *= s;
    return n;
  }
  int64_t ndim() const { return static_cast<int64_t>(size()); }
};

/// A list of dimension indices (negative counts from the end, as in PyTorch).
using Dims = std::vector<int64_t>;

/// Contiguous (row-major) strides of a shape, in elements.
std::vector<int64_t> contiguous_strides(const Shape& shape);
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
