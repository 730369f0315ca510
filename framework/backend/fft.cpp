// Real FFT kernels (no external library): an iterative radix-2 Cooley-Tukey transform for
// power-of-two lengths, Bluestein's chirp-z algorithm for every other length, and the
// standard "pack two reals into one complex" trick so a real transform of even length n
// costs one complex transform of length n/2.
//
// Conventions (those of torch.fft): rfft X_k = sum_t x_t e^{-2 pi i k t / n}, k = 0..n/2;
// irfft y_t = (1/n) sum over the Hermitian extension of X (imaginary parts of X_0 and, for
// even n, X_{n/2} are ignored). Complex values are interleaved (re, im) pairs.
//
// float32 computes in float, float64 in double; twiddles and chirps are always computed in
// double and exact integer arithmetic (k^2 mod 2n) so float32 stays accurate to ~1e-6.
#include <omp.h>

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "backend.hpp"

namespace kern::backend {

namespace {

template <typename T>
struct Cx {
  T re, im;
};
template <typename T>
inline Cx<T> operator+(Cx<T> a, Cx<T> b) { return {a.re + b.re, a.im + b.im}; }
template <typename T>
inline Cx<T> operator-(Cx<T> a, Cx<T> b) { return {a.re - b.re, a.im - b.im}; }
template <typename T>
inline Cx<T> operator*(Cx<T> a, Cx<T> b) { return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re}; }
template <typename T>
inline Cx<T> conj(Cx<T> a) { return {a.re, -a.im}; }

template <typename T>
Cx<T> expi(double angle) { return {static_cast<T>(std::cos(angle)), static_cast<T>(std::sin(angle))}; }

bool is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

/// An unnormalized complex DFT of one length: forward uses e^{-2 pi i kt/n}, inverse e^{+...}.
/// Immutable once built, so one plan serves every thread.
template <typename T>
struct ComplexPlan {
  using C = Cx<T>;
  int64_t n = 1;
  bool pow2 = true;
  // radix-2: twiddles w_j = e^{-2 pi i j/n}, j < n/2, and the bit-reversal permutation.
  std::vector<C> tw;
  std::vector<int64_t> rev;
  // Bluestein: chirp c_k = e^{-i pi k^2/n} (k < n), FFT_m of the conjugate chirp filter, and
  // the power-of-two plan of length m >= 2n - 1.
  int64_t m = 0;
  std::vector<C> chirp, filter_hat;
  std::unique_ptr<ComplexPlan> sub;

  explicit ComplexPlan(int64_t len) : n(len), pow2(is_pow2(len)) {
    if (pow2) {
      tw.resize(n / 2);
      for (int64_t j = 0; j < n / 2; ++j) tw[j] = expi<T>(-2.0 * M_PI * static_cast<double>(j) / n);
      rev.resize(n);
      int64_t bits = 0;
      while ((int64_t{1} << bits) < n) ++bits;
      for (int64_t i = 0; i < n; ++i) {
        int64_t r = 0;
        for (int64_t b = 0; b < bits; ++b)
          if (i & (int64_t{1} << b)) r |= int64_t{1} << (bits - 1 - b);
        rev[i] = r;
      }
      return;
    }
    m = 1;
    while (m < 2 * n - 1) m *= 2;
    sub = std::make_unique<ComplexPlan>(m);
    chirp.resize(n);
    for (int64_t k = 0; k < n; ++k) {
      const int64_t r = (k * k) % (2 * n);  // exact: e^{-i pi k^2/n} has period 2n in k^2
      chirp[k] = expi<T>(-M_PI * static_cast<double>(r) / n);
    }
    filter_hat.assign(m, C{0, 0});
    filter_hat[0] = conj(chirp[0]);
    for (int64_t k = 1; k < n; ++k) filter_hat[k] = filter_hat[m - k] = conj(chirp[k]);
    std::vector<C> scratch;
    sub->run(filter_hat.data(), false, scratch);
  }

  /// Scratch elements `run` needs (per thread).
  int64_t scratch_size() const { return pow2 ? 0 : m; }

  /// In-place transform of data[0..n). `scratch` is resized as needed.
  void run(C* data, bool inverse, std::vector<C>& scratch) const {
    if (n == 1) return;
    if (pow2) {
      radix2(data, inverse);
      return;
    }
    // Bluestein: X_k = c_k * sum_t (x_t c_t) conj(c_{k-t}); the sum is a circular convolution
    // of length m done with power-of-two FFTs. The inverse is conj(forward(conj(x))).
    if (static_cast<int64_t>(scratch.size()) < m) scratch.resize(m);
    C* a = scratch.data();
    for (int64_t t = 0; t < n; ++t) a[t] = (inverse ? conj(data[t]) : data[t]) * chirp[t];
    for (int64_t t = n; t < m; ++t) a[t] = C{0, 0};
    sub->radix2(a, false);
    for (int64_t k = 0; k < m; ++k) a[k] = a[k] * filter_hat[k];
    sub->radix2(a, true);
    const T inv_m = T(1) / static_cast<T>(m);
    for (int64_t k = 0; k < n; ++k) {
      C v = a[k] * chirp[k];
      v.re *= inv_m;
      v.im *= inv_m;
      data[k] = inverse ? conj(v) : v;
    }
  }

  void radix2(C* a, bool inverse) const {
    for (int64_t i = 0; i < n; ++i)
      if (i < rev[i]) std::swap(a[i], a[rev[i]]);
    for (int64_t len = 2; len <= n; len *= 2) {
      const int64_t half = len / 2, step = n / len;
      for (int64_t s = 0; s < n; s += len)
        for (int64_t j = 0; j < half; ++j) {
          C w = tw[j * step];
          if (inverse) w.im = -w.im;
          const C u = a[s + j], v = a[s + j + half] * w;
          a[s + j] = u + v;
          a[s + j + half] = u - v;
        }
    }
  }
};

/// A real transform of length n: even n packs x into n/2 complex samples; odd n runs a
/// full complex transform of length n.
template <typename T>
struct RealPlan {
  using C = Cx<T>;
  int64_t n;
  ComplexPlan<T> cplan;   // length n/2 (even n) or n (odd n)
  std::vector<C> post;    // e^{-2 pi i k/n}, k = 0..n/2 (even n)

  explicit RealPlan(int64_t len) : n(len), cplan(len % 2 == 0 ? len / 2 : len) {
    if (n % 2 == 0) {
      post.resize(n / 2 + 1);
      for (int64_t k = 0; k <= n / 2; ++k) post[k] = expi<T>(-2.0 * M_PI * static_cast<double>(k) / n);
    }
  }
  int64_t buffer_size() const { return cplan.n; }

  /// x: [n] -> X: [n/2 + 1] complex. buf: cplan.n elements.
  void forward(const T* x, C* X, std::vector<C>& buf, std::vector<C>& scratch) const {
    if (n % 2 == 1) {
      for (int64_t t = 0; t < n; ++t) buf[t] = C{x[t], 0};
      cplan.run(buf.data(), false, scratch);
      for (int64_t k = 0; k <= n / 2; ++k) X[k] = buf[k];
      X[0].im = 0;
      return;
    }
    const int64_t h = n / 2;
    for (int64_t t = 0; t < h; ++t) buf[t] = C{x[2 * t], x[2 * t + 1]};
    cplan.run(buf.data(), false, scratch);
    // E_k = (Z_k + conj Z_{h-k}) / 2 (even samples), O_k = (Z_k - conj Z_{h-k}) / 2i (odd).
    for (int64_t k = 0; k <= h; ++k) {
      const C zk = buf[k % h], zc = conj(buf[(h - k) % h]);
      const C e{(zk.re + zc.re) / 2, (zk.im + zc.im) / 2};
      const C d = zk - zc;
      const C o{d.im / 2, -d.re / 2};
      X[k] = e + post[k] * o;
    }
    X[0].im = 0;
    X[h].im = 0;
  }

  /// X: [n/2 + 1] complex -> y: [n], with the 1/n scaling.
  void inverse(const C* X, T* y, std::vector<C>& buf, std::vector<C>& scratch) const {
    const T inv_n = T(1) / static_cast<T>(n);
    if (n % 2 == 1) {
      buf[0] = C{X[0].re, 0};
      for (int64_t k = 1; k <= n / 2; ++k) {
        buf[k] = X[k];
        buf[n - k] = conj(X[k]);
      }
      cplan.run(buf.data(), true, scratch);
      for (int64_t t = 0; t < n; ++t) y[t] = buf[t].re * inv_n;
      return;
    }
    const int64_t h = n / 2;
    auto bin = [&](int64_t k) {  // X_k with the ignored imaginary parts dropped
      C v = X[k];
      if (k == 0 || k == h) v.im = 0;
      return v;
    };
    // Undo the packing: Z_k = E_k + i O_k, E_k = (X_k + conj X_{h-k})/2,
    // O_k = (X_k - conj X_{h-k}) e^{+2 pi i k/n} / 2.
    for (int64_t k = 0; k < h; ++k) {
      const C xk = bin(k), xc = conj(bin(h - k));
      const C e{(xk.re + xc.re) / 2, (xk.im + xc.im) / 2};
      const C d = xk - xc;
      const C o = C{d.re / 2, d.im / 2} * conj(post[k]);
      buf[k] = C{e.re - o.im, e.im + o.re};
    }
    cplan.run(buf.data(), true, scratch);
    // z = h * IDFT_h(Z) = h * (x_even + i x_odd); x = z / h, and 1/h = 2/n.
    const T s = 2 * inv_n;
    for (int64_t t = 0; t < h; ++t) {
      y[2 * t] = buf[t].re * s;
      y[2 * t + 1] = buf[t].im * s;
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
void rfft_impl(const T* x, int64_t rows, int64_t n, T* out) {
  auto plan = real_plan<T>(n);
  const int64_t nb = n / 2 + 1;
#pragma omp parallel if (rows > 1 && rows * n > 4096)
  {
    std::vector<Cx<T>> buf(plan->buffer_size()), scratch(plan->cplan.scratch_size());
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      plan->forward(x + r * n, reinterpret_cast<Cx<T>*>(out + r * nb * 2), buf, scratch);
  }
}

template <typename T>
void irfft_impl(const T* X, int64_t rows, int64_t n, T* out) {
  auto plan = real_plan<T>(n);
  const int64_t nb = n / 2 + 1;
#pragma omp parallel if (rows > 1 && rows * n > 4096)
  {
    std::vector<Cx<T>> buf(plan->buffer_size()), scratch(plan->cplan.scratch_size());
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      plan->inverse(reinterpret_cast<const Cx<T>*>(X + r * nb * 2), out + r * n, buf, scratch);
  }
}

}  // namespace

template <typename T>
void rfft_rows(const T* x, int64_t rows, int64_t n, T* out) {
  rfft_impl(x, rows, n, out);
}
template <typename T>
void irfft_rows(const T* X, int64_t rows, int64_t n, T* out) {
  irfft_impl(X, rows, n, out);
}

template void rfft_rows<float>(const float*, int64_t, int64_t, float*);
template void rfft_rows<double>(const double*, int64_t, int64_t, double*);
template void irfft_rows<float>(const float*, int64_t, int64_t, float*);
template void irfft_rows<double>(const double*, int64_t, int64_t, double*);

}  // namespace kern::backend
