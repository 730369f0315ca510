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

}  // namespace

void depthwise_forward(const DepthwiseGeometry& g, const float* x, const float* w, const float* bias, float* y) {
  count_path(Primitive::DepthwiseConv2d, Path::Fast);
  const int64_t Hp = g.H + 2 * g.padH, Wp = g.W + 2 * g.padW, Ho = g.Ho(), Wo = g.Wo();
#pragma omp parallel
  {
    std::vector<float> buf(Hp * Wp);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
      const int64_t c = nc % g.C;
      pad_plane(x + nc * g.H * g.W, g.H, g.W, g.padH, g.padW, buf.data());
      correlate_plane(buf.data(), Wp, w + c * g.kH * g.kW, g.kH, g.kW, bias ? bias[c] : 0.f, Ho, Wo,
                      y + nc * Ho * Wo);
    }
  }
}

void depthwise_backward_input(const DepthwiseGeometry& g, const float* gy, const float* w, float* gx) {
  count_path(Primitive::DepthwiseConv2d, Path::Fast);
  // gx = correlation of gy (padded by k - 1 - p) with the filter rotated by 180 degrees.
  const int64_t Ho = g.Ho(), Wo = g.Wo();
  const int64_t qH = g.kH - 1 - g.padH, qW = g.kW - 1 - g.padW;  // >= 0 when p < k
  const int64_t Hp = Ho + 2 * qH, Wp = Wo + 2 * qW;
#pragma omp parallel
  {
    std::vector<float> buf(Hp * Wp), rot(g.kH * g.kW);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
      const int64_t c = nc % g.C;
      const float* k = w + c * g.kH * g.kW;
      for (int64_t t = 0; t < g.kH * g.kW; ++t) rot[t] = k[g.kH * g.kW - 1 - t];
      pad_plane(gy + nc * Ho * Wo, Ho, Wo, qH, qW, buf.data());
      correlate_plane(buf.data(), Wp, rot.data(), g.kH, g.kW, 0.f, g.H, g.W, gx + nc * g.H * g.W);
    }
  }
}

void depthwise_backward_weight(const DepthwiseGeometry& g, const float* gy, const float* x, float* gw) {
  count_path(Primitive::DepthwiseConv2d, Path::Fast);
  const int64_t Hp = g.H + 2 * g.padH, Wp = g.W + 2 * g.padW, Ho = g.Ho(), Wo = g.Wo();
  const int64_t K = g.kH * g.kW;
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
