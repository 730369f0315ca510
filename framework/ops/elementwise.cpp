// Elementwise ops, forward and backward side by side. Backward formulas use only
// differentiable kern ops, so they can be differentiated again.
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include <bit>
#include <cmath>
#include <type_traits>

#include "../backend/backend.hpp"
#include "../backend/eltwise.hpp"
#include "kernel_utils.hpp"
#include "jvp_util.hpp"

namespace kern {

using detail::dispatch_float;
using G = std::vector<Tensor>;

namespace {

// f is a generic lambda (auto) -> same type.
template <typename F>
Tensor unary_forward(const Tensor& x, const char* op, F f) {
  detail::check_floating(x, op);
  return dispatch_float(x.dtype(), op, [&]<typename T>() {
    return detail::map_unary<T, T>(x, x.dtype(), [f](T v) { return static_cast<T>(f(v)); });
  });
}

// Like unary_forward, but float32 tensors of at least kFastMin elements run oneDNN's
// vectorized eltwise kernel `alg` (the fast path) when the backend allows it.
constexpr int64_t kFastMin = 1024;
template <typename F>
Tensor unary_forward(const Tensor& x, const char* op, backend::Eltwise alg, F f, float alpha = 0.f,
                     float beta = 0.f) {
  if (backend::use_fast(x.dtype()) && x.numel() >= kFastMin && x.is_contiguous()) {
    Tensor out = empty(x.shape(), x.dtype());
    backend::eltwise_fast(alg, x.data_ptr<float>(), out.data_ptr<float>(), x.numel(), alpha, beta);
    return out;
  }
  backend::count_path(backend::Primitive::Eltwise, backend::Path::Reference);
  return unary_forward(x, op, f);
}

template <typename F>
Tensor binary_forward(const Tensor& a, const Tensor& b, const char* op, F f) {
  detail::check_floating(a, op);
  detail::check_same_dtype(a, b, op);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  return dispatch_float(a.dtype(), op, [&]<typename T>() {
    return detail::map_binary<T, T, T>(a, b, shape, a.dtype(),
                                       [f](T x, T y) { return static_cast<T>(f(x, y)); });
  });
}

// Comparison masks: 1 where f holds, else 0, in a's dtype (float32 for int64 inputs).
template <typename F>
Tensor compare(const Tensor& a, const Tensor& b, const char* op, F f) {
  detail::check_same_dtype(a, b, op);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  const DType out = is_floating(a.dtype()) ? a.dtype() : DType::Float32;
  return detail::dispatch_all(a.dtype(), op, [&]<typename T>() {
    return detail::dispatch_float(out, op, [&]<typename TO>() {
      return detail::map_binary<TO, T, T>(a, b, shape, out,
                                          [f](T x, T y) { return f(x, y) ? TO(1) : TO(0); });
    });
  });
}

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

// exp(x) for float32 without a libm call, so that loops around it vectorize (glibc's vector
// exp is declared only under -ffast-math). x is clamped to [-87.3, 88.3] (the normal range;
// below it, and for NaN, the result is the smallest normals instead of 0: callers multiply
// by a factor that carries the NaN), k = round(x / ln 2), r = x - k ln 2 in two parts
// (|r| <= ln 2 / 2), exp(r) by its degree-6 Taylor polynomial (remainder < 1.3e-7 relative),
// times 2^k built in the exponent bits. A few ulp from std::exp ([activation] test of
// gelu_double_backward in float32 against float64).
inline float exp_approx(float x) {
  x = x > -87.3f ? (x < 88.3f ? x : 88.3f) : -87.3f;
  // round to nearest by adding and removing 1.5 * 2^23 (std::floor would block vectorization)
  const float k = (x * 1.44269504089f + 12582912.0f) - 12582912.0f;
  const float r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(k) + 127) << 23);
}

}  // namespace

// ---- arithmetic
Tensor add(const Tensor& a, const Tensor& b) {
  return record_op("add", binary_forward(a, b, "add", [](auto x, auto y) { return x + y; }), {a, b},
                   [](const BackwardContext& c) { return G{c.grad, c.grad}; }, SavedValues::none(), JvpRule([](const JvpContext& c) { return detail::sum_defined({c.tangents[0], c.tangents[1]}, c.output.shape()); }));
}

Tensor sub(const Tensor& a, const Tensor& b) {
  return record_op("sub", binary_forward(a, b, "sub", [](auto x, auto y) { return x - y; }), {a, b},
                   [](const BackwardContext& c) {
                     return G{c.grad, c.needs[1] ? neg(c.grad) : Tensor()};
                   },
                   SavedValues::none(), JvpRule([](const JvpContext& c) {
                     return detail::sum_defined({c.tangents[0], c.has(1) ? neg(c.tangents[1]) : Tensor()}, c.output.shape());
                   }));
}

Tensor mul(const Tensor& a, const Tensor& b) {
  return record_op("mul", binary_forward(a, b, "mul", [](auto x, auto y) { return x * y; }), {a, b},
                   [](const BackwardContext& c) {
                     return G{c.needs[0] ? c.grad * c.inputs[1] : Tensor(),
                              c.needs[1] ? c.grad * c.inputs[0] : Tensor()};
                   },
                   SavedValues::none().input_for(0, {1}).input_for(1, {0}), JvpRule([](const JvpContext& c) {  // t_a b + a t_b
                     return detail::sum_defined({c.has(0) ? c.tangents[0] * c.inputs[1] : Tensor(),
                                                 c.has(1) ? c.inputs[0] * c.tangents[1] : Tensor()},
                                                c.output.shape());
                   }));
}

Tensor div(const Tensor& a, const Tensor& b) {
  return record_op("div", binary_forward(a, b, "div", [](auto x, auto y) { return x / y; }), {a, b},
                   [](const BackwardContext& c) {
                     const Tensor& b = c.inputs[1];
                     return G{c.needs[0] ? c.grad / b : Tensor(),
                              c.needs[1] ? neg(c.grad * c.inputs[0] / (b * b)) : Tensor()};
                   },
                   SavedValues::none().input_for(0, {1}).input(1), JvpRule([](const JvpContext& c) {  // t_a / b - (a / b) t_b / b
                     const Tensor& b = c.inputs[1];
                     return detail::sum_defined({c.has(0) ? c.tangents[0] / b : Tensor(),
                                                 c.has(1) ? neg(c.output * c.tangents[1] / b) : Tensor()},
                                                c.output.shape());
                   }));
}

Tensor neg(const Tensor& x) {
  return record_op("neg", unary_forward(x, "neg", [](auto v) { return -v; }), {x},
                   [](const BackwardContext& c) { return G{neg(c.grad)}; }, SavedValues::none(), JvpRule::self_adjoint());
}

Tensor pow(const Tensor& x, double p) {
  Tensor out = unary_forward(x, "pow", [p](auto v) {
    using T = decltype(v);
    return p == 2.0 ? v * v : static_cast<T>(std::pow(v, static_cast<T>(p)));
  });
  return record_op("pow", out, {x}, [p](const BackwardContext& c) {
    if (p == 0.0) return G{zeros_like(c.inputs[0])};
    if (p == 1.0) return G{c.grad};
    if (p == 2.0) return G{c.grad * c.inputs[0] * 2.0};
    return G{c.grad * pow(c.inputs[0], p - 1.0) * p};
  }, SavedValues::none().input(0), JvpRule::self_adjoint());
}

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "pow", [](auto x, auto y) { return std::pow(x, y); });
  return record_op("pow", out, {a, b}, [](const BackwardContext& c) {
    const Tensor &a = c.inputs[0], &b = c.inputs[1];
    return G{c.needs[0] ? c.grad * b * pow(a, b - 1.0) : Tensor(),
             c.needs[1] ? c.grad * c.output * log(a) : Tensor()};
  }, SavedValues::none().input(0).input_for(1, {0}).output(), JvpRule([](const JvpContext& c) {  // t_a b a^(b-1) + t_b a^b log(a)
    const Tensor &a = c.inputs[0], &b = c.inputs[1];
    return detail::sum_defined({c.has(0) ? c.tangents[0] * b * pow(a, b - 1.0) : Tensor(),
                                c.has(1) ? c.tangents[1] * c.output * log(a) : Tensor()},
                               c.output.shape());
  }));
}

Tensor square(const Tensor& x) { return pow(x, 2.0); }

Tensor reciprocal(const Tensor& x) { return 1.0 / x; }

// ---- transcendental
Tensor exp(const Tensor& x) {
  return record_op("exp", unary_forward(x, "exp", backend::Eltwise::Exp, [](auto v) { return std::exp(v); }), {x},
                   [](const BackwardContext& c) { return G{c.grad * c.output}; }, SavedValues::none().output(), JvpRule::self_adjoint());
}

Tensor log(const Tensor& x) {
  return record_op("log", unary_forward(x, "log", backend::Eltwise::Log, [](auto v) { return std::log(v); }), {x},
                   [](const BackwardContext& c) { return G{c.grad / c.inputs[0]}; }, SavedValues::none().input(0), JvpRule::self_adjoint());
}

Tensor log1p(const Tensor& x) {
  return record_op("log1p", unary_forward(x, "log1p", [](auto v) { return std::log1p(v); }), {x},
                   [](const BackwardContext& c) { return G{c.grad / (c.inputs[0] + 1.0)}; }, SavedValues::none().input(0), JvpRule::self_adjoint());
}

Tensor sqrt(const Tensor& x) {
  return record_op("sqrt", unary_forward(x, "sqrt", backend::Eltwise::Sqrt, [](auto v) { return std::sqrt(v); }), {x},
                   [](const BackwardContext& c) { return G{c.grad / (c.output * 2.0)}; }, SavedValues::none().output(), JvpRule::self_adjoint());
}

Tensor rsqrt(const Tensor& x) {
  return record_op("rsqrt", unary_forward(x, "rsqrt", [](auto v) { return 1 / std::sqrt(v); }), {x},
                   [](const BackwardContext& c) {
                     return G{c.grad * c.output * c.output * c.output * -0.5};
                   },
                   SavedValues::none().output(), JvpRule::self_adjoint());
}

Tensor sign(const Tensor& x) {
  return unary_forward(x, "sign", [](auto v) { return decltype(v)((v > 0) - (v < 0)); });
}

Tensor abs(const Tensor& x) {
  return record_op("abs", unary_forward(x, "abs", backend::Eltwise::Abs, [](auto v) { return std::abs(v); }), {x},
                   [](const BackwardContext& c) { return G{c.grad * sign(c.inputs[0])}; }, SavedValues::none().input(0), JvpRule::self_adjoint());
}

Tensor sin(const Tensor& x) {
  return record_op("sin", unary_forward(x, "sin", [](auto v) { return std::sin(v); }), {x},
                   [](const BackwardContext& c) { return G{c.grad * cos(c.inputs[0])}; }, SavedValues::none().input(0), JvpRule::self_adjoint());
}

Tensor cos(const Tensor& x) {
  return record_op("cos", unary_forward(x, "cos", [](auto v) { return std::cos(v); }), {x},
                   [](const BackwardContext& c) { return G{neg(c.grad * sin(c.inputs[0]))}; }, SavedValues::none().input(0), JvpRule::self_adjoint());
}

Tensor erf(const Tensor& x) {
  return record_op("erf", unary_forward(x, "erf", [](auto v) { return std::erf(v); }), {x},
                   [](const BackwardContext& c) {
                     // d erf / dx = 2/sqrt(pi) exp(-x^2)
                     return G{c.grad * exp(neg(square(c.inputs[0]))) * (2.0 * kInvSqrt2Pi * M_SQRT2)};
                   },
                   SavedValues::none().input(0), JvpRule::self_adjoint());
}

Tensor tanh(const Tensor& x) {
  return record_op("tanh", unary_forward(x, "tanh", backend::Eltwise::Tanh, [](auto v) { return std::tanh(v); }), {x},
                   [](const BackwardContext& c) {
                     return G{c.grad * (1.0 - c.output * c.output)};
                   },
                   SavedValues::none().output(), JvpRule::self_adjoint());
}

Tensor sigmoid(const Tensor& x) {
  Tensor out = unary_forward(x, "sigmoid", backend::Eltwise::Logistic, [](auto v) {
    using T = decltype(v);
    return v >= 0 ? T(1) / (T(1) + std::exp(-v)) : std::exp(v) / (T(1) + std::exp(v));
  });
  return record_op("sigmoid", out, {x}, [](const BackwardContext& c) {
    return G{c.grad * c.output * (1.0 - c.output)};
  }, SavedValues::none().output(), JvpRule::self_adjoint());
}

// ---- activations
Tensor relu(const Tensor& x) {
  return record_op("relu", unary_forward(x, "relu", backend::Eltwise::Relu, [](auto v) { return v > 0 ? v : decltype(v)(0); }),
                   {x}, [](const BackwardContext& c) { return G{relu_backward(c.grad, c.inputs[0])}; }, SavedValues::none().input(0), JvpRule::self_adjoint());
}

// g where x > 0, else 0: ReLU's backward in one pass (no mask tensor, no second multiply).
// Linear in g, so its own backward is relu_backward again; its derivative in x is zero
// almost everywhere and is returned as "no gradient".
Tensor relu_backward(const Tensor& g, const Tensor& x) {
  detail::check_same_dtype(g, x, "relu_backward");
  KERN_CHECK(g.shape() == x.shape(), "relu_backward: grad ", g.shape(), " and input ", x.shape(), " differ");
  Tensor out = binary_forward(g, x, "relu_backward", [](auto gv, auto v) { return v > 0 ? gv : decltype(gv)(0); });
  return record_op("relu_backward", out, {g, x}, [](const BackwardContext& c) {
    return G{c.needs[0] ? relu_backward(c.grad, c.inputs[1]) : Tensor(), Tensor()};
  }, SavedValues::none().input_for(1, {0}), JvpRule([](const JvpContext& c) {  // linear in g; zero in x almost everywhere
    return c.has(0) ? relu_backward(c.tangents[0], c.inputs[1]) : Tensor();
  }));
}

Tensor gelu(const Tensor& x, std::string_view approximate) {
  if (approximate == "tanh") {
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    const double k = std::sqrt(2.0 / M_PI);
    return x * 0.5 * (1.0 + tanh((x + pow(x, 3.0) * 0.044715) * k));
  }
  KERN_CHECK(approximate == "none", "gelu: approximate must be \"none\" or \"tanh\", got \"",
             approximate, "\"");
  // Fused forward x * Phi(x); backward Phi(x) + x phi(x), written in differentiable ops.
  Tensor out = unary_forward(x, "gelu", backend::Eltwise::GeluErf, [](auto v) {
    using T = decltype(v);
    return static_cast<T>(0.5) * v * (T(1) + std::erf(v * static_cast<T>(kInvSqrt2)));
  });
  return record_op("gelu", out, {x}, [](const BackwardContext& c) { return G{gelu_backward(c.grad, c.inputs[0])}; }, SavedValues::none().input(0), JvpRule::self_adjoint());
}

// g * gelu'(x) with gelu'(x) = Phi(x) + x phi(x): one fused pass (oneDNN's GELU backward on
// the fast path), differentiable through the composite formulas below.
Tensor gelu_backward(const Tensor& g, const Tensor& x) {
  detail::check_same_dtype(g, x, "gelu_backward");
  KERN_CHECK(g.shape() == x.shape(), "gelu_backward: grad ", g.shape(), " and input ", x.shape(), " differ");
  Tensor out;
  if (backend::use_fast(x.dtype()) && x.numel() >= kFastMin && x.is_contiguous() && g.is_contiguous()) {
    out = empty(x.shape(), x.dtype());
    backend::eltwise_backward_fast(backend::Eltwise::GeluErf, x.data_ptr<float>(), g.data_ptr<float>(),
                                   out.data_ptr<float>(), x.numel());
  } else {
    backend::count_path(backend::Primitive::Eltwise, backend::Path::Reference);
    out = binary_forward(g, x, "gelu_backward", [](auto gv, auto v) {
      using T = decltype(v);
      const T cdf = T(0.5) * (T(1) + std::erf(v * static_cast<T>(kInvSqrt2)));
      const T pdf = std::exp(T(-0.5) * v * v) * static_cast<T>(kInvSqrt2Pi);
      return gv * (cdf + v * pdf);
    });
  }
  return record_op("gelu_backward", out, {g, x}, [](const BackwardContext& c) {
    // d/dg = gelu'(x) u (this op again);  d/dx = g u gelu''(x), gelu''(x) = phi(x) (2 - x^2)
    const Tensor& x = c.inputs[1];
    return G{c.needs[0] ? gelu_backward(c.grad, x) : Tensor(),
             c.needs[1] ? gelu_double_backward(c.grad, c.inputs[0], x) : Tensor()};
  }, SavedValues::none().input_for(0, {1}).input(1), JvpRule([](const JvpContext& c) {  // t_g gelu'(x) + g t_x gelu''(x)
    const Tensor &g = c.inputs[0], &x = c.inputs[1];
    return detail::sum_defined({c.has(0) ? gelu_backward(c.tangents[0], x) : Tensor(),
                                c.has(1) ? gelu_double_backward(c.tangents[1], g, x) : Tensor()},
                               c.output.shape());
  }));
}

namespace {
// o = u g phi(x) (2 - x^2). float: exp_approx, so the loop vectorizes; double keeps libm's exp
// (the float64 checks are 1e-12).
void gelu_double_backward_loop(const float* __restrict u, const float* __restrict g, const float* __restrict x,
                               float* __restrict o, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const float v2 = x[i] * x[i];
    o[i] = u[i] * g[i] * exp_approx(-0.5f * v2) * static_cast<float>(kInvSqrt2Pi) * (2.0f - v2);
  }
}
void gelu_double_backward_loop(const double* u, const double* g, const double* x, double* o, int64_t n) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const double v2 = x[i] * x[i];
    o[i] = u[i] * g[i] * std::exp(-0.5 * v2) * kInvSqrt2Pi * (2.0 - v2);
  }
}
}  // namespace

// u g gelu''(x) = u g phi(x) (2 - x^2) in one pass. Symmetric in u and g, so its derivatives in
// them are this op again; d/dx = z u g gelu'''(x) with gelu'''(x) = phi(x) (x^3 - 4 x), composite.
Tensor gelu_double_backward(const Tensor& u, const Tensor& g, const Tensor& x) {
  detail::check_floating(x, "gelu_double_backward");
  for (const Tensor* t : {&u, &g}) {
    detail::check_same_dtype(*t, x, "gelu_double_backward");
    KERN_CHECK(t->shape() == x.shape(), "gelu_double_backward: grads ", u.shape(), ", ", g.shape(), " and input ",
               x.shape(), " differ");
  }
  Tensor uc = contiguous(u.detach()), gc = contiguous(g.detach()), xc = contiguous(x.detach());
  Tensor out = empty(x.shape(), x.dtype());
  const int64_t n = x.numel();
  dispatch_float(x.dtype(), "gelu_double_backward", [&]<typename T>() {
    gelu_double_backward_loop(uc.data_ptr<T>(), gc.data_ptr<T>(), xc.data_ptr<T>(), out.data_ptr<T>(), n);
  });
  return record_op("gelu_double_backward", out, {u, g, x}, [](const BackwardContext& c) {
    const Tensor &u = c.inputs[0], &g = c.inputs[1], &x = c.inputs[2];
    Tensor d3;
    if (c.needs[2]) d3 = c.grad * u * g * exp(square(x) * -0.5) * kInvSqrt2Pi * (pow(x, 3.0) - x * 4.0);
    return G{c.needs[0] ? gelu_double_backward(c.grad, g, x) : Tensor(),
             c.needs[1] ? gelu_double_backward(c.grad, u, x) : Tensor(), d3};
  }, SavedValues::none().input_for(0, {1, 2}).input_for(1, {0, 2}).input(2), JvpRule([](const JvpContext& c) {
    // u g gelu''(x): product rule, gelu'''(x) = phi(x) (x^3 - 4 x)
    const Tensor &u = c.inputs[0], &g = c.inputs[1], &x = c.inputs[2];
    Tensor d3;
    if (c.has(2)) d3 = c.tangents[2] * u * g * exp(square(x) * -0.5) * kInvSqrt2Pi * (pow(x, 3.0) - x * 4.0);
    return detail::sum_defined({c.has(0) ? gelu_double_backward(c.tangents[0], g, x) : Tensor(),
                                c.has(1) ? gelu_double_backward(u, c.tangents[1], x) : Tensor(), d3},
                               c.output.shape());
  }));
}

Tensor silu(const Tensor& x) { return x * sigmoid(x); }

Tensor softplus(const Tensor& x, double beta, double threshold) {
  KERN_CHECK(beta > 0, "softplus: beta must be positive, got ", beta);
  Tensor out = unary_forward(x, "softplus", [beta, threshold](auto v) {
    using T = decltype(v);
    const T bx = static_cast<T>(beta) * v;
    if (bx > static_cast<T>(threshold)) return v;
    // log1p(exp(bx)) computed stably for large negative and positive bx.
    return (std::max(bx, T(0)) + std::log1p(std::exp(-std::abs(bx)))) / static_cast<T>(beta);
  });
  return record_op("softplus", out, {x}, [beta, threshold](const BackwardContext& c) {
    const Tensor& x = c.inputs[0];
    Tensor linear = (x * beta) > threshold;
    return G{c.grad * (linear + (1.0 - linear) * sigmoid(x * beta))};
  }, SavedValues::none().input(0), JvpRule::self_adjoint());
}

Tensor clamp(const Tensor& x, std::optional<double> lo, std::optional<double> hi) {
  KERN_CHECK(!lo || !hi || *lo <= *hi, "clamp: min ", *lo, " is greater than max ", *hi);
  const double l = lo.value_or(-INFINITY), h = hi.value_or(INFINITY);
  Tensor out = unary_forward(x, "clamp", [l, h](auto v) {
    using T = decltype(v);
    return std::min(std::max(v, static_cast<T>(l)), static_cast<T>(h));
  });
  return record_op("clamp", out, {x}, [l, h](const BackwardContext& c) {
    const Tensor& x = c.inputs[0];
    return G{c.grad * ((x >= l) * (x <= h))};
  }, SavedValues::none().input(0), JvpRule::self_adjoint());
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  detail::check_same_dtype(a, b, "where");
  detail::check_floating(a, "where");
  const Shape shape =
      broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  // The condition as a 1/0 mask in a's dtype (nonzero = true); it carries no gradient.
  Tensor m = detail::dispatch_storage(cond.dtype(), [&]<typename C>() {  // bool masks too
    return dispatch_float(a.dtype(), "where", [&]<typename T>() {
      return detail::map_unary<T, C>(cond, a.dtype(), [](C v) { return v != C(0) ? T(1) : T(0); });
    });
  });
  Tensor out = empty(shape, a.dtype());
  dispatch_float(a.dtype(), "where", [&]<typename T>() {
    T* o = static_cast<T*>(out.raw_data());
    const T* pm = static_cast<const T*>(m.raw_data());
    const T* pa = static_cast<const T*>(a.raw_data());
    const T* pb = static_cast<const T*>(b.raw_data());
    detail::StridedLoop<4> loop(shape, {contiguous_strides(shape), detail::broadcast_strides(m, shape),
                                        detail::broadcast_strides(a, shape),
                                        detail::broadcast_strides(b, shape)});
    loop.run([&](const std::array<int64_t, 4>& off, int64_t n, const std::array<int64_t, 4>& st) {
      for (int64_t i = 0; i < n; ++i)
        o[off[0] + i * st[0]] = pm[off[1] + i * st[1]] != T(0) ? pa[off[2] + i * st[2]] : pb[off[3] + i * st[3]];
    });
  });
  return record_op("where", out, {a, b, m}, [](const BackwardContext& c) {
    const Tensor& mask = c.inputs[2];
    return G{c.needs[0] ? c.grad * mask : Tensor(), c.needs[1] ? c.grad * (1.0 - mask) : Tensor(),
             Tensor()};
  }, SavedValues::none().input(2), JvpRule([](const JvpContext& c) {
    const Tensor& mask = c.inputs[2];
    return detail::sum_defined({c.has(0) ? c.tangents[0] * mask : Tensor(),
                                c.has(1) ? c.tangents[1] * (1.0 - mask) : Tensor()},
                               c.output.shape());
  }));  // the mask only
}

Tensor where(const Tensor& cond, const Tensor& a, double b) { return where(cond, a, detail::scalar_like(b, a)); }

Tensor maximum(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "maximum", [](auto x, auto y) { return x >= y ? x : y; });
  return record_op("maximum", out, {a, b}, [](const BackwardContext& c) {
    Tensor m = c.inputs[0] >= c.inputs[1];
    return G{c.needs[0] ? c.grad * m : Tensor(), c.needs[1] ? c.grad * (1.0 - m) : Tensor()};
  }, SavedValues::none().input(0).input(1), JvpRule([](const JvpContext& c) {
    Tensor m = c.inputs[0] >= c.inputs[1];
    return detail::sum_defined({c.has(0) ? c.tangents[0] * m : Tensor(), c.has(1) ? c.tangents[1] * (1.0 - m) : Tensor()},
                               c.output.shape());
  }));
}

Tensor minimum(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(a, b, "minimum", [](auto x, auto y) { return x <= y ? x : y; });
  return record_op("minimum", out, {a, b}, [](const BackwardContext& c) {
    Tensor m = c.inputs[0] <= c.inputs[1];
    return G{c.needs[0] ? c.grad * m : Tensor(), c.needs[1] ? c.grad * (1.0 - m) : Tensor()};
  }, SavedValues::none().input(0).input(1), JvpRule([](const JvpContext& c) {
    Tensor m = c.inputs[0] <= c.inputs[1];
    return detail::sum_defined({c.has(0) ? c.tangents[0] * m : Tensor(), c.has(1) ? c.tangents[1] * (1.0 - m) : Tensor()},
                               c.output.shape());
  }));
}

Tensor isfinite(const Tensor& x) {
  detail::check_floating(x, "isfinite");
  return unary_forward(x, "isfinite", [](auto v) { return decltype(v)(std::isfinite(v) ? 1 : 0); });
}

// ---- comparisons (masks, no gradient)
Tensor operator>(const Tensor& a, const Tensor& b) { return compare(a, b, "gt", [](auto x, auto y) { return x > y; }); }
Tensor operator<(const Tensor& a, const Tensor& b) { return compare(a, b, "lt", [](auto x, auto y) { return x < y; }); }
Tensor operator>=(const Tensor& a, const Tensor& b) { return compare(a, b, "ge", [](auto x, auto y) { return x >= y; }); }
Tensor operator<=(const Tensor& a, const Tensor& b) { return compare(a, b, "le", [](auto x, auto y) { return x <= y; }); }
Tensor eq(const Tensor& a, const Tensor& b) { return compare(a, b, "eq", [](auto x, auto y) { return x == y; }); }
Tensor operator>(const Tensor& a, double b) { return a > detail::scalar_like(b, a); }
Tensor operator<(const Tensor& a, double b) { return a < detail::scalar_like(b, a); }
Tensor operator>=(const Tensor& a, double b) { return a >= detail::scalar_like(b, a); }
Tensor operator<=(const Tensor& a, double b) { return a <= detail::scalar_like(b, a); }

}  // namespace kern
