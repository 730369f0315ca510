#pragma once
// Element types. float32 is the default; float64 serves gradient checks and small-width
// theory experiments; int64 holds labels and indices.
#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kern {

enum class DType { Float32, Float64, Int64 };

constexpr std::size_t dtype_size(DType d) { return d == DType::Float32 ? 4 : 8; }
constexpr bool is_floating(DType d) { return d != DType::Int64; }
constexpr std::string_view dtype_name(DType d) {
  switch (d) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int64: return "int64";
  }
  return "?";
}

/// True when converting `v` to int64 is defined: finite and in [-2^63, 2^63). Converting
/// NaN, an infinity or a value out of that range is undefined behaviour in C++; kern checks
/// with this first and throws kern::Error naming the op and the value instead.
constexpr bool fits_int64(double v) { return v >= -0x1p63 && v < 0x1p63; }

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::Float32; }
template <> constexpr DType dtype_of<double>() { return DType::Float64; }
template <> constexpr DType dtype_of<int64_t>() { return DType::Int64; }

}  // namespace kern

template <>
struct fmt::formatter<kern::DType> : fmt::formatter<std::string_view> {
  auto format(kern::DType d, format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(kern::dtype_name(d), ctx);
  }
};
