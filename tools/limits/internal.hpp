#pragma once
// Helpers shared by the kern::limits kernel maps (private to tools/limits).
#include <kern/error.hpp>
#include <kern/tools/limits/limits.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace kern::limits::detail {

/// A block of a Kernel: one of the n1*n2 cross pairs (nngp and ntk) or one self-covariance
/// (cov1 or cov2; no ntk). Units are numbered cross pairs first, then cov1, then cov2.
struct Unit {
  double* k = nullptr;    // [S]
  double* ntk = nullptr;  // [S] or nullptr
  int64_t a = 0, b = 0;   // for cross (i, j); for cov1 (i, i) with side 1; cov2 (j, j) side 2
  int side1 = 1, side2 = 2;
};

inline int64_t unit_count(const Kernel& k) { return k.n1 * k.n2 + k.n1 + k.n2; }

inline Unit unit(Kernel& k, int64_t u) {
  const int64_t S = k.entries();
  Unit r;
  if (u < k.n1 * k.n2) {
    r.k = k.nngp.data() + u * S;
    r.ntk = k.ntk.data() + u * S;
    r.a = u / k.n2;
    r.b = u % k.n2;
  } else if (u < k.n1 * k.n2 + k.n1) {
    r.a = r.b = u - k.n1 * k.n2;
    r.k = k.cov1.data() + r.a * S;
    r.side2 = 1;
  } else {
    r.a = r.b = u - k.n1 * k.n2 - k.n1;
    r.k = k.cov2.data() + r.a * S;
    r.side1 = 2;
  }
  return r;
}

/// atan2(y, x) for finite y, x, written so that loops over it vectorize (std::atan2 is an
/// opaque libm call, one element at a time). Same quadrants as std::atan2, but zeros count as
/// positive: atan2(-0, x) = +0 and atan2(y, -0) = atan2(y, +0) (the maps never pass two zeros:
/// ABRelu handles (0, 0) itself). Relative error within a few ulp (tested against std::atan2
/// through the kernel maps, tests/test_limits.cpp). Selects, not std::min/max (references) or
/// signbit/copysign: with those GCC 12 does not vectorize.
/// Reduction: t = min(|x|, |y|) / max(...) in [0, 1]; above tan(pi/8),
/// atan t = pi/4 + atan((t - 1) / (t + 1)); on |u| <= tan(pi/8),
/// atan u = u + u z R(z), z = u^2, R a degree-10 least-squares fit of (atan(sqrt z)/sqrt z - 1)/z
/// on Chebyshev nodes of [0, tan(pi/8)^2] (computed in 50-digit arithmetic; max relative error
/// of the fit 7e-18, far below rounding).
inline double atan2_vec(double y, double x) {
  constexpr double kPi = 3.141592653589793238462643383279502884;
  constexpr double kTanPi8 = 0.41421356237309504880168872420969808;
  const double ax = std::fabs(x), ay = std::fabs(y);
  const double hi = ax > ay ? ax : ay, lo = ax > ay ? ay : ax;
  // t = lo / hi in [0, 1]; above tan(pi/8) use u = (t - 1) / (t + 1) = (lo - hi) / (lo + hi):
  // one division either way
  const bool upper = lo > kTanPi8 * hi;
  const double num = upper ? lo - hi : lo, den = upper ? lo + hi : hi;
  const double u = den > 0.0 ? num / den : 0.0;
  const double z = u * u;
  double r = -0.01920252926841228;
  r = r * z + 0.039253696320618564;
  r = r * z - 0.05086254885823143;
  r = r * z + 0.05858311810501153;
  r = r * z - 0.06664531369805009;
  r = r * z + 0.07692184699371778;
  r = r * z - 0.0909090464769568;
  r = r * z + 0.11111111017100327;
  r = r * z - 0.1428571428469138;
  r = r * z + 0.19999999999995652;
  r = r * z - 0.3333333333333333;
  double phi = (upper ? kPi / 4 : 0.0) + (u + u * z * r);  // atan t
  phi = ay > ax ? kPi / 2 - phi : phi;                       // atan(ay / ax)
  phi = x < 0.0 ? kPi - phi : phi;
  return y < 0.0 ? -phi : phi;
}

/// Pixel variances of every input: [n][P] for side 1 and side 2.
void pixel_variances(const Kernel& k, std::vector<double>& d1, std::vector<double>& d2);

/// Applies a linear map f(in [S], out [S']) to every block; S' = out_entries. A map that
/// keeps the size runs in place: directly when `f_allows_aliasing` (f reads all of `in` before
/// it writes `out`, so out == in is fine), else through a per-thread buffer (no n1*n2*S
/// allocation per layer). A map that shrinks the blocks leaves the results in k's buffers
/// (their capacity kept for the next block, see input_kernel).
template <class F>
void map_blocks(Kernel& k, int64_t out_entries, F f, bool f_allows_aliasing = false) {
  const int64_t S = k.entries();
  const int64_t units = unit_count(k);
  const bool in_place = out_entries == S;
  const bool direct = in_place && f_allows_aliasing;
  std::vector<double> nngp, ntk, cov1, cov2;
  if (!in_place) {
    nngp.resize(k.n1 * k.n2 * out_entries);
    ntk.resize(k.n1 * k.n2 * out_entries);
    cov1.resize(k.n1 * out_entries);
    cov2.resize(k.n2 * out_entries);
  }
  const int64_t cross = k.n1 * k.n2;
#pragma omp parallel if (units * S > 65536)
  {
    std::vector<double> buf(in_place && !direct ? S : 0);
    auto run = [&](const double* in, double* out) {
      if (direct) return f(in, const_cast<double*>(in));
      if (!in_place) return f(in, out);
      f(in, buf.data());
      std::copy(buf.begin(), buf.end(), const_cast<double*>(in));
    };
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < units; ++u) {
      if (u < cross) {
        run(k.nngp.data() + u * S, in_place ? nullptr : nngp.data() + u * out_entries);
        run(k.ntk.data() + u * S, in_place ? nullptr : ntk.data() + u * out_entries);
      } else if (u < cross + k.n1) {
        const int64_t i = u - cross;
        run(k.cov1.data() + i * S, in_place ? nullptr : cov1.data() + i * out_entries);
      } else {
        const int64_t j = u - cross - k.n1;
        run(k.cov2.data() + j * S, in_place ? nullptr : cov2.data() + j * out_entries);
      }
    }
  }
  if (in_place) return;
  k.nngp.assign(nngp.begin(), nngp.end());
  k.ntk.assign(ntk.begin(), ntk.end());
  k.cov1.assign(cov1.begin(), cov1.end());
  k.cov2.assign(cov2.begin(), cov2.end());
}

/// One row p of a full block: k[q] = f(k[q], v1p, v2[q]), ntk[q] *= kdot, q < n. Vectorized
/// (f must be inline arithmetic: no libm calls, see atan2_vec).
template <class F>
void map_row(double* k, double* ntk, double v1p, const double* v2, int64_t n, F f) {
  if (ntk != nullptr) {
#pragma omp simd
    for (int64_t q = 0; q < n; ++q) {
      double kdot;
      k[q] = f(k[q], v1p, v2[q], &kdot);
      ntk[q] *= kdot;
    }
  } else {
#pragma omp simd
    for (int64_t q = 0; q < n; ++q) {
      double kdot;
      k[q] = f(k[q], v1p, v2[q], &kdot);
    }
  }
}

/// Applies an elementwise dual map to every entry: f(k12, v1, v2, double* kdot) returns the new
/// k12 and writes E[phi'(u) phi'(v)] to *kdot (ntk *= kdot on cross blocks). v1, v2: the pixel
/// variances of the two inputs at the entry's pixels.
template <class F>
void map_entries(Kernel& k, F f) {
  std::vector<double> d1, d2;
  pixel_variances(k, d1, d2);
  const int64_t P = k.pixels();
  const int64_t units = unit_count(k);
#pragma omp parallel for schedule(dynamic, 1) if (units * k.entries() > 16384)
  for (int64_t u = 0; u < units; ++u) {
    Unit un = unit(k, u);
    const double* v1 = (un.side1 == 1 ? d1.data() : d2.data()) + un.a * P;
    const double* v2 = (un.side2 == 1 ? d1.data() : d2.data()) + un.b * P;
    if (k.full) {
      for (int64_t p = 0; p < P; ++p)
        map_row(un.k + p * P, un.ntk ? un.ntk + p * P : nullptr, v1[p], v2, P, f);
    } else {
      for (int64_t p = 0; p < P; ++p) {
        double kdot = 0.0;
        un.k[p] = f(un.k[p], v1[p], v2[p], &kdot);
        if (un.ntk) un.ntk[p] *= kdot;
      }
    }
  }
}

/// XLA/neural-tangents output size and low padding of a window along one axis.
struct Axis {
  int64_t in = 0, window = 1, stride = 1, out = 0, pad = 0;
};
Axis make_axis(int64_t in, int64_t window, int64_t stride, Padding padding, const char* op);

/// The patch-averaging (conv: the same offset at p and q, `diagonal_offsets`) or window-mean
/// (pooling: every pair of offsets) map on a full [H, W, H, W] block -> [H', W', H', W'].
/// Reads all of `in` (into tmp) before writing `out`: out == in is allowed.
void window_full(const double* in, double* out, const Axis& ah, const Axis& aw,
                 bool diagonal_offsets, std::vector<double>& tmp);
/// The conv map on a diagonal [H, W] block -> [H', W'].
void window_diag(const double* in, double* out, const Axis& ah, const Axis& aw);

}  // namespace kern::limits::detail
