#pragma once
#ifndef KERN_BUILDING_FRAMEWORK  // private to kern_core: see CMakeLists.txt (layering)
#error "framework/ops/kernel_utils.hpp is private to kern_core; include <kern/...> public headers instead"
#endif
// Internal helpers for op implementations: dtype dispatch and strided elementwise loops.
// Not a public header.
#include <kern/autograd.hpp>
#include <kern/tensor.hpp>

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace kern::detail {

/// Calls f.template operator()<T>() for T = float or double.
template <typename F>
decltype(auto) dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::Float32: return f.template operator()<float>();
    case DType::Float64: return f.template operator()<double>();
    default:
      throw Error(fmt::format("{}: expected a floating-point tensor (float32 or float64), got {}",
                              op, dt));
  }
}

/// Calls f.template operator()<T>() for T = float, double or int64_t (the compute dtypes);
/// any other dtype throws kern::Error naming `op` and the dtype.
template <typename F>
decltype(auto) dispatch_all(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::Float32: return f.template operator()<float>();
    case DType::Float64: return f.template operator()<double>();
    case DType::Int64: return f.template operator()<int64_t>();
    default:
      throw Error(fmt::format("{}: {} tensors are not supported (kern computes in float32, float64 "
                              "and int64; convert with .to())", op, dt));
  }
}

/// Calls f.template operator()<T>() with T the storage type of any dtype (kern::bf16, f16,
/// int32_t, bool, ...): for copies and conversions, which move every dtype.
template <typename F>
decltype(auto) dispatch_storage(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: return f.template operator()<float>();
    case DType::Float64: return f.template operator()<double>();
    case DType::Int64: return f.template operator()<int64_t>();
    case DType::BFloat16: return f.template operator()<bf16>();
    case DType::Float16: return f.template operator()<f16>();
    case DType::Int32: return f.template operator()<int32_t>();
    case DType::Int16: return f.template operator()<int16_t>();
    case DType::Int8: return f.template operator()<int8_t>();
    case DType::UInt8: return f.template operator()<uint8_t>();
    case DType::Bool: return f.template operator()<bool>();
    case DType::UInt16: return f.template operator()<uint16_t>();
    case DType::UInt32: return f.template operator()<uint32_t>();
    case DType::UInt64: return f.template operator()<uint64_t>();
    case DType::Float8E4M3: return f.template operator()<f8e4m3>();
    case DType::Float8E5M2: return f.template operator()<f8e5m2>();
  }
  throw Error("dispatch_storage: invalid dtype value");
}

/// Calls f.template operator()<T>() with T an unsigned integer of dtype_size(dt) bytes: for
/// ops that only move elements (index_select, flip, gather), which then work on every dtype.
template <typename F>
decltype(auto) dispatch_bytes(DType dt, F&& f) {
  switch (dtype_size(dt)) {
    case 1: return f.template operator()<uint8_t>();
    case 2: return f.template operator()<uint16_t>();
    case 4: return f.template operator()<uint32_t>();
    default: return f.template operator()<uint64_t>();
  }
}

/// Strides of `t` seen through a broadcast to `shape` (0 on broadcast dims).
std::vector<int64_t> broadcast_strides(const Tensor& t, const Shape& shape);

/// Throws kern::Error naming `op` unless every element of `src` converts to `target` without
/// undefined behaviour or loss of range: to an integer dtype, floating values must be finite
/// and truncate into its range and integer values must lie in it; converting to float8
/// throws (kern only reads float8). Other conversions always succeed.
void check_convertible(const Tensor& src, DType target, const char* op);

/// dst[i] = src[i] converted (src broadcast to dst's shape); call check_convertible first.
/// Elements convert as in PyTorch: floats round to nearest even, to bool is != 0, floating to
/// integer truncates toward zero.
void convert_strided(const Tensor& dst, const Tensor& src);

/// A loop nest over `shape` for K operands with the given element strides, with adjacent
/// dims merged where every operand allows it. Calls inner(offsets[K], n, inner_strides[K])
/// once per innermost row; rows are split across OpenMP threads when the work is large.
/// A shape with no elements runs nothing (it never walks the outer dims of [2^62, 0]).
template <size_t K>
struct StridedLoop {
  Shape shape;
  std::array<std::vector<int64_t>, K> strides;
  StridedLoop(const Shape& s, std::array<std::vector<int64_t>, K> st);
  template <typename F>
  void run(F&& inner) const;
};

template <size_t K>
StridedLoop<K>::StridedLoop(const Shape& s, std::array<std::vector<int64_t>, K> st) {
  // Drop size-1 dims, then merge dim i into i+1 when contiguous for all operands.
  Shape sh;
  std::array<std::vector<int64_t>, K> str;
  if (s.numel() == 0) {  // nothing to visit: one empty row
    shape = {0};
    for (size_t k = 0; k < K; ++k) strides[k] = {0};
    return;
  }
  for (size_t d = 0; d < s.size(); ++d) {
    if (s[d] == 1) continue;
    sh.push_back(s[d]);
    for (size_t k = 0; k < K; ++k) str[k].push_back(st[k][d]);
  }
  if (sh.empty()) {
    sh.push_back(1);
    for (size_t k = 0; k < K; ++k) str[k].push_back(0);
  }
  shape.push_back(sh[0]);
  for (size_t k = 0; k < K; ++k) strides[k].push_back(str[k][0]);
  for (size_t d = 1; d < sh.size(); ++d) {
    bool mergeable = true;
    for (size_t k = 0; k < K; ++k)
      if (strides[k].back() != str[k][d] * sh[d]) mergeable = false;
    if (mergeable) {
      shape.back() *= sh[d];
      for (size_t k = 0; k < K; ++k) strides[k].back() = str[k][d];
    } else {
      shape.push_back(sh[d]);
      for (size_t k = 0; k < K; ++k) strides[k].push_back(str[k][d]);
    }
  }
  // Short rows cost more in per-row bookkeeping than in work: a permuted [N, C, 2, 2] view
  // next to a contiguous one leaves rows of 4 elements. The visiting order of an elementwise
  // loop is free, so make the longer of the last two dims the inner one (rows of C, strided).
  const size_t nd = shape.size();
  if (nd >= 2 && shape[nd - 1] < 32 && shape[nd - 2] > shape[nd - 1]) {
    std::swap(shape[nd - 1], shape[nd - 2]);
    for (size_t k = 0; k < K; ++k) std::swap(strides[k][nd - 1], strides[k][nd - 2]);
  }
}

template <size_t K>
template <typename F>
void StridedLoop<K>::run(F&& inner) const {
  const int64_t nd = static_cast<int64_t>(shape.size());
  const int64_t n_inner = shape[nd - 1];
  if (n_inner == 0) return;  // no elements (the constructor folds such shapes to {0})
  int64_t n_outer = 1;
  for (int64_t d = 0; d < nd - 1; ++d) n_outer *= shape[d];
  std::array<int64_t, K> inner_strides;
  for (size_t k = 0; k < K; ++k) inner_strides[k] = strides[k][nd - 1];
  const bool parallel = n_outer > 1 && n_outer * n_inner > (1 << 15);
  auto row_offsets = [&](int64_t row) {
    std::array<int64_t, K> off{};
    for (int64_t d = nd - 2; d >= 0; --d) {
      const int64_t i = row % shape[d];
      row /= shape[d];
      for (size_t k = 0; k < K; ++k) off[k] += i * strides[k][d];
    }
    return off;
  };
  if (n_outer == 1 && n_inner > (1 << 16)) {
    // One long row: split it across threads.
#pragma omp parallel
    {
      const int nt = omp_get_num_threads();
      const int t = omp_get_thread_num();
      const int64_t chunk = (n_inner + nt - 1) / nt;
      const int64_t b = std::min<int64_t>(n_inner, t * chunk), e = std::min<int64_t>(n_inner, b + chunk);
      if (e > b) {
        std::array<int64_t, K> off;
        for (size_t k = 0; k < K; ++k) off[k] = b * inner_strides[k];
        inner(off, e - b, inner_strides);
      }
    }
    return;
  }
  // Rows [r0, r1): offsets of the first from div/mod, then an odometer over the outer dims
  // (one add per row instead of nd - 1 divisions).
  auto run_rows = [&](int64_t r0, int64_t r1) {
    if (r0 >= r1) return;
    std::array<int64_t, K> off = row_offsets(r0);
    std::vector<int64_t> idx(static_cast<size_t>(std::max<int64_t>(nd - 1, 1)), 0);
    for (int64_t d = nd - 2, row = r0; d >= 0; --d) {
      idx[d] = row % shape[d];
      row /= shape[d];
    }
    for (int64_t row = r0;;) {
      inner(off, n_inner, inner_strides);
      if (++row == r1) break;
      for (int64_t d = nd - 2; d >= 0; --d) {  // carry: reset the dims that wrap
        for (size_t k = 0; k < K; ++k) off[k] += strides[k][d];
        if (++idx[d] < shape[d]) break;
        for (size_t k = 0; k < K; ++k) off[k] -= shape[d] * strides[k][d];
        idx[d] = 0;
      }
    }
  };
  if (!parallel) {
    run_rows(0, n_outer);
    return;
  }
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = (n_outer + nt - 1) / nt;
    run_rows(std::min(n_outer, t * chunk), std::min(n_outer, (t + 1) * chunk));
  }
}

/// out = f(x) elementwise; out is a new contiguous tensor of dtype TO.
template <typename TO, typename TI, typename F>
Tensor map_unary(const Tensor& x, DType out_dtype, F f) {
  Tensor out = empty(x.shape(), out_dtype);
  TO* o = static_cast<TO*>(out.raw_data());
  const TI* a = static_cast<const TI*>(x.raw_data());
  if (x.is_contiguous()) {
    const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) o[i] = f(a[i]);
    return out;
  }
  StridedLoop<2> loop(x.shape(), {contiguous_strides(x.shape()), x.strides()});
  loop.run([&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
    for (int64_t i = 0; i < n; ++i) o[off[0] + i * st[0]] = f(a[off[1] + i * st[1]]);
  });
  return out;
}

/// out = f(a, b) with broadcasting; out is a new contiguous tensor of dtype TO.
template <typename TO, typename TA, typename TB, typename F>
Tensor map_binary(const Tensor& a, const Tensor& b, const Shape& out_shape, DType out_dtype, F f) {
  Tensor out = empty(out_shape, out_dtype);
  TO* o = static_cast<TO*>(out.raw_data());
  const TA* pa = static_cast<const TA*>(a.raw_data());
  const TB* pb = static_cast<const TB*>(b.raw_data());
  const int64_t n = out.numel();
  if (a.shape() == out_shape && b.shape() == out_shape && a.is_contiguous() && b.is_contiguous()) {
#pragma omp parallel for simd schedule(static) if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], pb[i]);
    return out;
  }
  if (a.shape() == out_shape && a.is_contiguous() && b.numel() == 1) {
    const TB s = pb[0];
#pragma omp parallel for simd schedule(static) if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], s);
    return out;
  }
  StridedLoop<3> loop(out_shape, {contiguous_strides(out_shape), broadcast_strides(a, out_shape),
                                  broadcast_strides(b, out_shape)});
  loop.run([&](const std::array<int64_t, 3>& off, int64_t m, const std::array<int64_t, 3>& st) {
    TO* oo = o + off[0];
    const TA* aa = pa + off[1];
    const TB* bb = pb + off[2];
    if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
      for (int64_t i = 0; i < m; ++i) oo[i] = f(aa[i], bb[i]);
    } else if (st[0] == 1 && st[1] == 1 && st[2] == 0) {
      const TB s = bb[0];
      for (int64_t i = 0; i < m; ++i) oo[i] = f(aa[i], s);
    } else if (st[0] == 1 && st[1] == 0 && st[2] == 1) {
      const TA s = aa[0];
      for (int64_t i = 0; i < m; ++i) oo[i] = f(s, bb[i]);
    } else {
      for (int64_t i = 0; i < m; ++i) oo[i * st[0]] = f(aa[i * st[1]], bb[i * st[2]]);
    }
  });
  return out;
}

/// Throws unless a and b have equal dtypes.
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op);
/// Throws unless t is floating.
void check_floating(const Tensor& t, const char* op);
/// A 0-dim tensor holding `v` in `like`'s dtype.
Tensor scalar_like(double v, const Tensor& like);

}  // namespace kern::detail
