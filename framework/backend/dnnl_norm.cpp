// oneDNN softmax / logsoftmax and layer normalization forward (float32 fast path). Their
// backwards stay in kern's differentiable ops (framework/ops/activation.cpp, norm.cpp).
// Primitives are cached by shape: building one costs far more than running it on the
// small tensors training loops see again and again.
#include <dnnl.hpp>

#include <map>
#include <mutex>
#include <tuple>

#include "backend.hpp"

namespace kern::backend {

namespace {

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

struct NormCache {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::mutex mu;
  std::map<std::tuple<int64_t, int64_t, int64_t, bool>, dnnl::primitive> softmax;
  std::map<std::tuple<int64_t, int64_t, unsigned, float>, dnnl::primitive> layer_norm;
};

NormCache& cache() {
  static NormCache c;
  return c;
}

// Looks up or builds a primitive; the cache is dropped when it grows large (shapes that
// change every step would otherwise grow it without bound).
template <typename Map, typename Key, typename Build>
dnnl::primitive cached(NormCache& c, Map& map, const Key& key, Build build) {
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = map.find(key);
  if (it != map.end()) return it->second;
  if (map.size() >= 256) map.clear();
  return map.emplace(key, build()).first->second;
}

}  // namespace

void softmax_fast(const float* x, float* y, int64_t outer, int64_t n, int64_t inner, bool log) {
  count_path(Primitive::Softmax, Path::Fast);
  NormCache& c = cache();
  const dnnl::memory::desc md({outer, n, inner}, dt::f32, tag::abc);
  dnnl::primitive prim = cached(c, c.softmax, std::make_tuple(outer, n, inner, log), [&]() -> dnnl::primitive {
    if (log) {
      dnnl::logsoftmax_forward::desc d(dnnl::prop_kind::forward_inference, md, 1);
      return dnnl::logsoftmax_forward(dnnl::logsoftmax_forward::primitive_desc(d, c.engine));
    }
    dnnl::softmax_forward::desc d(dnnl::prop_kind::forward_inference, md, 1);
    return dnnl::softmax_forward(dnnl::softmax_forward::primitive_desc(d, c.engine));
  });
  dnnl::memory src(md, c.engine, const_cast<float*>(x)), dst(md, c.engine, y);
  prim.execute(c.stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}});
  c.stream.wait();
}

void layer_norm_fast(const float* x, const float* weight, const float* bias, float* y, int64_t rows, int64_t m,
                     float eps) {
  count_path(Primitive::LayerNorm, Path::Fast);
  NormCache& c = cache();
  const dnnl::memory::desc md({rows, m}, dt::f32, tag::ab);
  const dnnl::memory::desc pmd({m}, dt::f32, tag::a);
  auto flags = dnnl::normalization_flags::none;
  if (weight) flags |= dnnl::normalization_flags::use_scale;
  if (bias) flags |= dnnl::normalization_flags::use_shift;
  auto key = std::make_tuple(rows, m, static_cast<unsigned>(flags), eps);
  dnnl::primitive prim = cached(c, c.layer_norm, key, [&]() -> dnnl::primitive {
    dnnl::layer_normalization_forward::desc d(dnnl::prop_kind::forward_inference, md, eps, flags);
    return dnnl::layer_normalization_forward(dnnl::layer_normalization_forward::primitive_desc(d, c.engine));
  });
  dnnl::memory src(md, c.engine, const_cast<float*>(x)), dst(md, c.engine, y);
  std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}};
  if (weight) args.emplace(DNNL_ARG_SCALE, dnnl::memory(pmd, c.engine, const_cast<float*>(weight)));
  if (bias) args.emplace(DNNL_ARG_SHIFT, dnnl::memory(pmd, c.engine, const_cast<float*>(bias)));
  prim.execute(c.stream, args);
  c.stream.wait();
}

}  // namespace kern::backend
