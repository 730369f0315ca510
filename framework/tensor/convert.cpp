// Element conversion between every pair of dtypes (Tensor::to, copy_, fill_): the range
// check that must come before (so that nothing converts with undefined behaviour, and no
// exception is thrown inside an OpenMP region) and the strided conversion loop.
#include <kern/autograd.hpp>
#include <kern/tensor.hpp>

#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "../ops/kernel_utils.hpp"

namespace kern::detail {

namespace {

template <typename T>
constexpr bool is_narrow_float = std::is_same_v<T, bf16> || std::is_same_v<T, f16> ||
                                 std::is_same_v<T, f8e4m3> || std::is_same_v<T, f8e5m2>;
template <typename T>
constexpr bool is_float8 = std::is_same_v<T, f8e4m3> || std::is_same_v<T, f8e5m2>;
template <typename T>
constexpr bool is_int = std::is_integral_v<T> && !std::is_same_v<T, bool>;

/// One element, TI -> TO. Narrow floats go through float32; to a 16-bit float rounds to
/// nearest even (from float64 via float32, as PyTorch); to bool is != 0 (NaN is true).
/// Integer targets assume check_convertible has passed.
template <typename TO, typename TI>
inline TO convert_elem(TI v) {
  if constexpr (std::is_same_v<TO, TI>) {
    return v;
  } else if constexpr (is_narrow_float<TI>) {
    return convert_elem<TO, float>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<TO, bool>) {
    return v != TI(0);
  } else if constexpr (std::is_same_v<TO, bf16> || std::is_same_v<TO, f16>) {
    return TO(static_cast<float>(v));
  } else if constexpr (is_float8<TO>) {
    return TO{};  // unreachable: check_convertible rejects conversions to float8
  } else {
    return static_cast<TO>(v);
  }
}

/// The integer range of TO as [lo, hi_excl) in double; both bounds are exact powers of two
/// (or 0), so `trunc(v) >= lo && trunc(v) < hi_excl` decides exactly, and rejects NaN.
template <typename TO>
constexpr std::pair<double, double> int_range() {
  constexpr int bits = std::numeric_limits<TO>::digits;  // 63 for int64, 64 for uint64
  if constexpr (std::is_signed_v<TO>) return {-std::ldexp(1.0, bits), std::ldexp(1.0, bits)};
  else return {0.0, std::ldexp(1.0, bits)};
}

/// Does every value of the source dtype TI fit integer type TO?
template <typename TO, typename TI>
constexpr bool always_fits() {
  if constexpr (std::is_same_v<TI, bool>) return true;
  else if constexpr (!std::is_integral_v<TI>) return false;
  else
    return std::in_range<TO>(std::numeric_limits<TI>::min()) &&
           std::in_range<TO>(std::numeric_limits<TI>::max());
}

template <typename TO>
void check_into_int(const Tensor& src, const char* op) {
  dispatch_storage(src.dtype(), [&]<typename TI>() {
    if constexpr (always_fits<TO, TI>()) {
      return;
    } else {
      NoGradGuard ng;
      const Tensor c = src.contiguous();
      const TI* p = static_cast<const TI*>(c.raw_data());
      const int64_t n = c.numel();
      const DType target = dtype_of<TO>();
      for (int64_t i = 0; i < n; ++i) {
        bool ok;
        if constexpr (std::is_integral_v<TI>) {
          ok = std::in_range<TO>(p[i]);
        } else {
          const double t = std::trunc(static_cast<double>(p[i]));
          ok = t >= int_range<TO>().first && t < int_range<TO>().second;  // false for NaN
        }
        if (!ok) {
          const auto [lo, hi] = int_range<TO>();
          throw Error(fmt::format(
              "{}: cannot convert {} (element {} of a {} tensor of shape {}) to {}: only {} values in "
              "[{}, {}) convert", op, convert_elem<double, TI>(p[i]), i, src.dtype(),
              src.shape(), target, std::is_integral_v<TI> ? "" : "finite", lo, hi));
        }
      }
    }
  });
}

}  // namespace

void check_convertible(const Tensor& src, DType target, const char* op) {
  if (src.dtype() == target) return;
  if (target == DType::Float8E4M3 || target == DType::Float8E5M2)
    throw Error(fmt::format("{}: converting {} to {} is not supported (kern reads float8 tensors "
                            "but does not round to them)", op, src.dtype(), target));
  if (is_floating(target) || target == DType::Bool) return;
  dispatch_storage(target, [&]<typename TO>() {
    if constexpr (is_int<TO>) check_into_int<TO>(src, op);
  });
}

namespace {

// Contiguous float32 <-> bf16, the conversions bf16 autocast runs on every product's operands
// and gradients: branch-free (so the loops vectorize) and threaded over large tensors. Same
// results as float_to_bf16_bits / bf16_bits_to_float (round to nearest even, NaN kept quiet).
bool convert_bf16_contiguous(const Tensor& dst, const Tensor& src) {
  if (!dst.is_contiguous() || !src.is_contiguous() || dst.shape() != src.shape()) return false;
  const int64_t n = dst.numel();
  const bool parallel = n >= (int64_t{1} << 16);
  if (dst.dtype() == DType::BFloat16 && src.dtype() == DType::Float32) {
    const uint32_t* s = static_cast<const uint32_t*>(src.raw_data());
    uint16_t* o = static_cast<uint16_t*>(dst.raw_data());
#pragma omp parallel for simd schedule(static) if (parallel)
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t x = s[i];
      const uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
      const uint32_t nan = (x >> 16) | 0x0040u;
      o[i] = static_cast<uint16_t>((x & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded);
    }
    return true;
  }
  if (dst.dtype() == DType::Float32 && src.dtype() == DType::BFloat16) {
    const uint16_t* s = static_cast<const uint16_t*>(src.raw_data());
    uint32_t* o = static_cast<uint32_t*>(dst.raw_data());
#pragma omp parallel for simd schedule(static) if (parallel)
    for (int64_t i = 0; i < n; ++i) o[i] = static_cast<uint32_t>(s[i]) << 16;
    return true;
  }
  return false;
}

}  // namespace

void convert_strided(const Tensor& dst, const Tensor& src) {
  if (convert_bf16_contiguous(dst, src)) return;
  dispatch_storage(dst.dtype(), [&]<typename TO>() {
    dispatch_storage(src.dtype(), [&]<typename TI>() {
      TO* o = static_cast<TO*>(dst.raw_data());
      const TI* s = static_cast<const TI*>(src.raw_data());
      StridedLoop<2> loop(dst.shape(), {dst.strides(), broadcast_strides(src, dst.shape())});
      loop.run([&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
        for (int64_t i = 0; i < n; ++i) o[off[0] + i * st[0]] = convert_elem<TO, TI>(s[off[1] + i * st[1]]);
      });
    });
  });
}

}  // namespace kern::detail
