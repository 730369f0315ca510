// Direct depthwise convolution kernels (see depthwise.hpp). Every loop nest keeps one
// zero-padded channel plane in a thread-local buffer and runs its innermost loop over a
// contiguous output row, which the compiler vectorizes.
#include "depthwise.hpp"

#include "backend.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

namespace kern::backend {

namespace {

// dst: [H + 2 pH, W + 2 pW] zero-padded copy of src: [H, W].
void pad_plane(const float* src, int64_t H, int64_t W, int64_t pH, int64_t pW, float* dst) {
  const int64_t Wp = W + 2 * pW;
  std::memset(dst, 0, sizeof(float) * (H + 2 * pH) * Wp);
  for (int64_t i = 0; i < H; ++i) std::memcpy(dst + (i + pH) * Wp + pW, src + i * W, sizeof(float) * W);
}

// out[Ho, Wo] = bias + sum_{a,b} k[a, b] * xp[i + a, j + b], xp: [Ho + kH - 1, Wp] padded plane.
// A block of kRows output rows x kVec columns stays in registers across all kH * kW taps:
// kRows independent FMA chains hide the FMA latency.
constexpr int64_t kVec = 16;
constexpr int64_t kRows = 4;

template <int64_t R>
void correlate_block(const float* xp, int64_t Wp, const float* k, int64_t kH, int64_t kW, float bias, int64_t i,
                     int64_t j0, int64_t Wo, float* out) {
  float acc[R][kVec];
  for (int64_t r = 0; r < R; ++r)
    for (int64_t t = 0; t < kVec; ++t) acc[r][t] = bias;
  for (int64_t a = 0; a < kH; ++a) {
    const float* krow = k + a * kW;
    for (int64_t b = 0; b < kW; ++b) {
      const float kv = krow[b];
      for (int64_t r = 0; r < R; ++r) {
        const float* xs = xp + (i + r + a) * Wp + j0 + b;
#pragma omp simd
        for (int64_t t = 0; t < kVec; ++t) acc[r][t] += kv * xs[t];
      }
    }
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t t = 0; t < kVec; ++t) out[(i + r) * Wo + j0 + t] = acc[r][t];
}

void correlate_plane(const float* xp, int64_t Wp, const float* k, int64_t kH, int64_t kW, float bias, int64_t Ho,
                     int64_t Wo, float* out) {
  const int64_t full = Wo / kVec * kVec;
  for (int64_t j0 = 0; j0 < full; j0 += kVec) {
    int64_t i = 0;
    for (; i + kRows <= Ho; i += kRows) correlate_block<kRows>(xp, Wp, k, kH, kW, bias, i, j0, Wo, out);
    for (; i < Ho; ++i) correlate_block<1>(xp, Wp, k, kH, kW, bias, i, j0, Wo, out);
  }
  for (int64_t i = 0; i < Ho; ++i)
    for (int64_t j = full; j < Wo; ++j) {  // each row's tail
      float acc = bias;
      for (int64_t a = 0; a < kH; ++a)
        for (int64_t b = 0; b < kW; ++b) acc += k[a * kW + b] * xp[(i + a) * Wp + j + b];
      out[i * Wo + j] = acc;
    }
}

// gw[a, b] += sum_{i, j} gy[i, j] * xp[i + a, j + b] for one plane; gy: [Ho, Wo], xp padded.
// Narrow filters (kW < kVec): one kVec-wide accumulator per tap b of a filter row, vectorized
// over j (kW independent FMA chains; each gy chunk is loaded once for all b).
// Wide filters: vectorized over b in blocks of kVec with four chains over j mod 4.
void accumulate_weight_grad(const float* gy, int64_t Ho, int64_t Wo, const float* xp, int64_t Wp, int64_t kH,
                            int64_t kW, float* gw) {
  if (kW < kVec) {
    const int64_t full = Wo / kVec * kVec;
    for (int64_t a = 0; a < kH; ++a) {
      float acc[kVec][kVec] = {};  // [b][lane]
      float tail[kVec] = {};
      for (int64_t i = 0; i < Ho; ++i) {
        const float* grow = gy + i * Wo;
        const float* xrow = xp + (i + a) * Wp;
        for (int64_t j0 = 0; j0 < full; j0 += kVec)
          for (int64_t b = 0; b < kW; ++b) {
#pragma omp simd
            for (int64_t t = 0; t < kVec; ++t) acc[b][t] += grow[j0 + t] * xrow[j0 + b + t];
          }
        for (int64_t j = full; j < Wo; ++j)
          for (int64_t b = 0; b < kW; ++b) tail[b] += grow[j] * xrow[j + b];
      }
      for (int64_t b = 0; b < kW; ++b) {
        float s = tail[b];
        for (int64_t t = 0; t < kVec; ++t) s += acc[b][t];
        gw[a * kW + b] += s;
      }
    }
    return;
  }
  for (int64_t a = 0; a < kH; ++a) {
    for (int64_t b0 = 0; b0 < kW; b0 += kVec) {
      const int64_t nb = std::min(kVec, kW - b0);
      float acc[kVec] = {};
      float acc4[4][kVec] = {};  // four independent FMA chains (j mod 4)
      for (int64_t i = 0; i < Ho; ++i) {
        const float* grow = gy + i * Wo;
        const float* xrow = xp + (i + a) * Wp + b0;
        int64_t j = 0;
        if (nb == kVec) {
          for (; j + 4 <= Wo; j += 4)
            for (int64_t q = 0; q < 4; ++q) {
              const float gv = grow[j + q];
#pragma omp simd
              for (int64_t t = 0; t < kVec; ++t) acc4[q][t] += gv * xrow[j + q + t];
            }
        }
        for (; j < Wo; ++j) {
          const float gv = grow[j];
          for (int64_t t = 0; t < nb; ++t) acc[t] += gv * xrow[j + t];
        }
      }
      for (int64_t q = 0; q < 4; ++q)
        for (int64_t t = 0; t < kVec; ++t) acc[t] += acc4[q][t];
      for (int64_t t = 0; t < nb; ++t) gw[a * kW + b0 + t] += acc[t];
    }
  }
}

// ---- small planes (output width < kVec): the row-vectorized loops above would run only their
// scalar tails (ConvNeXt's late stages: 8x8 ... 1x1 planes under a 7x7 filter). There the output
// is computed on the PADDED width, as one flattened vector: out_p[m] = sum_{a,b} k[a, b] *
// xp[m + a * Wp + b] for m = i * Wp + j, and only the columns j < Wo are kept. Taps that read
// nothing but padding for every output (rows a outside [a0, a1), columns b outside [b0, b1))
// are skipped: on a 1x1 plane under a 7x7 filter only the centre tap is left.

constexpr int64_t kChunk = 8 * kVec;  // output elements kept in registers at once

// Taps [lo, hi) along one dim whose input index o + t - pad lies in [0, in) for some output
// o in [0, out).
struct TapRange {
  int64_t lo, hi;
};
TapRange live_taps(int64_t in, int64_t out, int64_t k, int64_t pad) {
  const int64_t lo = std::max<int64_t>(0, pad - (out - 1)), hi = std::min<int64_t>(k, pad + in);
  return {lo, std::max(lo, hi)};
}

// Floats a padded plane buffer for the flattened loops needs: the plane, then room for the
// reads of the discarded columns and the last chunk (their values never reach a kept output).
int64_t flat_buffer_size(int64_t Hp, int64_t Wp, int64_t Ho, int64_t kW) {
  return std::max(Hp * Wp, (Ho * Wp + kChunk - 1) / kChunk * kChunk + (Hp - Ho) * Wp) + kW + kChunk;
}

// out[Ho, Wo] = bias + sum over live taps of k[a, b] * xp[i + a, j + b]; xp: padded plane
// [Hp, Wp] in a buffer of flat_buffer_size floats.
// One chunk of NV * kVec flattened outputs starting at m0, accumulated in registers.
template <int64_t NV>
void correlate_chunk(const float* xp, int64_t Wp, const float* k, int64_t kW, TapRange ra, TapRange rb, float bias,
                     int64_t m0, float* acc) {
  constexpr int64_t n = NV * kVec;
  float a_[n];
  for (int64_t t = 0; t < n; ++t) a_[t] = bias;
  for (int64_t a = ra.lo; a < ra.hi; ++a)
    for (int64_t b = rb.lo; b < rb.hi; ++b) {
      const float kv = k[a * kW + b];
      const float* xs = xp + m0 + a * Wp + b;
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) a_[t] += kv * xs[t];
    }
  for (int64_t t = 0; t < n; ++t) acc[t] = a_[t];
}

void correlate_plane_flat(const float* xp, int64_t Wp, const float* k, int64_t kW, TapRange ra, TapRange rb,
                          float bias, int64_t Ho, int64_t Wo, float* out) {
  const int64_t M = Ho * Wp;
  for (int64_t m0 = 0; m0 < M; m0 += kChunk) {
    float acc[kChunk];
    // As few vectors as the rest of the plane needs (a 2x2 plane under 7x7: one).
    switch (std::min<int64_t>(8, (M - m0 + kVec - 1) / kVec)) {
      case 1: correlate_chunk<1>(xp, Wp, k, kW, ra, rb, bias, m0, acc); break;
      case 2: correlate_chunk<2>(xp, Wp, k, kW, ra, rb, bias, m0, acc); break;
      case 3: correlate_chunk<3>(xp, Wp, k, kW, ra, rb, bias, m0, acc); break;
      case 4: correlate_chunk<4>(xp, Wp, k, kW, ra, rb, bias, m0, acc); break;
      case 5: correlate_chunk<5>(xp, Wp, k, kW, ra, rb, bias, m0, acc); break;
      case 6: correlate_chunk<6>(xp, Wp, k, kW, ra, rb, bias, m0, acc); break;
      case 7: correlate_chunk<7>(xp, Wp, k, kW, ra, rb, bias, m0, acc); break;
      default: correlate_chunk<8>(xp, Wp, k, kW, ra, rb, bias, m0, acc); break;
    }
    const int64_t end = std::min(M, m0 + kChunk);
    int64_t i = m0 / Wp, j = m0 - i * Wp;
    for (int64_t m = m0; m < end; ++m) {
      if (j < Wo) out[i * Wo + j] = acc[m - m0];
      if (++j == Wp) j = 0, ++i;
    }
  }
}

// gw[a, b] partial sums (per lane) over the live taps: acc[(a * kW + b) * kVec + lane] +=
// gyp[m] * xp[m + a * Wp + b], gyp: gy on the padded width (zero columns j >= Wo), rounded up to
// whole kVec blocks with zeros.
void accumulate_weight_grad_flat(const float* gyp, int64_t M, const float* xp, int64_t Wp, int64_t kW,
                                 TapRange ra, TapRange rb, float* acc) {
  for (int64_t a = ra.lo; a < ra.hi; ++a)
    for (int64_t b = rb.lo; b < rb.hi; ++b) {
      float* at = acc + (a * kW + b) * kVec;
      const float* xs = xp + a * Wp + b;
      float s[kVec];
      for (int64_t t = 0; t < kVec; ++t) s[t] = at[t];
      for (int64_t m0 = 0; m0 < M; m0 += kVec) {
#pragma omp simd
        for (int64_t t = 0; t < kVec; ++t) s[t] += gyp[m0 + t] * xs[m0 + t];
      }
      for (int64_t t = 0; t < kVec; ++t) at[t] = s[t];
    }
}

// depthwise_backward_weight for output planes narrower than kVec (see above).
void depthwise_backward_weight_flat(const DepthwiseGeometry& g, const float* gy, const float* x, float* gw) {
  const int64_t Hp = g.H + 2 * g.padH, Wp = g.W + 2 * g.padW, Ho = g.Ho(), Wo = g.Wo();
  const int64_t K = g.kH * g.kW, M = (Ho * Wp + kVec - 1) / kVec * kVec;
  const TapRange ra = live_taps(g.H, Ho, g.kH, g.padH), rb = live_taps(g.W, Wo, g.kW, g.padW);
#pragma omp parallel if (g.N * g.C * Ho * Wo * K > (1 << 15))
  {
    std::vector<float> buf(flat_buffer_size(Hp, Wp, Ho, g.kW), 0.f), gyp(M, 0.f), acc(K * kVec);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < g.C; ++c) {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t nc = n * g.C + c;
        pad_plane(x + nc * g.H * g.W, g.H, g.W, g.padH, g.padW, buf.data());
        const float* src = gy + nc * Ho * Wo;
        for (int64_t i = 0; i < Ho; ++i) std::memcpy(gyp.data() + i * Wp, src + i * Wo, sizeof(float) * Wo);
        accumulate_weight_grad_flat(gyp.data(), M, buf.data(), Wp, g.kW, ra, rb, acc.data());
      }
      float* out = gw + c * K;
      for (int64_t t = 0; t < K; ++t) {
        float s = 0.f;
        for (int64_t l = 0; l < kVec; ++l) s += acc[t * kVec + l];
        out[t] = s;
      }
    }
  }
}

// ---- tiny planes (Ho * Wo and H * W at most kTinyPlane): per plane, even the flattened loops
// above cost more in padding and setup than in arithmetic (a 2x2 plane under a 7x7 filter has
// 16 live multiply-adds). Here the planes of one example are transposed to [pixels, channels]
// and every (output pixel, input pixel, tap) triple the geometry allows is one multiply-add
// vectorized over the channels: ConvNeXt's 2x2 and 1x1 stages become a few hundred contiguous
// vector FMAs per example. Each output's sum runs over the triples in a fixed order, so the
// result does not depend on the thread count.

constexpr int64_t kTinyPlane = 16;  // measured: 4x4 planes run 3x faster here, 8x8 no faster
constexpr int64_t kChannelBlock = 64;  // channels per block in the weight gradient

bool tiny_planes(const DepthwiseGeometry& g) {
  return g.H * g.W <= kTinyPlane && g.Ho() * g.Wo() <= kTinyPlane;
}

struct TapTriple {
  int64_t out, in, tap;  // flattened output pixel, input pixel, filter tap
};

// Every (output, input, tap) with the input inside the plane, ordered by output then tap.
std::vector<TapTriple> tap_triples(const DepthwiseGeometry& g) {
  std::vector<TapTriple> r;
  for (int64_t i = 0; i < g.Ho(); ++i)
    for (int64_t j = 0; j < g.Wo(); ++j)
      for (int64_t a = 0; a < g.kH; ++a)
        for (int64_t b = 0; b < g.kW; ++b) {
          const int64_t ii = i + a - g.padH, jj = j + b - g.padW;
          if (ii >= 0 && ii < g.H && jj >= 0 && jj < g.W) r.push_back({i * g.Wo() + j, ii * g.W + jj, a * g.kW + b});
        }
  return r;
}

// dst[p, c - c0] = src[c, p] for channels [c0, c0 + cb); src: [C, P] planes of one example.
void to_channels_last(const float* src, int64_t P, int64_t c0, int64_t cb, float* dst) {
  if (P == 1) return (void)std::memcpy(dst, src + c0, sizeof(float) * cb);  // 1x1 planes: the same layout
  for (int64_t c = 0; c < cb; ++c)
    for (int64_t p = 0; p < P; ++p) dst[p * cb + c] = src[(c0 + c) * P + p];
}
void from_channels_last(const float* src, int64_t P, int64_t C, float* dst) {
  if (P == 1) return (void)std::memcpy(dst, src, sizeof(float) * C);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t p = 0; p < P; ++p) dst[c * P + p] = src[p * C + c];
}

// wt[tap, c] = w[c, tap]: [K, C]
std::vector<float> taps_by_channel(const float* w, int64_t C, int64_t K) {
  std::vector<float> wt(K * C);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < K; ++t) wt[t * C + c] = w[c * K + t];
  return wt;
}

// dst[to, :] += wt[tap, :] * src[from, :] for each triple (to, from) = (out, in) or (in, out).
template <bool Transposed>
void apply_triples(const std::vector<TapTriple>& triples, const float* wt, const float* src, int64_t C, float* dst) {
  for (const auto& t : triples) {
    float* d = dst + (Transposed ? t.in : t.out) * C;
    const float* s = src + (Transposed ? t.out : t.in) * C;
    const float* k = wt + t.tap * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) d[c] += k[c] * s[c];
  }
}

// Forward (Transposed = false: src = x, dst = y) or backward input (true: src = gy, dst = gx).
template <bool Transposed>
void depthwise_tiny(const DepthwiseGeometry& g, const float* src, const float* w, const float* bias, float* dst) {
  const int64_t C = g.C, K = g.kH * g.kW;
  const int64_t P_src = Transposed ? g.Ho() * g.Wo() : g.H * g.W, P_dst = Transposed ? g.H * g.W : g.Ho() * g.Wo();
  const auto triples = tap_triples(g);
  const auto wt = taps_by_channel(w, C, K);
#pragma omp parallel if (g.N * C * static_cast<int64_t>(triples.size()) > (1 << 15))
  {
    std::vector<float> s(P_src * C), d(P_dst * C);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
      to_channels_last(src + n * C * P_src, P_src, 0, C, s.data());
      for (int64_t p = 0; p < P_dst; ++p)
        for (int64_t c = 0; c < C; ++c) d[p * C + c] = bias ? bias[c] : 0.f;
      apply_triples<Transposed>(triples, wt.data(), s.data(), C, d.data());
      from_channels_last(d.data(), P_dst, C, dst + n * C * P_dst);
    }
  }
}

// gw[c, tap] = sum_n sum_{(out, in, tap)} gy[n, c, out] * x[n, c, in], in blocks of channels
// (the sum over n stays in one thread: no cross-thread reduction, a fixed order).
void depthwise_backward_weight_tiny(const DepthwiseGeometry& g, const float* gy, const float* x, float* gw) {
  const int64_t C = g.C, K = g.kH * g.kW, P = g.H * g.W, Q = g.Ho() * g.Wo();
  const auto triples = tap_triples(g);
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel if (g.N * C * static_cast<int64_t>(triples.size()) > (1 << 15))
  {
    std::vector<float> xs(P * kChannelBlock), gs(Q * kChannelBlock), acc(K * kChannelBlock);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t c0 = blk * kChannelBlock, cb = std::min(kChannelBlock, C - c0);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t n = 0; n < g.N; ++n) {
        to_channels_last(x + n * C * P, P, c0, cb, xs.data());
        to_channels_last(gy + n * C * Q, Q, c0, cb, gs.data());
        for (const auto& t : triples) {
          float* a = acc.data() + t.tap * cb;
          const float* gv = gs.data() + t.out * cb;
          const float* xv = xs.data() + t.in * cb;
#pragma omp simd
          for (int64_t c = 0; c < cb; ++c) a[c] += gv[c] * xv[c];
        }
      }
      for (int64_t c = 0; c < cb; ++c)
        for (int64_t t = 0; t < K; ++t) gw[(c0 + c) * K + t] = acc[t * cb + c];
    }
  }
}

}  // namespace

void depthwise_forward(const DepthwiseGeometry& g, const float* x, const float* w, const float* bias, float* y) {
  count_path(Primitive::DepthwiseConv2d, Path::Fast);
  if (tiny_planes(g)) return depthwise_tiny<false>(g, x, w, bias, y);
  const int64_t Hp = g.H + 2 * g.padH, Wp = g.W + 2 * g.padW, Ho = g.Ho(), Wo = g.Wo();
  const bool flat = Wo < kVec;
  const TapRange ra = live_taps(g.H, Ho, g.kH, g.padH), rb = live_taps(g.W, Wo, g.kW, g.padW);
#pragma omp parallel if (g.N * g.C * Ho * Wo * g.kH * g.kW > (1 << 15))
  {
    std::vector<float> buf(flat ? flat_buffer_size(Hp, Wp, Ho, g.kW) : Hp * Wp, 0.f);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
      const int64_t c = nc % g.C;
      pad_plane(x + nc * g.H * g.W, g.H, g.W, g.padH, g.padW, buf.data());
      const float* k = w + c * g.kH * g.kW;
      const float b = bias ? bias[c] : 0.f;
      if (flat) correlate_plane_flat(buf.data(), Wp, k, g.kW, ra, rb, b, Ho, Wo, y + nc * Ho * Wo);
      else correlate_plane(buf.data(), Wp, k, g.kH, g.kW, b, Ho, Wo, y + nc * Ho * Wo);
    }
  }
}

void depthwise_backward_input(const DepthwiseGeometry& g, const float* gy, const float* w, float* gx) {
  count_path(Primitive::DepthwiseConv2d, Path::Fast);
  if (tiny_planes(g)) return depthwise_tiny<true>(g, gy, w, nullptr, gx);
  // gx = correlation of gy (padded by k - 1 - p) with the filter rotated by 180 degrees.
  const int64_t Ho = g.Ho(), Wo = g.Wo();
  const int64_t qH = g.kH - 1 - g.padH, qW = g.kW - 1 - g.padW;  // >= 0 when p < k
  const int64_t Hp = Ho + 2 * qH, Wp = Wo + 2 * qW;
  const bool flat = g.W < kVec;
  const TapRange ra = live_taps(Ho, g.H, g.kH, qH), rb = live_taps(Wo, g.W, g.kW, qW);
#pragma omp parallel if (g.N * g.C * g.H * g.W * g.kH * g.kW > (1 << 15))
  {
    std::vector<float> buf(flat ? flat_buffer_size(Hp, Wp, g.H, g.kW) : Hp * Wp, 0.f), rot(g.kH * g.kW);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
      const int64_t c = nc % g.C;
      const float* k = w + c * g.kH * g.kW;
      for (int64_t t = 0; t < g.kH * g.kW; ++t) rot[t] = k[g.kH * g.kW - 1 - t];
      pad_plane(gy + nc * Ho * Wo, Ho, Wo, qH, qW, buf.data());
      if (flat) correlate_plane_flat(buf.data(), Wp, rot.data(), g.kW, ra, rb, 0.f, g.H, g.W, gx + nc * g.H * g.W);
      else correlate_plane(buf.data(), Wp, rot.data(), g.kH, g.kW, 0.f, g.H, g.W, gx + nc * g.H * g.W);
    }
  }
}

void depthwise_backward_weight(const DepthwiseGeometry& g, const float* gy, const float* x, float* gw) {
  count_path(Primitive::DepthwiseConv2d, Path::Fast);
  const int64_t Hp = g.H + 2 * g.padH, Wp = g.W + 2 * g.padW, Ho = g.Ho(), Wo = g.Wo();
  const int64_t K = g.kH * g.kW;
  if (tiny_planes(g)) return depthwise_backward_weight_tiny(g, gy, x, gw);
  if (Wo < kVec) {
    depthwise_backward_weight_flat(g, gy, x, gw);
    return;
  }
#pragma omp parallel
  {
    // One extra padded row: the vectorized b-blocks may read up to kVec - 1 floats past a row.
    std::vector<float> buf((Hp + 1) * Wp + kVec, 0.f);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < g.C; ++c) {
      float* out = gw + c * K;
      std::fill(out, out + K, 0.f);
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t nc = n * g.C + c;
        pad_plane(x + nc * g.H * g.W, g.H, g.W, g.padH, g.padW, buf.data());
        accumulate_weight_grad(gy + nc * Ho * Wo, Ho, Wo, buf.data(), Wp, g.kH, g.kW, out);
      }
    }
  }
}

}  // namespace kern::backend
