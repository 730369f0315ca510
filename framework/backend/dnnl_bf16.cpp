// bf16 GEMM for autocast: oneDNN's matmul primitive with bf16 src / weights and a float32
// dst (float32 accumulation), on the caller's strided buffers. Primitives are built once per
// (shapes, strides, beta) and cached, as the convolutions in dnnl_conv.cpp.
#include <dnnl.hpp>

#include <fmt/format.h>

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "backend.hpp"

namespace kern::backend {

namespace {

using dnnl::memory;
using dt = memory::data_type;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

struct MatmulEntry {
  dnnl::matmul prim;
  memory::desc a, b, c, scratchpad;
  std::string impl;
};

memory::desc strided(int64_t rows, int64_t cols, int64_t rs, int64_t cs, dt type) {
  return memory::desc({rows, cols}, type, memory::dims{rs, cs});
}

std::shared_ptr<MatmulEntry> build(const MatRef<bf16>& a, const MatRef<bf16>& b, int64_t ldc, float beta) {
  auto e = std::make_shared<MatmulEntry>();
  e->a = strided(a.rows, a.cols, a.row_stride, a.col_stride, dt::bf16);
  e->b = strided(b.rows, b.cols, b.row_stride, b.col_stride, dt::bf16);
  e->c = strided(a.rows, b.cols, ldc, 1, dt::f32);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (beta != 0.0f) {  // C = A @ B + beta * C: oneDNN's sum post-op
    dnnl::post_ops po;
    po.append_sum(beta);
    attr.set_post_ops(po);
  }
  dnnl::matmul::desc desc(e->a, e->b, e->c);
  dnnl::matmul::primitive_desc pd(desc, attr, engine());
  e->prim = dnnl::matmul(pd);
  e->scratchpad = pd.scratchpad_desc();
  e->impl = pd.impl_info_str();
  return e;
}

std::shared_ptr<MatmulEntry> lookup(const MatRef<bf16>& a, const MatRef<bf16>& b, int64_t ldc, float beta) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<MatmulEntry>> cache;
  const std::string key = fmt::format("{}x{}:{},{} @ {}x{}:{},{} ldc {} beta {}", a.rows, a.cols, a.row_stride,
                                      a.col_stride, b.rows, b.cols, b.row_stride, b.col_stride, ldc, beta);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  std::shared_ptr<MatmulEntry> e;
  try {
    e = build(a, b, ldc, beta);
  } catch (const dnnl::error& err) {
    throw Error(fmt::format("gemm (bf16): oneDNN could not create the matmul for {} ({})", key, err.what()));
  }
  if (cache.size() >= 1024) cache.clear();  // bounded, as the convolution cache
  cache.emplace(key, e);
  return e;
}

const char* isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx2: return "avx2";
    default: return "other";
  }
}

}  // namespace

void gemm_bf16(const MatRef<bf16>& a, const MatRef<bf16>& b, float* c, int64_t ldc, float beta) {
  count_path(Primitive::Gemm, Path::Fast);
  auto e = lookup(a, b, ldc, beta);
  auto& eng = engine();
  try {
    memory ma(e->a, eng, const_cast<bf16*>(a.data)), mb(e->b, eng, const_cast<bf16*>(b.data)), mc(e->c, eng, c);
    e->prim.execute(stream(), {{DNNL_ARG_SRC, ma},
                               {DNNL_ARG_WEIGHTS, mb},
                               {DNNL_ARG_DST, mc},
                               {DNNL_ARG_SCRATCHPAD, memory(e->scratchpad, eng)}});
    stream().wait();
  } catch (const dnnl::error& err) {
    throw Error(fmt::format("gemm (bf16): oneDNN matmul [{}x{}] @ [{}x{}] failed ({})", a.rows, a.cols, b.rows,
                            b.cols, err.what()));
  }
}

std::string bf16_impl_info() {
  // Probes: a 256^3 row-major matmul and a 3x3 convolution of 64 channels.
  static const std::string info = [] {
    const MatRef<bf16> a{nullptr, 256, 256, 256, 1}, b{nullptr, 256, 256, 256, 1};
    const std::string mm = lookup(a, b, 256, 0.0f)->impl;
    ConvGeometry g{};
    g.N = 8;
    g.C_in = g.C_out = 64;
    g.H = g.W = g.Ho = g.Wo = 28;
    g.kH = g.kW = 3;
    g.stride[0] = g.stride[1] = g.dilation[0] = g.dilation[1] = 1;
    g.padding[0] = g.padding[1] = 1;
    g.groups = 1;
    return fmt::format("cpu isa {}; matmul {}; conv {}", isa_name(dnnl_get_effective_cpu_isa()), mm,
                       conv2d_bf16_impl(g));
  }();
  return info;
}

}  // namespace kern::backend
