// oneDNN eltwise primitives, cached by (algorithm, alpha, beta, length).
#include <dnnl.hpp>

#include <map>
#include <mutex>
#include <tuple>

#include <kern/error.hpp>

#include "backend.hpp"
#include "eltwise.hpp"

namespace kern::backend {

namespace {

dnnl::algorithm to_dnnl(Eltwise a) {
  using A = dnnl::algorithm;
  switch (a) {
    case Eltwise::Exp: return A::eltwise_exp;
    case Eltwise::Log: return A::eltwise_log;
    case Eltwise::Tanh: return A::eltwise_tanh;
    case Eltwise::Logistic: return A::eltwise_logistic;
    case Eltwise::Relu: return A::eltwise_relu;
    case Eltwise::GeluErf: return A::eltwise_gelu_erf;
    case Eltwise::GeluTanh: return A::eltwise_gelu_tanh;
    case Eltwise::Sqrt: return A::eltwise_sqrt;
    case Eltwise::Abs: return A::eltwise_abs;
    case Eltwise::Square: return A::eltwise_square;
    case Eltwise::SoftRelu: return A::eltwise_soft_relu;
    case Eltwise::Swish: return A::eltwise_swish;
    case Eltwise::Linear: return A::eltwise_linear;
  }
  throw Error("eltwise: unknown algorithm");
}

struct Cache {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<std::tuple<int, float, float, int64_t>, dnnl::eltwise_forward> prims;
  std::map<std::tuple<int, float, float, int64_t>, dnnl::eltwise_backward> backward_prims;
  std::mutex mu;
};

Cache& cache() {
  static Cache c;
  return c;
}

}  // namespace

void eltwise_fast(Eltwise alg, const float* in, float* out, int64_t n, float alpha, float beta) {
  count_path(Primitive::Eltwise, Path::Fast);
  if (n == 0) return;
  Cache& c = cache();
  const dnnl::memory::desc md({n}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::a);
  dnnl::eltwise_forward prim;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto key = std::make_tuple(static_cast<int>(alg), alpha, beta, n);
    auto it = c.prims.find(key);
    if (it == c.prims.end()) {
      dnnl::eltwise_forward::desc d(dnnl::prop_kind::forward_inference, to_dnnl(alg), md, alpha, beta);
      it = c.prims.emplace(key, dnnl::eltwise_forward(dnnl::eltwise_forward::primitive_desc(d, c.engine))).first;
    }
    prim = it->second;
  }
  dnnl::memory src(md, c.engine, const_cast<float*>(in)), dst(md, c.engine, out);
  prim.execute(c.stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}});
  c.stream.wait();
}

void eltwise_backward_fast(Eltwise alg, const float* src, const float* diff_dst, float* diff_src, int64_t n,
                           float alpha, float beta) {
  count_path(Primitive::Eltwise, Path::Fast);
  if (n == 0) return;
  Cache& c = cache();
  const dnnl::memory::desc md({n}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::a);
  dnnl::eltwise_backward prim;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto key = std::make_tuple(static_cast<int>(alg), alpha, beta, n);
    auto it = c.backward_prims.find(key);
    if (it == c.backward_prims.end()) {
      dnnl::eltwise_forward::desc fd(dnnl::prop_kind::forward_training, to_dnnl(alg), md, alpha, beta);
      dnnl::eltwise_forward::primitive_desc hint(fd, c.engine);
      dnnl::eltwise_backward::desc bd(to_dnnl(alg), md, md, alpha, beta);
      it = c.backward_prims.emplace(key, dnnl::eltwise_backward(dnnl::eltwise_backward::primitive_desc(bd, c.engine, hint)))
               .first;
    }
    prim = it->second;
  }
  dnnl::memory s(md, c.engine, const_cast<float*>(src)), dd(md, c.engine, const_cast<float*>(diff_dst)),
      ds(md, c.engine, diff_src);
  prim.execute(c.stream, {{DNNL_ARG_SRC, s}, {DNNL_ARG_DIFF_DST, dd}, {DNNL_ARG_DIFF_SRC, ds}});
  c.stream.wait();
}

}  // namespace kern::backend
