// OpInfo entries for the core families: elementwise, reductions, movement, indexing, linalg.
// Samples cover broadcasting, non-contiguous (transposed) inputs and 0-dim scalars.
#include "op_table.hpp"

using namespace kern;
using namespace kern::testing;

namespace {

using Ins = std::vector<Tensor>;
const DType F64 = DType::Float64;

Tensor rn(Generator& g, Shape s) { return randn(s, F64, &g); }
// Values in [lo, hi): keeps log/sqrt/pow away from their singularities.
Tensor ru(Generator& g, Shape s, double lo, double hi) { return rand(s, F64, &g, lo, hi); }
// Values bounded away from 0 (for kinks: abs, relu, clamp, max ties).
Tensor away0(Generator& g, Shape s) {
  Tensor u = ru(g, s, 0.2, 1.5);
  Tensor sgn = sign(rn(g, s));
  return u * where(sgn, sgn, 1.0);
}
// A transposed (non-contiguous) [r, c] tensor.
Tensor rn_t(Generator& g, int64_t r, int64_t c) { return rn(g, {c, r}).t(); }

OpInfo unary(std::string name, std::function<Tensor(const Tensor&)> f,
             std::function<Tensor(Generator&)> make, std::function<void()> bad = {}, std::string msg = "") {
  return {name, [f](const Ins& x) { return f(x[0]); }, [make](Generator& g) { return Ins{make(g)}; }, true, false,
          bad, msg};
}

const Tensor kInt = zeros({3}, DType::Int64);

OpRegistrar elementwise({
    {"add broadcast", [](const Ins& x) { return x[0] + x[1]; },
     [](Generator& g) { return Ins{rn(g, {3, 1}), rn(g, {4})}; }, true, false,
     [] { add(zeros({3}), zeros({4})); }, "add: shapes [3] and [4]"},
    {"add scalar tensor", [](const Ins& x) { return x[0] + x[1]; },
     [](Generator& g) { return Ins{rn(g, {}), rn_t(g, 2, 3)}; }, true, false,
     [] { add(zeros({3}), zeros({3}, DType::Float64)); }, "dtype mismatch"},
    {"sub", [](const Ins& x) { return x[0] - x[1]; }, [](Generator& g) { return Ins{rn_t(g, 3, 2), rn(g, {2})}; },
     true, false, [] { sub(kInt, kInt); }, "sub"},
    {"mul", [](const Ins& x) { return x[0] * x[1]; }, [](Generator& g) { return Ins{rn(g, {2, 3}), rn_t(g, 2, 3)}; },
     true, false, [] { mul(zeros({2, 3}), zeros({3, 2})); }, "mul: shapes [2, 3] and [3, 2]"},
    {"div", [](const Ins& x) { return x[0] / x[1]; }, [](Generator& g) { return Ins{rn(g, {2, 3}), ru(g, {3}, 0.5, 2)}; },
     true, false, [] { div(zeros({2}), zeros({3})); }, "div"},
    {"pow tensor", [](const Ins& x) { return pow(x[0], x[1]); },
     [](Generator& g) { return Ins{ru(g, {2, 3}, 0.5, 2), rn(g, {2, 3})}; }, true, false,
     [] { pow(kInt, kInt); }, "pow"},
    unary("neg", [](const Tensor& x) { return neg(x); }, [](Generator& g) { return rn(g, {4}); },
          [] { neg(kInt); }, "neg: expected a floating-point tensor"),
    unary("pow 3", [](const Tensor& x) { return pow(x, 3.0); }, [](Generator& g) { return rn_t(g, 2, 3); }),
    unary("pow -1.5", [](const Tensor& x) { return pow(x, -1.5); }, [](Generator& g) { return ru(g, {5}, 0.5, 2); }),
    unary("exp scalar", [](const Tensor& x) { return exp(x); }, [](Generator& g) { return rn(g, {}); },
          [] { exp(kInt); }, "exp"),
    unary("log", [](const Tensor& x) { return log(x); }, [](Generator& g) { return ru(g, {2, 3}, 0.5, 3); }),
    unary("log1p", [](const Tensor& x) { return log1p(x); }, [](Generator& g) { return ru(g, {5}, 0, 2); }),
    unary("sqrt", [](const Tensor& x) { return sqrt(x); }, [](Generator& g) { return ru(g, {5}, 0.5, 3); }),
    unary("rsqrt", [](const Tensor& x) { return rsqrt(x); }, [](Generator& g) { return ru(g, {5}, 0.5, 3); }),
    unary("abs", [](const Tensor& x) { return abs(x); }, [](Generator& g) { return away0(g, {6}); }),
    unary("sin", [](const Tensor& x) { return sin(x); }, [](Generator& g) { return rn_t(g, 3, 2); }),
    unary("cos", [](const Tensor& x) { return cos(x); }, [](Generator& g) { return rn(g, {5}); }),
    unary("erf", [](const Tensor& x) { return erf(x); }, [](Generator& g) { return rn(g, {5}); }),
    unary("tanh", [](const Tensor& x) { return tanh(x); }, [](Generator& g) { return rn_t(g, 2, 3); }),
    unary("sigmoid", [](const Tensor& x) { return sigmoid(x); }, [](Generator& g) { return rn(g, {6}) * 3.0; }),
    unary("relu", [](const Tensor& x) { return relu(x); }, [](Generator& g) { return away0(g, {6}); }),
    {"relu_backward", [](const Ins& x) { return relu_backward(x[0], x[1]); },
     [](Generator& g) { return Ins{rn(g, {6}), away0(g, {6})}; }, true, false,
     [] { relu_backward(zeros({2}), zeros({3})); }, "relu_backward: grad [2] and input [3] differ"},
    unary("gelu erf", [](const Tensor& x) { return gelu(x); }, [](Generator& g) { return rn(g, {6}) * 2.0; },
          [] { gelu(zeros({2}), "fast"); }, "gelu: approximate"),
    {"gelu_backward", [](const Ins& x) { return gelu_backward(x[0], x[1]); },
     [](Generator& g) { return Ins{rn(g, {6}), rn(g, {6}) * 2.0}; }},
    {"gelu_double_backward", [](const Ins& x) { return gelu_double_backward(x[0], x[1], x[2]); },
     [](Generator& g) { return Ins{rn(g, {6}), rn(g, {6}), rn(g, {6}) * 2.0}; }, true, false,
     [] { gelu_double_backward(zeros({2}), zeros({3}), zeros({2})); }, "gelu_double_backward: grads [2], [3]"},
    unary("gelu tanh", [](const Tensor& x) { return gelu(x, "tanh"); }, [](Generator& g) { return rn(g, {6}) * 2.0; }),
    unary("silu", [](const Tensor& x) { return silu(x); }, [](Generator& g) { return rn(g, {6}); }),
    unary("softplus", [](const Tensor& x) { return softplus(x, 2.0, 5.0); },
          [](Generator& g) { return away0(g, {8}) * 2.0; }, [] { softplus(zeros({2}), -1.0); }, "softplus"),
    unary("clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.7); },
          [](Generator& g) { return tensor({-1.0, -0.3, 0.1, 0.5, 1.2}, F64) + rn(g, {5}) * 0.05; },
          [] { clamp(zeros({2}), 1.0, 0.0); }, "clamp: min"),
    {"where", [](const Ins& x) { return where(x[0] > 0.0, x[1], x[2]); },
     [](Generator& g) { return Ins{rn(g, {3, 1}), rn(g, {3, 4}), rn(g, {4})}; }, true, false,
     [] { where(zeros({2}), zeros({2}), zeros({2}, DType::Float64)); }, "where"},
    {"maximum", [](const Ins& x) { return maximum(x[0], x[1]); },
     [](Generator& g) { return Ins{rn(g, {4}), rn(g, {4}) + 0.05}; }},
    {"minimum", [](const Ins& x) { return minimum(x[0], x[1]); },
     [](Generator& g) { return Ins{rn(g, {2, 3}), rn(g, {3}) + 0.05}; }},
});

// float32 fast path (oneDNN eltwise) runs from 1024 elements: these samples are large enough.
OpInfo fast_unary(std::string name, std::function<Tensor(const Tensor&)> f, std::function<Tensor(Generator&)> make) {
  OpInfo op = unary(name + " [fast path]", f, make);
  op.fast_path = true;
  op.fast_kernels = {backend::Primitive::Eltwise};
  op.gradgrad = false;  // the small-sample entries above cover second order
  return op;
}

OpRegistrar elementwise_fast({
    fast_unary("exp", [](const Tensor& x) { return exp(x); }, [](Generator& g) { return rn(g, {32, 40}); }),
    fast_unary("log", [](const Tensor& x) { return log(x); }, [](Generator& g) { return ru(g, {32, 40}, 0.5, 3); }),
    fast_unary("sqrt", [](const Tensor& x) { return sqrt(x); }, [](Generator& g) { return ru(g, {32, 40}, 0.5, 3); }),
    fast_unary("abs", [](const Tensor& x) { return abs(x); }, [](Generator& g) { return away0(g, {32, 40}); }),
    fast_unary("tanh", [](const Tensor& x) { return tanh(x); }, [](Generator& g) { return rn(g, {32, 40}); }),
    fast_unary("sigmoid", [](const Tensor& x) { return sigmoid(x); }, [](Generator& g) { return rn(g, {32, 40}); }),
    fast_unary("relu", [](const Tensor& x) { return relu(x); }, [](Generator& g) { return away0(g, {32, 40}); }),
    fast_unary("gelu", [](const Tensor& x) { return gelu(x); }, [](Generator& g) { return rn(g, {32, 40}); }),
    {"gelu_backward [fast path]", [](const Ins& x) { return gelu_backward(x[0], x[1]); },
     [](Generator& g) { return Ins{rn(g, {32, 40}), rn(g, {32, 40}) * 2.0}; }, false, true,
     [] { gelu_backward(zeros({2}), zeros({3})); }, "gelu_backward: grad [2] and input [3] differ",
     {backend::Primitive::Eltwise}},
});

OpRegistrar reductions({
    unary("sum all", [](const Tensor& x) { return sum(x); }, [](Generator& g) { return rn_t(g, 3, 4); },
          [] { sum(zeros({2, 3}), {2}); }, "sum: dim 2 out of range"),
    unary("sum dims keepdim", [](const Tensor& x) { return sum(x, {0, 2}, true); },
          [](Generator& g) { return rn(g, {2, 3, 4}); }),
    unary("mean dim", [](const Tensor& x) { return mean(x, {-1}); }, [](Generator& g) { return rn_t(g, 3, 4); }),
    unary("var unbiased", [](const Tensor& x) { return var(x, {1}); }, [](Generator& g) { return rn(g, {3, 5}); },
          [] { var(zeros({1}), {0}); }, "var"),
    unary("std biased keepdim", [](const Tensor& x) { return kern::std(x, {0}, 0, true); },
          [](Generator& g) { return rn(g, {4, 2}); }),
    unary("norm 2", [](const Tensor& x) { return norm(x, 2.0, {1}); }, [](Generator& g) { return rn(g, {3, 4}); }),
    unary("norm 3", [](const Tensor& x) { return norm(x, 3.0); }, [](Generator& g) { return away0(g, {5}); },
          [] { norm(zeros({2}), -1.0); }, "norm: p"),
    unary("logsumexp", [](const Tensor& x) { return logsumexp(x, {1}); }, [](Generator& g) { return rn(g, {3, 4}) * 3.0; }),
    unary("max all", [](const Tensor& x) { return max(x); }, [](Generator& g) { return rn(g, {2, 3}); },
          [] { max(zeros({0})); }, "max: reduction over an empty tensor"),
    unary("max dim", [](const Tensor& x) { return max(x, 1).values; }, [](Generator& g) { return rn_t(g, 3, 4); }),
    unary("min dim keepdim", [](const Tensor& x) { return min(x, 0, true).values; },
          [](Generator& g) { return rn(g, {3, 4}); }),
    {"dot", [](const Ins& x) { return dot(x[0], x[1]); }, [](Generator& g) { return Ins{rn(g, {5}), rn(g, {5})}; },
     true, false, [] { dot(zeros({2}), zeros({3})); }, "dot: shapes [2] and [3]"},
});

OpRegistrar movement({
    unary("reshape non-contiguous", [](const Tensor& x) { return x.reshape({-1}); },
          [](Generator& g) { return rn_t(g, 3, 4); }, [] { zeros({2, 3}).reshape({4}); }, "reshape: shape [4]"),
    unary("view", [](const Tensor& x) { return x.view({3, 2, 2}); }, [](Generator& g) { return rn(g, {3, 4}); },
          [] { zeros({3, 4}).t().view({12}); }, "view: shape [12] is incompatible"),
    unary("permute", [](const Tensor& x) { return x.permute({2, 0, 1}); },
          [](Generator& g) { return rn(g, {2, 3, 4}); }, [] { zeros({2, 3}).permute({0, 0}); }, "permute"),
    unary("transpose", [](const Tensor& x) { return x.transpose(0, 1); }, [](Generator& g) { return rn(g, {2, 3}); }),
    unary("narrow", [](const Tensor& x) { return x.narrow(1, 1, 2); }, [](Generator& g) { return rn(g, {3, 4}); },
          [] { zeros({3, 4}).narrow(1, 3, 2); }, "narrow: [3, 5) is out of range"),
    unary("select", [](const Tensor& x) { return x.select(0, -1); }, [](Generator& g) { return rn_t(g, 3, 4); },
          [] { zeros({3}).select(0, 3); }, "select: index 3"),
    unary("expand", [](const Tensor& x) { return x.expand({2, 3, 4}); }, [](Generator& g) { return rn(g, {3, 1}); },
          [] { zeros({3, 2}).expand({3, 4}); }, "expand"),
    unary("squeeze unsqueeze", [](const Tensor& x) { return x.unsqueeze(0).squeeze(2); },
          [](Generator& g) { return rn(g, {3, 1}); }),
    unary("flatten", [](const Tensor& x) { return x.flatten(1); }, [](Generator& g) { return rn(g, {2, 3, 2}); }),
    unary("contiguous", [](const Tensor& x) { return x.contiguous(); }, [](Generator& g) { return rn_t(g, 3, 4); }),
    {"cat", [](const Ins& x) { return cat({x[0], x[1]}, 1); },
     [](Generator& g) { return Ins{rn(g, {2, 3}), rn_t(g, 2, 2)}; }, true, false,
     [] { cat({zeros({2, 3}), zeros({3, 3})}, 1); }, "cat: tensor 1 has shape [3, 3]"},
    {"stack", [](const Ins& x) { return stack({x[0], x[1]}, 1); },
     [](Generator& g) { return Ins{rn(g, {2, 3}), rn(g, {2, 3})}; }, true, false,
     [] { stack({zeros({2}), zeros({3})}); }, "stack"},
    unary("split", [](const Tensor& x) { return split(x, 2, 0)[1] * 2.0 + split(x, 2, 0)[2].sum(); },
          [](Generator& g) { return rn(g, {5, 2}); }, [] { split(zeros({4}), 0); }, "split"),
    unary("chunk", [](const Tensor& x) { return chunk(x, 3, 1)[2]; }, [](Generator& g) { return rn(g, {2, 7}); }),
    unary("pad", [](const Tensor& x) { return pad(x, {1, 2, 0, 1}, 0.5); }, [](Generator& g) { return rn(g, {2, 3}); },
          [] { pad(zeros({2}), {1}); }, "pad"),
});

OpRegistrar indexing({
    unary("index_select", [](const Tensor& x) { return index_select(x, 1, from_vector<int64_t>({2, 0, 2}, {3})); },
          [](Generator& g) { return rn(g, {2, 3}); },
          [] { index_select(zeros({2, 3}), 1, from_vector<int64_t>({3}, {1})); }, "index_select: index 3"),
    unary("gather", [](const Tensor& x) { return gather(x, 1, from_vector<int64_t>({0, 2, 1, 1}, {2, 2})); },
          [](Generator& g) { return rn(g, {2, 3}); },
          [] { gather(zeros({2, 3}), 1, from_vector<int64_t>({0, 5}, {2, 1})); }, "gather: index 5"),
    {"scatter_add", [](const Ins& x) { return scatter_add(x[0], 1, from_vector<int64_t>({0, 0, 2, 1}, {2, 2}), x[1]); },
     [](Generator& g) { return Ins{rn(g, {2, 3}), rn(g, {2, 2})}; }, true, false,
     [] { scatter_add(zeros({2, 3}), 1, zeros({2, 2}), zeros({2, 2})); }, "scatter_add: index must be int64"},
    {"index_add", [](const Ins& x) { return index_add(x[0], 0, from_vector<int64_t>({1, 1, 0}, {3}), x[1]); },
     [](Generator& g) { return Ins{rn(g, {2, 2}), rn(g, {3, 2})}; }, true, false,
     [] { index_add(zeros({2, 2}), 0, from_vector<int64_t>({0}, {1}), zeros({2, 2})); }, "index_add"},
});

// float32 products run oneDNN's sgemm on the fast backend, Eigen on the reference one.
OpInfo gemm_entry(OpInfo o) {
  o.fast_kernels = {backend::Primitive::Gemm};
  return o;
}

OpRegistrar linalg({
    gemm_entry({"mm", [](const Ins& x) { return mm(x[0], x[1]); }, [](Generator& g) { return Ins{rn(g, {3, 4}), rn_t(g, 4, 2)}; },
     true, true, [] { mm(zeros({2, 3}), zeros({2, 3})); }, "mm: shapes [2, 3] and [2, 3] cannot be multiplied"}),
    gemm_entry({"matmul batched broadcast", [](const Ins& x) { return matmul(x[0], x[1]); },
     [](Generator& g) { return Ins{rn(g, {2, 1, 3, 4}), rn(g, {3, 4, 2})}; }, true, true,
     [] { matmul(zeros({2, 3, 4}), zeros({2, 3, 4})); }, "cannot be multiplied"}),
    gemm_entry({"matmul vector", [](const Ins& x) { return matmul(x[0], x[1]); },
     [](Generator& g) { return Ins{rn(g, {4}), rn(g, {2, 4, 3})}; }, true, true}),
    gemm_entry({"bmm transposed", [](const Ins& x) { return bmm(x[0], x[1].transpose(1, 2)); },
     [](Generator& g) { return Ins{rn(g, {2, 3, 4}), rn(g, {2, 5, 4})}; }, true, true,
     [] { bmm(zeros({2, 3, 4}), zeros({3, 4, 5})); }, "bmm"}),
    gemm_entry({"linear", [](const Ins& x) { return linear(x[0], x[1], x[2]); },
     [](Generator& g) { return Ins{rn(g, {2, 3, 4}), rn(g, {5, 4}), rn(g, {5})}; }, true, true,
     [] { linear(zeros({2, 3}), zeros({4, 5})); }, "linear: input [2, 3] does not match weight [4, 5]"}),
    {"outer", [](const Ins& x) { return outer(x[0], x[1]); }, [](Generator& g) { return Ins{rn(g, {3}), rn(g, {2})}; }},
});

}  // namespace

namespace {
// [M, 1] and [1, K] operands whose size-1 dims carry arbitrary strides (from views).
OpRegistrar linalg_degenerate({
    gemm_entry({"mm with size-1 dims of odd strides", [](const Ins& x) { return mm(x[0].narrow(1, 1, 1), x[1].narrow(0, 2, 1)); },
          [](Generator& g) { return Ins{rn(g, {4, 3}).t(), rn(g, {3, 5})}; }, true, true}),
});
}  // namespace
