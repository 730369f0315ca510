#pragma once
// Element types. float32 is the default; float64 serves gradient checks and small-width
// theory experiments; int64 holds labels and indices. These three are the compute dtypes:
// every op kern has computes in them (see is_compute_dtype).
//
// The others are storage dtypes, the ones checkpoints hold (safetensors F16, BF16, I32, U8,
// BOOL, ...): tensors of them can be created, loaded, saved, viewed, copied, indexed and
// converted with Tensor::to / copy_ (to and from every dtype), but an op that does not
// support one throws kern::Error naming the op and the dtype (kernels dispatch through
// detail::dispatch_float / dispatch_all, whose default branch throws). bfloat16 and float16
// are real storage types: conversion produces and consumes them, so autocast can build on
// them.
//
// 16-bit floats: float32 -> bf16 / f16 rounds to nearest, ties to even; overflow gives +-Inf;
// f16 keeps subnormals; NaN stays NaN (quieted, sign and top payload bits kept). bf16 / f16 ->
// float32 is exact. float64 -> 16-bit goes through float32 (as PyTorch's does: a double
// rounding, off by one ulp in rare ties).
#include <fmt/format.h>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kern {

// New values go at the end: nothing persists the numbers, but keep the old ones stable.
enum class DType {
  Float32, Float64, Int64,                        // compute dtypes
  BFloat16, Float16,                              // 16-bit floats (storage + conversion)
  Int32, Int16, Int8, UInt8, Bool,                // loading, conversion, indexing
  UInt16, UInt32, UInt64, Float8E4M3, Float8E5M2  // safetensors' other dtypes (storage)
};
inline constexpr int kNumDTypes = 15;

constexpr std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::Float64: case DType::Int64: case DType::UInt64: return 8;
    case DType::Float32: case DType::Int32: case DType::UInt32: return 4;
    case DType::BFloat16: case DType::Float16: case DType::Int16: case DType::UInt16: return 2;
    case DType::Int8: case DType::UInt8: case DType::Bool: case DType::Float8E4M3:
    case DType::Float8E5M2: return 1;
  }
  return 0;
}

/// Floating point (as torch.is_floating_point): float32/64, bf16, f16, float8.
constexpr bool is_floating(DType d) {
  return d == DType::Float32 || d == DType::Float64 || d == DType::BFloat16 ||
         d == DType::Float16 || d == DType::Float8E4M3 || d == DType::Float8E5M2;
}
/// The dtypes kern's ops compute in: float32, float64, int64.
constexpr bool is_compute_dtype(DType d) {
  return d == DType::Float32 || d == DType::Float64 || d == DType::Int64;
}

constexpr std::string_view dtype_name(DType d) {
  switch (d) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int64: return "int64";
    case DType::BFloat16: return "bfloat16";
    case DType::Float16: return "float16";
    case DType::Int32: return "int32";
    case DType::Int16: return "int16";
    case DType::Int8: return "int8";
    case DType::UInt8: return "uint8";
    case DType::Bool: return "bool";
    case DType::UInt16: return "uint16";
    case DType::UInt32: return "uint32";
    case DType::UInt64: return "uint64";
    case DType::Float8E4M3: return "float8_e4m3fn";
    case DType::Float8E5M2: return "float8_e5m2";
  }
  return "?";
}

/// True when converting `v` to int64 is defined: finite and in [-2^63, 2^63). Converting
/// NaN, an infinity or a value out of that range is undefined behaviour in C++; kern checks
/// with this first and throws kern::Error naming the op and the value instead.
constexpr bool fits_int64(double v) { return v >= -0x1p63 && v < 0x1p63; }

// ---------------------------------------------------------------- 16-bit float bits

/// float32 -> bfloat16 bits, round to nearest even (the upper 16 bits, rounded).
constexpr uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);  // quiet NaN
  uint32_t upper = x >> 16;
  const uint32_t rest = x & 0xFFFFu;  // the dropped bits, compared with half an ulp (0x8000)
  if (rest > 0x8000u || (rest == 0x8000u && (upper & 1u))) ++upper;  // carries into the exponent: Inf
  return static_cast<uint16_t>(upper);
}
constexpr float bf16_bits_to_float(uint16_t b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

/// float32 -> IEEE binary16 bits, round to nearest even; subnormals kept; >= 65520 -> Inf.
constexpr uint16_t float_to_f16_bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u)  // NaN: quiet bit set, top 9 payload bits kept
    return static_cast<uint16_t>(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
  if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520 (incl. Inf)
  const uint32_t e = ax >> 23;
  if (e < 113) {  // below 2^-14: an f16 subnormal k * 2^-24 (or zero)
    if (e < 102) return sign;  // below 2^-25: rounds to zero (2^-25 itself ties to even 0)
    const uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;  // value = m * 2^(e-150)
    const uint32_t shift = 126 - e;                     // k = m / 2^shift, shift in [14, 24]
    uint32_t k = m >> shift;
    const uint32_t rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (k & 1u))) ++k;  // may reach 0x400: the smallest normal
    return static_cast<uint16_t>(sign | k);
  }
  uint32_t h = ((e - 112) << 10) | ((ax & 0x7FFFFFu) >> 13);
  const uint32_t rest = ax & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into the exponent
  return static_cast<uint16_t>(sign | h);
}
constexpr float f16_bits_to_float(uint16_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x8000u) << 16;
  const uint32_t e = (b >> 10) & 0x1Fu, m = b & 0x3FFu;
  if (e == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (m << 13));  // Inf, NaN
  if (e == 0) {  // zero or subnormal m * 2^-24 (exact in float)
    const float v = static_cast<float>(m) * 0x1p-24f;
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((e + 112) << 23) | (m << 13));
}

/// bfloat16 and float16 values: 16 bits of storage, converting to and from float.
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit constexpr bf16(float f) : bits(float_to_bf16_bits(f)) {}
  static constexpr bf16 from_bits(uint16_t b) { bf16 v; v.bits = b; return v; }
  constexpr operator float() const { return bf16_bits_to_float(bits); }
};
struct f16 {
  uint16_t bits = 0;
  f16() = default;
  explicit constexpr f16(float f) : bits(float_to_f16_bits(f)) {}
  static constexpr f16 from_bits(uint16_t b) { f16 v; v.bits = b; return v; }
  constexpr operator float() const { return f16_bits_to_float(bits); }
};

/// float8 (OCP FP8) values, read-only: e4m3fn (bias 7, no Inf, S.1111.111 is NaN) and e5m2
/// (the upper byte of an f16). kern decodes them; converting to them throws.
struct f8e4m3 {
  uint8_t bits = 0;
  operator float() const {
    const float s = (bits & 0x80) ? -1.0f : 1.0f;
    const int e = (bits >> 3) & 0xF, m = bits & 0x7;
    if (e == 0xF && m == 0x7) return std::bit_cast<float>(0x7FC00000u) * s;
    if (e == 0) return s * std::ldexp(static_cast<float>(m), -9);  // subnormal m * 2^-6 / 8
    return s * std::ldexp(static_cast<float>(8 + m), e - 10);
  }
};
struct f8e5m2 {
  uint8_t bits = 0;
  operator float() const { return f16_bits_to_float(static_cast<uint16_t>(bits << 8)); }
};

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::Float32; }
template <> constexpr DType dtype_of<double>() { return DType::Float64; }
template <> constexpr DType dtype_of<int64_t>() { return DType::Int64; }
template <> constexpr DType dtype_of<bf16>() { return DType::BFloat16; }
template <> constexpr DType dtype_of<f16>() { return DType::Float16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::Int32; }
template <> constexpr DType dtype_of<int16_t>() { return DType::Int16; }
template <> constexpr DType dtype_of<int8_t>() { return DType::Int8; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::UInt8; }
template <> constexpr DType dtype_of<bool>() { return DType::Bool; }
template <> constexpr DType dtype_of<uint16_t>() { return DType::UInt16; }
template <> constexpr DType dtype_of<uint32_t>() { return DType::UInt32; }
template <> constexpr DType dtype_of<uint64_t>() { return DType::UInt64; }
template <> constexpr DType dtype_of<f8e4m3>() { return DType::Float8E4M3; }
template <> constexpr DType dtype_of<f8e5m2>() { return DType::Float8E5M2; }

}  // namespace kern

template <>
struct fmt::formatter<kern::DType> : fmt::formatter<std::string_view> {
  auto format(kern::DType d, format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(kern::dtype_name(d), ctx);
  }
};
