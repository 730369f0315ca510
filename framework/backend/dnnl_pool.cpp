// oneDNN pooling forward (float32 fast path) for max_pool2d, avg_pool2d and uniform
// adaptive_avg_pool2d. The backwards stay in kern's differentiable ops (framework/ops/pool.cpp).
//
// Max pooling must return kern's (PyTorch's) indices: the flat H*W index of the FIRST maximum
// of each window in row-major window order, with NaN propagating. oneDNN's forward_training
// workspace holds, per output, the index kh * kW + kw of the maximum inside the full (padded)
// kernel window; both its simple_nchw and jit kernels scan kh-major and replace the running
// maximum only on a strictly greater value, i.e. they keep the first maximum (checked on
// tie-heavy inputs by the [backend][pool] tests). The differences, handled here:
//   - NaN: oneDNN skips NaNs (s > max is false); kern propagates the first NaN. An input
//     holding any NaN falls back to kern's loops (max_pool2d_fast returns false).
//   - All elements -inf (or -FLT_MAX): oneDNN starts from -FLT_MAX and reports index 0, which
//     may be a padded position; those windows are recomputed here with kern's rule.
// The workspace must be plain [N, C, Ho, Wo] (as oneDNN gives for nchw data); otherwise we
// fall back too.
//
// Primitives are cached by geometry, like the other dnnl_*.cpp files.
#include <dnnl.hpp>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "backend.hpp"

namespace kern::backend {

namespace {

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

enum class PoolAlg : int64_t { Max, AvgInclude, AvgExclude };

struct PoolPrim {
  dnnl::primitive prim;
  dnnl::memory::desc src, dst, ws;  // ws is empty for average pooling
};

struct PoolCache {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::mutex mu;
  std::map<std::array<int64_t, 13>, PoolPrim> prims;
};

PoolCache& cache() {
  static PoolCache c;
  return c;
}

// The right / bottom padding oneDNN needs to produce Ho (Wo) outputs: PyTorch's ceil_mode
// adds windows that overhang the right padding, which oneDNN expresses as extra padding.
int64_t right_padding(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p) {
  return std::max(p, (out - 1) * s + k - in - p);
}

PoolPrim get_prim(const PoolGeometry& g, PoolAlg alg) {
  PoolCache& c = cache();
  const std::array<int64_t, 13> key{g.N, g.C, g.H, g.W, g.Ho, g.Wo, g.kernel[0], g.kernel[1], g.stride[0],
                                    g.stride[1], g.padding[0], g.padding[1], static_cast<int64_t>(alg)};
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.prims.find(key);
  if (it != c.prims.end()) return it->second;
  if (c.prims.size() >= 256) c.prims.clear();  // shapes changing every step must not grow it forever
  const dnnl::memory::desc src({g.N, g.C, g.H, g.W}, dt::f32, tag::nchw);
  const dnnl::memory::desc dst({g.N, g.C, g.Ho, g.Wo}, dt::f32, tag::nchw);
  const dnnl::algorithm a = alg == PoolAlg::Max          ? dnnl::algorithm::pooling_max
                            : alg == PoolAlg::AvgInclude ? dnnl::algorithm::pooling_avg_include_padding
                                                         : dnnl::algorithm::pooling_avg_exclude_padding;
  // forward_training makes oneDNN write the max workspace (the argmax inside each window).
  const auto prop = alg == PoolAlg::Max ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  const dnnl::memory::dims pr{right_padding(g.H, g.Ho, g.kernel[0], g.stride[0], g.padding[0]),
                              right_padding(g.W, g.Wo, g.kernel[1], g.stride[1], g.padding[1])};
  dnnl::pooling_forward::desc d(prop, a, src, dst, {g.stride[0], g.stride[1]}, {g.kernel[0], g.kernel[1]},
                                {g.padding[0], g.padding[1]}, pr);
  dnnl::pooling_forward::primitive_desc pd(d, c.engine);
  PoolPrim p{dnnl::pooling_forward(pd), src, dst, alg == PoolAlg::Max ? pd.workspace_desc() : dnnl::memory::desc()};
  return c.prims.emplace(key, p).first->second;
}

bool has_nan(const float* x, int64_t n) {
  int any = 0;
#pragma omp parallel for simd reduction(| : any) schedule(static) if (n > (1 << 18))
  for (int64_t i = 0; i < n; ++i) any |= x[i] != x[i];
  return any != 0;
}

// kern's rule for one window (used where oneDNN saw only values <= -FLT_MAX): the first
// maximum in row-major order, starting from -inf, so an all -inf window gives -inf at its
// first element.
void max_window(const PoolGeometry& g, const float* xp, int64_t oh, int64_t ow, float& best, int64_t& arg) {
  const int64_t h0 = oh * g.stride[0] - g.padding[0], w0 = ow * g.stride[1] - g.padding[1];
  const int64_t hs = std::max<int64_t>(h0, 0), ws = std::max<int64_t>(w0, 0);
  const int64_t he = std::min(h0 + g.kernel[0], g.H), we = std::min(w0 + g.kernel[1], g.W);
  best = -std::numeric_limits<float>::infinity();
  arg = hs * g.W + ws;
  for (int64_t h = hs; h < he; ++h)
    for (int64_t w = ws; w < we; ++w)
      if (xp[h * g.W + w] > best) {
        best = xp[h * g.W + w];
        arg = h * g.W + w;
      }
}

}  // namespace

bool max_pool2d_fast(const PoolGeometry& g, const float* x, float* y, int64_t* idx) {
  const int64_t n_in = g.N * g.C * g.H * g.W;
  if (has_nan(x, n_in)) return false;
  const PoolPrim p = get_prim(g, PoolAlg::Max);
  const bool u8 = p.ws.data_type() == dt::u8;
  if (p.ws != dnnl::memory::desc({g.N, g.C, g.Ho, g.Wo}, u8 ? dt::u8 : dt::s32, tag::nchw)) return false;
  PoolCache& c = cache();
  std::unique_ptr<unsigned char[]> ws(new unsigned char[p.ws.get_size()]);  // fully written by oneDNN
  p.prim.execute(c.stream, {{DNNL_ARG_SRC, dnnl::memory(p.src, c.engine, const_cast<float*>(x))},
                            {DNNL_ARG_DST, dnnl::memory(p.dst, c.engine, y)},
                            {DNNL_ARG_WORKSPACE, dnnl::memory(p.ws, c.engine, ws.get())}});
  c.stream.wait();

  // Window index k = kh * kW + kw -> offset kh * W + kw from the window's (padded) origin.
  const int64_t kk = g.kernel[0] * g.kernel[1];
  std::vector<int64_t> off(kk);
  for (int64_t k = 0; k < kk; ++k) off[k] = (k / g.kernel[1]) * g.W + k % g.kernel[1];
  const int64_t planes = g.N * g.C, plane_out = g.Ho * g.Wo;
  const unsigned char* w8 = ws.get();
  const int32_t* w32 = reinterpret_cast<const int32_t*>(ws.get());
  const float lowest = std::numeric_limits<float>::lowest();
#pragma omp parallel for schedule(static) if (planes > 1 && planes * plane_out > (1 << 15))
  for (int64_t pl = 0; pl < planes; ++pl) {
    const float* xp = x + pl * g.H * g.W;
    for (int64_t oh = 0; oh < g.Ho; ++oh) {
      const int64_t o0 = pl * plane_out + oh * g.Wo;
      const int64_t row0 = (oh * g.stride[0] - g.padding[0]) * g.W - g.padding[1];
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        const int64_t o = o0 + ow;
        if (y[o] <= lowest) {
          max_window(g, xp, oh, ow, y[o], idx[o]);
          continue;
        }
        const int64_t k = u8 ? w8[o] : w32[o];
        idx[o] = row0 + ow * g.stride[1] + off[k];
      }
    }
  }
  count_path(Primitive::MaxPool2d, Path::Fast);  // only when the result is used
  return true;
}

void avg_pool2d_fast(const PoolGeometry& g, bool exclude_pad, const float* x, float* y) {
  count_path(Primitive::AvgPool2d, Path::Fast);
  const PoolPrim p = get_prim(g, exclude_pad ? PoolAlg::AvgExclude : PoolAlg::AvgInclude);
  PoolCache& c = cache();
  p.prim.execute(c.stream, {{DNNL_ARG_SRC, dnnl::memory(p.src, c.engine, const_cast<float*>(x))},
                            {DNNL_ARG_DST, dnnl::memory(p.dst, c.engine, y)}});
  c.stream.wait();
}

}  // namespace kern::backend
