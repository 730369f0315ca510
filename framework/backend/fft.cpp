// Real FFT kernels (no external library): an iterative radix-2 Cooley-Tukey transform for
// power-of-two lengths, Bluestein's chirp-z algorithm for every other length, and the
// standard "pack two reals into one complex" trick so a real transform of even length n
// costs one complex transform of length n/2.
//
// Conventions (those of torch.fft): rfft X_k = sum_t x_t e^{-2 pi i k t / n}, k = 0..n/2;
// irfft y_t = (1/n) sum over the Hermitian extension of X (imaginary parts of X_0 and, for
// even n, X_{n/2} are ignored). Complex values are interleaved (re, im) pairs in the
// tensors and split into re[] / im[] arrays inside the transforms.
//
// float32 computes in float, float64 in double; twiddles and chirps are always computed in
// double and exact integer arithmetic (k^2 mod 2n) so float32 stays accurate to ~1e-6.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "backend.hpp"

namespace kern::backend {

namespace {

bool is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

/// Per-thread work buffers (split real / imaginary parts, so butterflies vectorize).
template <typename T>
struct Work {
  std::vector<T> re, im;    // the packed row being transformed
  std::vector<T> bre, bim;  // Bluestein's length-m convolution buffer
};

/// An unnormalized complex DFT of one length on split (re[], im[]) arrays: forward uses
/// e^{-2 pi i kt/n}, inverse e^{+2 pi i kt/n}. Immutable once built: one plan serves every
/// thread.
template <typename T>
struct ComplexPlan {
  int64_t n = 1;
  bool pow2 = true;
  // radix-2: the bit-reversal permutation and per-stage twiddles; the stage whose
  // butterflies span `half` pairs keeps e^{-+ i pi j/half} (j < half) at [half, 2 half).
  std::vector<int64_t> rev;
  std::vector<T> tw_re, tw_im_fwd, tw_im_inv;
  // Bluestein: chirp c_k = e^{-i pi k^2/n} (k < n), the FFT of the conjugate-chirp filter
  // (length m >= 2n - 1, a power of two) and the radix-2 plan of length m.
  int64_t m = 0;
  std::vector<T> chirp_re, chirp_im, filt_re, filt_im;
  std::unique_ptr<ComplexPlan> sub;

  explicit ComplexPlan(int64_t len) : n(len), pow2(is_pow2(len)) {
    if (pow2) {
      rev.resize(n);
      int64_t bits = 0;
      while ((int64_t{1} << bits) < n) ++bits;
      for (int64_t i = 0; i < n; ++i) {
        int64_t r = 0;
        for (int64_t b = 0; b < bits; ++b)
          if (i & (int64_t{1} << b)) r |= int64_t{1} << (bits - 1 - b);
        rev[i] = r;
      }
      tw_re.assign(std::max<int64_t>(n, 1), T(0));
      tw_im_fwd = tw_im_inv = tw_re;
      for (int64_t half = 1; half < n; half *= 2)
        for (int64_t j = 0; j < half; ++j) {
          const double a = M_PI * static_cast<double>(j) / static_cast<double>(half);
          tw_re[half + j] = static_cast<T>(std::cos(a));
          tw_im_fwd[half + j] = static_cast<T>(-std::sin(a));
          tw_im_inv[half + j] = static_cast<T>(std::sin(a));
        }
      return;
    }
    m = 1;
    while (m < 2 * n - 1) m *= 2;
    sub = std::make_unique<ComplexPlan>(m);
    chirp_re.resize(n);
    chirp_im.resize(n);
    for (int64_t k = 0; k < n; ++k) {
      const int64_t r = (k * k) % (2 * n);  // exact: e^{-i pi k^2/n} has period 2n in k^2
      const double a = -M_PI * static_cast<double>(r) / static_cast<double>(n);
      chirp_re[k] = static_cast<T>(std::cos(a));
      chirp_im[k] = static_cast<T>(std::sin(a));
    }
    filt_re.assign(m, T(0));
    filt_im.assign(m, T(0));
    for (int64_t k = 0; k < n; ++k) {
      filt_re[k] = chirp_re[k];
      filt_im[k] = -chirp_im[k];
      if (k > 0) {
        filt_re[m - k] = chirp_re[k];
        filt_im[m - k] = -chirp_im[k];
      }
    }
    sub->radix2(filt_re.data(), filt_im.data(), false);
  }

  /// In-place transform of (re, im)[0..n).
  void run(T* re, T* im, bool inverse, Work<T>& w) const {
    if (n == 1) return;
    if (pow2) {
      radix2(re, im, inverse);
      return;
    }
    // Bluestein: X_k = c_k sum_t (x_t c_t) conj(c_{k-t}), a circular convolution of length m
    // done with radix-2 FFTs. The inverse is conj(forward(conj(x))).
    if (static_cast<int64_t>(w.bre.size()) < m) {
      w.bre.resize(m);
      w.bim.resize(m);
    }
    T* ar = w.bre.data();
    T* ai = w.bim.data();
    const T sgn = inverse ? T(-1) : T(1);
    for (int64_t t = 0; t < n; ++t) {
      const T xr = re[t], xi = sgn * im[t];
      ar[t] = xr * chirp_re[t] - xi * chirp_im[t];
      ai[t] = xr * chirp_im[t] + xi * chirp_re[t];
    }
    std::fill(ar + n, ar + m, T(0));
    std::fill(ai + n, ai + m, T(0));
    sub->radix2(ar, ai, false);
    for (int64_t k = 0; k < m; ++k) {
      const T xr = ar[k], xi = ai[k];
      ar[k] = xr * filt_re[k] - xi * filt_im[k];
      ai[k] = xr * filt_im[k] + xi * filt_re[k];
    }
    sub->radix2(ar, ai, true);
    const T inv_m = T(1) / static_cast<T>(m);
    for (int64_t k = 0; k < n; ++k) {
      const T yr = ar[k] * inv_m, yi = ai[k] * inv_m;
      re[k] = yr * chirp_re[k] - yi * chirp_im[k];
      im[k] = sgn * (yr * chirp_im[k] + yi * chirp_re[k]);
    }
  }

  /// Iterative radix-2 decimation in time: bit-reverse, then log2(n) butterfly stages.
  void radix2(T* __restrict re, T* __restrict im, bool inverse) const {
    for (int64_t i = 0; i < n; ++i)
      if (i < rev[i]) {
        std::swap(re[i], re[rev[i]]);
        std::swap(im[i], im[rev[i]]);
      }
    if (n >= 2)  // stage half = 1: twiddle 1
      for (int64_t s = 0; s < n; s += 2) {
        const T ur = re[s], ui = im[s], vr = re[s + 1], vi = im[s + 1];
        re[s] = ur + vr;
        im[s] = ui + vi;
        re[s + 1] = ur - vr;
        im[s + 1] = ui - vi;
      }
    if (n >= 4) {  // stage half = 2: twiddles 1 and -i (forward) / +i (inverse)
      const T sg = inverse ? T(-1) : T(1);
      for (int64_t s = 0; s < n; s += 4) {
        T ur = re[s], ui = im[s], vr = re[s + 2], vi = im[s + 2];
        re[s] = ur + vr;
        im[s] = ui + vi;
        re[s + 2] = ur - vr;
        im[s + 2] = ui - vi;
        ur = re[s + 1];
        ui = im[s + 1];
        vr = sg * im[s + 3];  // (vr + i vi) * (-i sg) = sg * (vi - i vr)
        vi = -sg * re[s + 3];
        re[s + 1] = ur + vr;
        im[s + 1] = ui + vi;
        re[s + 3] = ur - vr;
        im[s + 3] = ui - vi;
      }
    }
    const T* twi_all = inverse ? tw_im_inv.data() : tw_im_fwd.data();
    for (int64_t half = 4; half < n; half *= 2) {
      const T* __restrict wr = tw_re.data() + half;
      const T* __restrict wi = twi_all + half;
      for (int64_t s = 0; s < n; s += 2 * half) {
        T* __restrict r0 = re + s;
        T* __restrict i0 = im + s;
        T* __restrict r1 = re + s + half;
        T* __restrict i1 = im + s + half;
#pragma omp simd
        for (int64_t j = 0; j < half; ++j) {
          const T vr = r1[j] * wr[j] - i1[j] * wi[j];
          const T vi = r1[j] * wi[j] + i1[j] * wr[j];
          const T ur = r0[j], ui = i0[j];
          r0[j] = ur + vr;
          i0[j] = ui + vi;
          r1[j] = ur - vr;
          i1[j] = ui - vi;
        }
      }
    }
  }
};

/// A real transform of length n: even n packs x into n/2 complex samples (z_t = x_2t +
/// i x_2t+1); odd n runs a full complex transform of length n.
template <typename T>
struct RealPlan {
  int64_t n;
  ComplexPlan<T> cplan;  // length n/2 (even n) or n (odd n)
  std::vector<T> post_re, post_im;  // e^{-2 pi i k/n}, k = 0..n/2 (even n)

  explicit RealPlan(int64_t len) : n(len), cplan(len % 2 == 0 ? len / 2 : len) {
    if (n % 2 == 0) {
      post_re.resize(n / 2 + 1);
      post_im.resize(n / 2 + 1);
      for (int64_t k = 0; k <= n / 2; ++k) {
        const double a = -2.0 * M_PI * static_cast<double>(k) / static_cast<double>(n);
        post_re[k] = static_cast<T>(std::cos(a));
        post_im[k] = static_cast<T>(std::sin(a));
      }
    }
  }

  void prepare(Work<T>& w) const {
    w.re.resize(cplan.n);
    w.im.resize(cplan.n);
  }

  /// Bin k's scale: s_end for k = 0 and (even n) k = n/2, else s_int.
  T bin_scale(int64_t k, T s_end, T s_int) const { return k == 0 || 2 * k == n ? s_end : s_int; }

  /// x: [len] zero-padded / truncated to n -> X: [n/2 + 1] interleaved complex, bin k
  /// multiplied by bin_scale(k).
  void forward(const T* x, int64_t len, T* X, T s_end, T s_int, Work<T>& w) const {
    T* re = w.re.data();
    T* im = w.im.data();
    const int64_t h = n / 2;
    if (n % 2 == 1) {
      for (int64_t t = 0; t < n; ++t) {
        re[t] = t < len ? x[t] : T(0);
        im[t] = 0;
      }
      cplan.run(re, im, false, w);
      for (int64_t k = 0; k <= h; ++k) {
        const T sc = bin_scale(k, s_end, s_int);
        X[2 * k] = re[k] * sc;
        X[2 * k + 1] = im[k] * sc;
      }
      X[1] = 0;
      return;
    }
    if (len >= n) {
      for (int64_t t = 0; t < h; ++t) {
        re[t] = x[2 * t];
        im[t] = x[2 * t + 1];
      }
    } else {
      for (int64_t t = 0; t < h; ++t) {
        re[t] = 2 * t < len ? x[2 * t] : T(0);
        im[t] = 2 * t + 1 < len ? x[2 * t + 1] : T(0);
      }
    }
    cplan.run(re, im, false, w);
    // E_k = (Z_k + conj Z_{h-k}) / 2 (even samples), O_k = (Z_k - conj Z_{h-k}) / 2i (odd);
    // X_k = E_k + e^{-2 pi i k/n} O_k.
    for (int64_t k = 0; k <= h; ++k) {
      const int64_t a = k == h ? 0 : k, b = k == 0 ? 0 : h - k;
      const T zr = re[a], zi = im[a], cr = re[b], ci = -im[b];
      const T er = (zr + cr) / 2, ei = (zi + ci) / 2;
      const T orr = (zi - ci) / 2, oi = -(zr - cr) / 2;
      const T sc = k == 0 || k == h ? s_end : s_int;
      X[2 * k] = (er + post_re[k] * orr - post_im[k] * oi) * sc;
      X[2 * k + 1] = (ei + post_re[k] * oi + post_im[k] * orr) * sc;
    }
    X[1] = 0;
    X[2 * h + 1] = 0;
  }

  /// X: [bins] interleaved complex, zero-padded / truncated to n/2 + 1 bins, bin k
  /// multiplied by bin_scale(k) -> y: [n], with the 1/n scaling.
  void inverse(const T* X, int64_t bins, T* y, T s_end, T s_int, Work<T>& w) const {
    T* re = w.re.data();
    T* im = w.im.data();
    const T inv_n = T(1) / static_cast<T>(n);
    const int64_t h = n / 2;
    // Bin k, scaled; the imaginary parts of bins 0 and (even n) n/2 are ignored.
    auto bin_re = [&](int64_t k) { return k < bins ? X[2 * k] * bin_scale(k, s_end, s_int) : T(0); };
    auto bin_im = [&](int64_t k) {
      return k < bins && k != 0 && 2 * k != n ? X[2 * k + 1] * bin_scale(k, s_end, s_int) : T(0);
    };
    if (n % 2 == 1) {
      re[0] = bin_re(0);
      im[0] = 0;
      for (int64_t k = 1; k <= h; ++k) {
        re[k] = re[n - k] = bin_re(k);
        im[k] = bin_im(k);
        im[n - k] = -im[k];
      }
      cplan.run(re, im, true, w);
      for (int64_t t = 0; t < n; ++t) y[t] = re[t] * inv_n;
      return;
    }
    // Undo the packing: E_k = (X_k + conj X_{h-k}) / 2, O_k = (X_k - conj X_{h-k})
    // e^{+2 pi i k/n} / 2, Z_k = E_k + i O_k.
    for (int64_t k = 0; k < h; ++k) {
      const T xr = bin_re(k), xi = bin_im(k);
      const T cr = bin_re(h - k), ci = -bin_im(h - k);
      const T er = (xr + cr) / 2, ei = (xi + ci) / 2;
      const T dr = (xr - cr) / 2, di = (xi - ci) / 2;
      const T orr = dr * post_re[k] + di * post_im[k];  // times conj(post_k)
      const T oi = di * post_re[k] - dr * post_im[k];
      re[k] = er - oi;
      im[k] = ei + orr;
    }
    cplan.run(re, im, true, w);
    // The inverse gives h * (x_even + i x_odd); 1/h = 2/n.
    const T s = 2 * inv_n;
    for (int64_t t = 0; t < h; ++t) {
      y[2 * t] = re[t] * s;
      y[2 * t + 1] = im[t] * s;
    }
  }
};

/// Plans are cached per (length, dtype): training loops transform the same lengths again.
template <typename T>
std::shared_ptr<const RealPlan<T>> real_plan(int64_t n) {
  static std::mutex mu;
  static std::map<int64_t, std::shared_ptr<const RealPlan<T>>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(n);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 64) cache.clear();
  auto plan = std::make_shared<const RealPlan<T>>(n);
  cache.emplace(n, plan);
  return plan;
}

template <typename T>
void rfft_impl(const T* x, int64_t rows, int64_t len, int64_t n, T* out, T s_end, T s_int) {
  auto plan = real_plan<T>(n);
  const int64_t nb = n / 2 + 1;
#pragma omp parallel if (rows > 1 && rows * n > 4096)
  {
    Work<T> w;
    plan->prepare(w);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) plan->forward(x + r * len, len, out + r * nb * 2, s_end, s_int, w);
  }
}

template <typename T>
void irfft_impl(const T* X, int64_t rows, int64_t bins, int64_t n, T* out, T s_end, T s_int) {
  auto plan = real_plan<T>(n);
#pragma omp parallel if (rows > 1 && rows * n > 4096)
  {
    Work<T> w;
    plan->prepare(w);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) plan->inverse(X + r * bins * 2, bins, out + r * n, s_end, s_int, w);
  }
}

}  // namespace

template <typename T>
void rfft_rows(const T* x, int64_t rows, int64_t len, int64_t n, T* out, T scale_end, T scale_interior) {
  rfft_impl(x, rows, len, n, out, scale_end, scale_interior);
}
template <typename T>
void irfft_rows(const T* X, int64_t rows, int64_t bins, int64_t n, T* out, T scale_end, T scale_interior) {
  irfft_impl(X, rows, bins, n, out, scale_end, scale_interior);
}

template void rfft_rows<float>(const float*, int64_t, int64_t, int64_t, float*, float, float);
template void rfft_rows<double>(const double*, int64_t, int64_t, int64_t, double*, double, double);
template void irfft_rows<float>(const float*, int64_t, int64_t, int64_t, float*, float, float);
template void irfft_rows<double>(const double*, int64_t, int64_t, int64_t, double*, double, double);

}  // namespace kern::backend
