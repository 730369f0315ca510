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

/// Pixel variances of every input: [n][P] for side 1 and side 2.
void pixel_variances(const Kernel& k, std::vector<double>& d1, std::vector<double>& d2);

/// Applies a linear map f(in [S], out [S']) to every block; S' = out_entries. A map that
/// keeps the size runs in place through a per-thread buffer (no n1*n2*S allocation per layer).
template <class F>
void map_blocks(Kernel& k, int64_t out_entries, F f) {
  const int64_t S = k.entries();
  const int64_t units = unit_count(k);
  const bool in_place = out_entries == S;
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
    std::vector<double> buf(in_place ? S : 0);
    auto run = [&](const double* in, double* out) {
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
  k.nngp.swap(nngp);
  k.ntk.swap(ntk);
  k.cov1.swap(cov1);
  k.cov2.swap(cov2);
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
    double kdot = 0.0;
    if (k.full) {
      for (int64_t p = 0; p < P; ++p)
        for (int64_t q = 0; q < P; ++q) {
          const int64_t e = p * P + q;
          un.k[e] = f(un.k[e], v1[p], v2[q], &kdot);
          if (un.ntk) un.ntk[e] *= kdot;
        }
    } else {
      for (int64_t p = 0; p < P; ++p) {
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
void window_full(const double* in, double* out, const Axis& ah, const Axis& aw,
                 bool diagonal_offsets, std::vector<double>& tmp);
/// The conv map on a diagonal [H, W] block -> [H', W'].
void window_diag(const double* in, double* out, const Axis& ah, const Axis& aw);

}  // namespace kern::limits::detail
