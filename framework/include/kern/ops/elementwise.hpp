#pragma once
// Elementwise ops. Binary ops broadcast (NumPy rules) and require equal dtypes; a double
// operand takes the tensor's dtype. All are differentiable to any order.
// Legend: x, a, b: [*] any shape; results have the broadcast shape.
#include <kern/tensor.hpp>

namespace kern {

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& x);
/// a ** b elementwise (a > 0 where b's gradient is wanted).
Tensor pow(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& x, double exponent);
Tensor square(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor log1p(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);
/// -1, 0 or 1 (no gradient).
Tensor sign(const Tensor& x);
Tensor sin(const Tensor& x);
Tensor cos(const Tensor& x);
Tensor erf(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
/// g where x > 0, else 0: ReLU's backward as one fused, differentiable op.
Tensor relu_backward(const Tensor& grad, const Tensor& x);
/// GELU: x * Phi(x) ("none", exact erf form) or its tanh approximation ("tanh").
Tensor gelu(const Tensor& x, std::string_view approximate = "none");
/// g * d gelu(x) / dx (erf form): GELU's backward as one fused, differentiable op.
Tensor gelu_backward(const Tensor& grad, const Tensor& x);
/// u * g * d^2 gelu(x) / dx^2 (erf form): gelu_backward's x-derivative as one fused,
/// differentiable op (the Hessian-vector-product path). u, g, x: same shape.
Tensor gelu_double_backward(const Tensor& u, const Tensor& g, const Tensor& x);
Tensor silu(const Tensor& x);
/// log(1 + exp(beta x)) / beta, linear above `threshold` (torch.nn.functional.softplus).
Tensor softplus(const Tensor& x, double beta = 1.0, double threshold = 20.0);
/// Limits x to [min, max]; the gradient is zero outside.
Tensor clamp(const Tensor& x, std::optional<double> min, std::optional<double> max);
/// cond ? a : b, with cond a mask (nonzero = true) broadcast against a and b.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, double b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
/// Elementwise finiteness mask (no gradient).
Tensor isfinite(const Tensor& x);

}  // namespace kern
