// Matrix products: mm and bmm are the primitives (GEMM on the fast or reference path);
// matmul, linear and outer are composites.
//
// bf16 (autocast, kern/autocast.hpp): mm, bmm and linear also take two bf16 operands and
// return float32 (oneDNN's bf16 matmul, float32 accumulation). Their backward converts the
// float32 gradient to the operands' dtype, so the backward GEMMs run in bf16 too, and returns
// gradients in the operands' dtype; for float32/float64 those conversions are no-ops. Under
// autocast, float32 operands are converted (recorded) and the op reruns on bf16.
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include "../backend/backend.hpp"
#include "autocast_internal.hpp"
#include "kernel_utils.hpp"
#include "jvp_util.hpp"

namespace kern {

using G = std::vector<Tensor>;

namespace {

// A 2-D operand as a MatRef in a BLAS layout: one unit stride and a leading dimension at least
// the other extent (strides of size-1 dims are normalized first); other layouts are copied.
template <typename T>
backend::MatRef<T> as_mat(const Tensor& m, Tensor& keep) {
  keep = m;
  backend::MatRef<T> r{static_cast<const T*>(m.raw_data()), m.size(0), m.size(1), m.stride(0), m.stride(1)};
  if (r.cols == 1) r.col_stride = 1;
  if (r.rows == 1) r.row_stride = r.col_stride == 1 ? std::max<int64_t>(1, r.cols) : 1;
  const bool row_major = r.col_stride == 1 && r.row_stride >= std::max<int64_t>(1, r.cols);
  const bool col_major = r.row_stride == 1 && r.col_stride >= std::max<int64_t>(1, r.rows);
  if (!row_major && !col_major) {
    keep = m.detach().clone().detach();  // fresh contiguous copy
    r = {static_cast<const T*>(keep.raw_data()), keep.size(0), keep.size(1), std::max<int64_t>(1, keep.size(1)), 1};
  }
  return r;
}

// out[M, N] (contiguous, offset into a batch) = a @ b + beta * out; bf16 operands write a
// float32 out.
void gemm_into(const Tensor& a, const Tensor& b, Tensor& out, int64_t out_offset_elems, double beta = 0.0) {
  if (a.dtype() == DType::BFloat16) {
    float* c = static_cast<float*>(out.raw_data()) + out_offset_elems;
    const int64_t m = a.size(0), n = b.size(1);
    if (m == 0 || n == 0) return;
    if (a.size(1) == 0) {
      if (beta == 0.0) std::fill_n(c, m * n, 0.0f);
      return;
    }
    Tensor ka, kb;
    backend::gemm_bf16(as_mat<bf16>(a, ka), as_mat<bf16>(b, kb), c, n, static_cast<float>(beta));
    return;
  }
  detail::dispatch_float(a.dtype(), "mm", [&]<typename T>() {
    T* c = static_cast<T*>(out.raw_data()) + out_offset_elems;
    const int64_t m = a.size(0), n = b.size(1);
    if (m == 0 || n == 0) return;
    if (a.size(1) == 0) {
      if (beta == 0.0) std::fill_n(c, m * n, T(0));
      return;
    }
    Tensor ka, kb;
    auto A = as_mat<T>(a, ka);
    auto B = as_mat<T>(b, kb);
    if constexpr (std::is_same_v<T, float>) {
      if (backend::use_fast(DType::Float32)) {
        backend::gemm_fast(A, B, c, n, static_cast<float>(beta));
        return;
      }
    }
    backend::gemm_reference<T>(A, B, c, n, static_cast<T>(beta));
  });
}

// The dtype of a product of two `operand`-dtype tensors: bf16 products accumulate and
// return float32.
DType product_dtype(DType operand) { return operand == DType::BFloat16 ? DType::Float32 : operand; }

// The products compute in float32 and float64, and in bf16 (float32 result) for autocast.
void check_operand(const Tensor& t, const char* op) {
  if (t.dtype() != DType::BFloat16) detail::check_floating(t, op);
}

}  // namespace

static Tensor linear_autocast(const Tensor& x, const Tensor& weight, const Tensor& bias);

Tensor mm(const Tensor& a, const Tensor& b) {
  KERN_CHECK(a.dim() == 2 && b.dim() == 2, "mm: expected 2-D operands, got ", a.shape(), " and ", b.shape());
  KERN_CHECK(a.size(1) == b.size(0), "mm: shapes ", a.shape(), " and ", b.shape(), " cannot be multiplied");
  check_operand(a, "mm");
  detail::check_same_dtype(a, b, "mm");
  if (detail::autocast_applies(a, b)) return mm(detail::autocast_cast(a), detail::autocast_cast(b));
  Tensor out = empty({a.size(0), b.size(1)}, product_dtype(a.dtype()));
  gemm_into(a, b, out, 0);
  return record_op("mm", out, {a, b}, [](const BackwardContext& c) {
    const Tensor& a = c.inputs[0];
    const Tensor& b = c.inputs[1];
    const Tensor g = c.grad.to(a.dtype());  // bf16 operands: the backward GEMMs run in bf16
    return G{c.needs[0] ? mm(g, b.t()).to(a.dtype()) : Tensor(),
             c.needs[1] ? mm(a.t(), g).to(b.dtype()) : Tensor()};
  }, SavedValues::none().input_for(0, {1}).input_for(1, {0}), JvpRule([](const JvpContext& c) {  // t_a b + a t_b
    return detail::sum_defined({c.has(0) ? mm(c.tangents[0], c.inputs[1]) : Tensor(),
                                c.has(1) ? mm(c.inputs[0], c.tangents[1]) : Tensor()},
                               c.output.shape());
  }));
}

Tensor bmm(const Tensor& a, const Tensor& b) {
  KERN_CHECK(a.dim() == 3 && b.dim() == 3, "bmm: expected 3-D operands, got ", a.shape(), " and ", b.shape());
  KERN_CHECK(a.size(0) == b.size(0) && a.size(2) == b.size(1), "bmm: shapes ", a.shape(), " and ", b.shape(),
             " cannot be multiplied");
  check_operand(a, "bmm");
  detail::check_same_dtype(a, b, "bmm");
  if (detail::autocast_applies(a, b)) return bmm(detail::autocast_cast(a), detail::autocast_cast(b));
  const int64_t B = a.size(0), M = a.size(1), N = b.size(2);
  Tensor out = empty({B, M, N}, product_dtype(a.dtype()));
  {
    NoGradGuard ng;
    for (int64_t i = 0; i < B; ++i) gemm_into(select(a, 0, i), select(b, 0, i), out, i * M * N);
  }
  return record_op("bmm", out, {a, b}, [](const BackwardContext& c) {
    const Tensor& a = c.inputs[0];
    const Tensor& b = c.inputs[1];
    const Tensor g = c.grad.to(a.dtype());
    return G{c.needs[0] ? bmm(g, transpose(b, 1, 2)).to(a.dtype()) : Tensor(),
             c.needs[1] ? bmm(transpose(a, 1, 2), g).to(b.dtype()) : Tensor()};
  }, SavedValues::none().input_for(0, {1}).input_for(1, {0}), JvpRule([](const JvpContext& c) {
    return detail::sum_defined({c.has(0) ? bmm(c.tangents[0], c.inputs[1]) : Tensor(),
                                c.has(1) ? bmm(c.inputs[0], c.tangents[1]) : Tensor()},
                               c.output.shape());
  }));
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_operand(a, "matmul");
  check_operand(b, "matmul");
  KERN_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: operands must be at least 1-D, got ", a.shape(), " and ",
             b.shape());
  if (a.dim() == 1 && b.dim() == 1) {
    KERN_CHECK(a.size(0) == b.size(0), "matmul: shapes ", a.shape(), " and ", b.shape(), " cannot be multiplied");
    return dot(a, b);
  }
  if (a.dim() == 1) return squeeze(matmul(unsqueeze(a, 0), b), -2);
  if (b.dim() == 1) return squeeze(matmul(a, unsqueeze(b, 1)), -1);
  if (a.dim() == 2 && b.dim() == 2) return mm(a, b);
  const int64_t K = a.size(-1);
  KERN_CHECK(b.size(-2) == K, "matmul: shapes ", a.shape(), " and ", b.shape(), " cannot be multiplied");
  if (b.dim() == 2) {
    // [*, K] @ [K, N]: fold the batch into the rows.
    Shape out_shape(a.shape().begin(), a.shape().end() - 1);
    out_shape.push_back(b.size(1));
    return reshape(mm(reshape(a, {-1, K}), b), out_shape);
  }
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes(ba, bb, "matmul");
  const int64_t M = a.size(-2), N = b.size(-1);
  Shape ea = batch, eb = batch;
  ea.insert(ea.end(), {M, K});
  eb.insert(eb.end(), {K, N});
  Tensor out = bmm(reshape(expand(a, ea), {-1, M, K}), reshape(expand(b, eb), {-1, K, N}));
  Shape out_shape = batch;
  out_shape.insert(out_shape.end(), {M, N});
  return reshape(out, out_shape);
}

// y[*, out] = x[*, in] @ W[out, in]^T + b[out], as one op rather than matmul(x, W.t()) + b:
// the weight gradient dy^T x then comes out in W's own [out, in] layout (the composite form
// produced a transposed view that every optimizer step had to copy), and the bias is the GEMM's
// initial C (beta = 1), which saves a pass over y.
namespace {

// a^T b for a: [rows, m], b: [rows, n] -> [m, n]: linear's weight gradient. As mm(a.t(), b) its
// gradient in a would come back as the transpose of an [m, rows] product (a strided view that
// every later add and copy of a double backward walks column-wise); here both gradients are
// dense products: d/da = b V^T, d/db = a V.
Tensor mm_tn(const Tensor& a, const Tensor& b) {
  Tensor out = empty({a.size(1), b.size(1)}, a.dtype());
  {
    NoGradGuard ng;
    gemm_into(a.t(), b, out, 0);
  }
  return record_op("mm_tn", out, {a, b}, [](const BackwardContext& c) {
    return G{c.needs[0] ? mm(c.inputs[1], c.grad.t()) : Tensor(), c.needs[1] ? mm(c.inputs[0], c.grad) : Tensor()};
  }, SavedValues::none().input_for(0, {1}).input_for(1, {0}), JvpRule([](const JvpContext& c) {  // t_a^T b + a^T t_b
    return detail::sum_defined({c.has(0) ? mm_tn(c.tangents[0], c.inputs[1]) : Tensor(),
                                c.has(1) ? mm_tn(c.inputs[0], c.tangents[1]) : Tensor()},
                               c.output.shape());
  }));
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  KERN_CHECK(weight.dim() == 2, "linear: weight must be [out, in], got ", weight.shape());
  KERN_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear: input ", x.shape(), " does not match weight ",
             weight.shape(), " (in_features = ", weight.size(1), ")");
  check_operand(x, "linear");
  detail::check_same_dtype(x, weight, "linear");
  if (detail::autocast_applies(x, weight)) return linear_autocast(x, weight, bias);
  const DType out_dtype = product_dtype(x.dtype());
  if (bias.defined()) {
    KERN_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "linear: bias ", bias.shape(),
               " does not match weight ", weight.shape());
    KERN_CHECK(bias.dtype() == out_dtype, "linear: bias is ", bias.dtype(), " but the product of ", x.dtype(),
               " input and weight is ", out_dtype);
  }
  const int64_t in = weight.size(1), out_features = weight.size(0);
  Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  out_shape.push_back(out_features);
  Tensor out = empty(out_shape, out_dtype);
  {
    NoGradGuard ng;
    const Tensor x2 = reshape(x, {-1, in});  // [rows, in]
    Tensor out2 = reshape(out, {-1, out_features});  // shares out's storage
    double beta = 0.0;
    if (bias.defined() && out2.size(0) > 0) {
      out2.copy_(expand(unsqueeze(bias, 0), out2.shape()));
      beta = 1.0;
    }
    gemm_into(x2, weight.t(), out2, 0, beta);
  }
  std::vector<Tensor> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  return record_op("linear", out, inputs, [in, out_features](const BackwardContext& c) {
    const Tensor& x = c.inputs[0];
    const Tensor& w = c.inputs[1];
    const Tensor g = c.grad.to(x.dtype());  // bf16 operands: the backward GEMMs run in bf16
    const Tensor g2 = reshape(g, {-1, out_features});  // [rows, out]
    const Tensor x2 = reshape(x, {-1, in});
    Tensor gw;
    if (c.needs[1]) gw = x.dtype() == DType::BFloat16 ? mm(g2.t(), x2).to(w.dtype()) : mm_tn(g2, x2);
    G grads{c.needs[0] ? matmul(g, w).to(x.dtype()) : Tensor(), gw};
    // The bias gradient sums the float32 gradient (the bias is float32 under autocast).
    if (c.inputs.size() == 3) grads.push_back(c.needs[2] ? sum(reshape(c.grad, {-1, out_features}), {0}) : Tensor());
    return grads;
  }, SavedValues::none().input_for(0, {1}).input_for(1, {0}), JvpRule([](const JvpContext& c) {
    // linear(t_x, W, t_b) + linear(x, t_W): one GEMM per tangent, the bias tangent as its C
    const Tensor& x = c.inputs[0];
    const Tensor& w = c.inputs[1];
    Tensor tb = c.inputs.size() == 3 && c.has(2) ? c.tangents[2] : Tensor();
    Tensor t;
    if (c.has(0)) {
      t = linear(c.tangents[0], w, tb);
      tb = Tensor();
    }
    if (c.has(1)) t = t.defined() ? t + linear(x, c.tangents[1]) : linear(x, c.tangents[1], tb);
    else if (tb.defined()) t = detail::at_shape(tb, c.output.shape());
    return t;
  }));
}

// linear under bf16 autocast, as one node: y = bf16(x) @ bf16(W)^T + b (float32 result; the
// bias stays float32). It is the composite linear(autocast_cast(x), autocast_cast(W), b)
// with the conversions folded in: the node saves the bf16 copies (and a storage-less alias of
// x, so that x's float32 buffer can be freed), and its backward returns float32 gradients
// straight from the bf16 GEMMs' float32 results instead of rounding them to bf16 and widening
// them back (two passes over W's size per step). With create_graph the backward records the
// conversions (autocast_record_cast) and bf16 products, so it is differentiable again.
static Tensor linear_autocast(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const int64_t in = weight.size(1), out_features = weight.size(0);
  Tensor xb, wb, out;
  {
    NoGradGuard ng;
    xb = x.detach().to(DType::BFloat16);
    wb = weight.detach().to(DType::BFloat16);
    out = linear(xb, wb, bias);
  }
  // inputs: the graph's x (or its alias), W, the bf16 copies (no gradient), then the bias.
  G inputs{detail::autocast_graph_input(x), weight, xb, wb};
  if (bias.defined()) inputs.push_back(bias);
  return record_op("linear_autocast", out, inputs, [in, out_features](const BackwardContext& c) {
    const Tensor xr = detail::autocast_record_cast(c.inputs[2], c.inputs[0]);  // bf16(x), recorded
    const Tensor wr = detail::autocast_record_cast(c.inputs[3], c.inputs[1]);  // bf16(W), recorded
    const Tensor g = c.grad.to(DType::BFloat16);
    G grads(c.inputs.size());
    if (c.needs[0]) grads[0] = matmul(g, wr);                                   // float32
    if (c.needs[1]) grads[1] = mm(reshape(g, {-1, out_features}).t(), reshape(xr, {-1, in}));
    if (c.inputs.size() == 5 && c.needs[4]) grads[4] = sum(reshape(c.grad, {-1, out_features}), {0});
    return grads;
  }, SavedValues::none());
}

Tensor outer(const Tensor& a, const Tensor& b) {
  KERN_CHECK(a.dim() == 1 && b.dim() == 1, "outer: expected 1-D operands, got ", a.shape(), " and ", b.shape());
  return unsqueeze(a, 1) * unsqueeze(b, 0);
}

}  // namespace kern
