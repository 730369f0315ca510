#pragma once
#ifndef KERN_BUILDING_FRAMEWORK  // private to kern_core: see CMakeLists.txt (layering)
#error "framework/backend/eltwise.hpp is private to kern_core; include <kern/...> public headers instead"
#endif
// Internal: oneDNN eltwise forward for contiguous float32 buffers (the fast path of the
// unary elementwise ops; JIT-vectorized exp/log/tanh/erf-GELU that std:: math cannot match).
#include <cstdint>

namespace kern::backend {

enum class Eltwise { Exp, Log, Tanh, Logistic, Relu, GeluErf, GeluTanh, Sqrt, Abs, Square, SoftRelu, Swish, Linear };

/// out[i] = f(in[i]) for i < n; alpha/beta as in oneDNN's eltwise definitions
/// (Linear: alpha * x + beta; SoftRelu: alpha = beta (PyTorch's softplus beta, oneDNN 2.6 semantics).
void eltwise_fast(Eltwise alg, const float* in, float* out, int64_t n, float alpha = 0.f, float beta = 0.f);

/// diff_src[i] = diff_dst[i] * f'(src[i]) (oneDNN eltwise backward, same alpha/beta rules).
void eltwise_backward_fast(Eltwise alg, const float* src, const float* diff_dst, float* diff_src, int64_t n,
                           float alpha = 0.f, float beta = 0.f);

}  // namespace kern::backend
