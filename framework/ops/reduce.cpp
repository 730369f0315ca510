// Reductions: sum (the primitive), max/min with indices, and composites (mean, var, std,
// norm, logsumexp, sum_to, dot).
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernel_utils.hpp"
#include "jvp_util.hpp"

namespace kern {

using G = std::vector<Tensor>;

namespace {

// Normalized, sorted, unique reduced dims (empty input = all dims).
std::vector<int64_t> reduced_dims(const Tensor& x, const Dims& dims, const char* op) {
  std::vector<bool> r(x.dim(), dims.empty());
  for (auto d : dims) {
    const int64_t w = wrap_dim(d, x.dim(), op);
    if (x.dim() > 0) r[w] = true;
  }
  std::vector<int64_t> out;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (r[d]) out.push_back(d);
  return out;
}

Shape reduced_shape(const Tensor& x, const std::vector<int64_t>& rd, bool keepdim) {
  Shape s;
  for (int64_t d = 0; d < x.dim(); ++d) {
    const bool red = std::find(rd.begin(), rd.end(), d) != rd.end();
    if (!red) s.push_back(x.shape()[d]);
    else if (keepdim) s.push_back(1);
  }
  return s;
}

// Raw sum kernel: returns the reduction over `rd` with keepdim = true semantics folded out.
Tensor sum_kernel(const Tensor& x, const std::vector<int64_t>& rd, const Shape& out_shape) {
  std::vector<int64_t> kept, order;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (std::find(rd.begin(), rd.end(), d) == rd.end()) kept.push_back(d);
  const bool inner = !rd.empty() && rd.back() == x.dim() - 1;
  Tensor out = empty(out_shape, x.dtype());
  // K kept (output) elements, each the sum of R. Without output elements there is nothing to
  // do, and R (the product of the reduced sizes) may not even fit: [2^31, 2^32, 0] summed
  // over dims 0 and 1 (found by fuzz_idx). With output elements, R is 0 or a factor of numel.
  const int64_t K = out.numel();
  Shape reduced_sizes;
  for (auto d : rd) reduced_sizes.push_back(x.shape()[d]);
  const int64_t R = K == 0 ? 0 : reduced_sizes.numel();
  NoGradGuard ng;
  detail::dispatch_float(x.dtype(), "sum", [&]<typename T>() {
    T* o = static_cast<T*>(out.raw_data());
    using Acc = double;
    if (inner) {
      // [K, R] rows: reduce each row (contiguous), parallel over rows.
      order = kept;
      order.insert(order.end(), rd.begin(), rd.end());
      Tensor xp = contiguous(permute(x, order));
      const T* p = static_cast<const T*>(xp.raw_data());
#pragma omp parallel for schedule(static) if (K * R > (1 << 15))
      for (int64_t k = 0; k < K; ++k) {
        Acc acc = 0;
        const T* row = p + k * R;
#pragma omp simd reduction(+ : acc)
        for (int64_t r = 0; r < R; ++r) acc += row[r];
        o[k] = static_cast<T>(acc);
      }
    } else {
      // [R, K]: out[k] = sum_r x[r, k], vectorized over k, parallel over k blocks.
      order = rd;
      order.insert(order.end(), kept.begin(), kept.end());
      Tensor xp = contiguous(permute(x, order));
      const T* p = static_cast<const T*>(xp.raw_data());
      constexpr int64_t kBlock = 256;
      const int64_t nblocks = (K + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (K * R > (1 << 15))
      for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t k0 = b * kBlock, k1 = std::min(K, k0 + kBlock);
        Acc acc[kBlock] = {};
        for (int64_t r = 0; r < R; ++r) {
          const T* row = p + r * K;
#pragma omp simd
          for (int64_t k = k0; k < k1; ++k) acc[k - k0] += row[k];
        }
        for (int64_t k = k0; k < k1; ++k) o[k] = static_cast<T>(acc[k - k0]);
      }
    }
  });
  return out;
}

// Index of the extreme element along the last dim of a [K, R] contiguous layout.
template <bool IsMax>
ValuesIndices extreme_dim(const Tensor& x, int64_t dim, bool keepdim, const char* op) {
  detail::check_floating(x, op);
  KERN_CHECK(x.numel() > 0, op, ": reduction over an empty tensor of shape ", x.shape());
  dim = wrap_dim(dim, x.dim(), op);
  const int64_t nd = std::max<int64_t>(x.dim(), 1);
  Tensor xx = x.dim() == 0 ? reshape(x.detach(), {1}) : x.detach();
  std::vector<int64_t> order;
  for (int64_t d = 0; d < nd; ++d)
    if (d != dim) order.push_back(d);
  order.push_back(dim);
  Tensor xp = contiguous(permute(xx, order));
  const int64_t R = xx.shape()[dim], K = xx.numel() / R;
  Shape keep_shape = xx.shape();
  keep_shape[dim] = 1;
  Tensor values = empty(keep_shape, x.dtype());
  Tensor indices = empty(keep_shape, DType::Int64);
  detail::dispatch_float(x.dtype(), op, [&]<typename T>() {
    const T* p = static_cast<const T*>(xp.raw_data());
    T* v = static_cast<T*>(values.raw_data());
    int64_t* ix = indices.data_ptr<int64_t>();
    // values/indices are contiguous in keep_shape, whose element order equals the kept-dims
    // order of xp's rows.
#pragma omp parallel for schedule(static) if (K * R > (1 << 15))
    for (int64_t k = 0; k < K; ++k) {
      const T* row = p + k * R;
      int64_t best = 0;
      for (int64_t r = 1; r < R; ++r) {
        const bool better = IsMax ? (row[r] > row[best]) : (row[r] < row[best]);
        if (better || (std::isnan(row[r]) && !std::isnan(row[best]))) best = r;
      }
      v[k] = row[best];
      ix[k] = best;
    }
  });
  if (x.dim() == 0) {
    values = reshape(values, {});
    indices = reshape(indices, {});
  } else if (!keepdim) {
    values = squeeze(values, dim);
    indices = squeeze(indices, dim);
  }
  const bool kd = keepdim || x.dim() == 0;
  const int64_t d = dim;
  Tensor idx_keep = kd ? indices : unsqueeze(indices, d);
  if (x.dim() == 0) idx_keep = reshape(indices, {});
  // The indices (which the caller also gets) are an input, so writing into them after the
  // forward makes backward fail instead of routing the gradient to the wrong elements.
  values = record_op(IsMax ? "max" : "min", values, {x, idx_keep}, [d, kd](const BackwardContext& c) {
    const Tensor& in = c.inputs[0];
    if (in.dim() == 0) return G{c.grad, Tensor()};
    Tensor g = kd ? c.grad : unsqueeze(c.grad, d);
    return G{scatter_add(zeros_like(in), d, c.inputs[1], g), Tensor()};
  }, SavedValues::none().input(1), JvpRule([d, kd](const JvpContext& c) {  // the tangent at the selected element
    if (c.inputs[0].dim() == 0) return c.tangents[0];
    Tensor g = gather(c.tangents[0], d, c.inputs[1]);
    return kd ? g : squeeze(g, d);
  }));
  return {values, indices};
}

}  // namespace

Tensor sum(const Tensor& x, const Dims& dims, bool keepdim) {
  detail::check_floating(x, "sum");
  auto rd = reduced_dims(x, dims, "sum");
  const Shape out_shape = reduced_shape(x, rd, keepdim);
  Tensor out = sum_kernel(x, rd, out_shape);
  const Shape in_shape = x.shape();
  return record_op("sum", out, {x}, [rd, keepdim, in_shape](const BackwardContext& c) {
    Tensor g = c.grad;
    if (!keepdim) {
      Shape s = in_shape;
      for (auto d : rd) s[d] = 1;
      g = reshape(g, s);
    }
    return G{expand(g, in_shape)};
  }, SavedValues::none(), detail::linear_rule([rd, keepdim](const Tensor& t) { return sum(t, Dims(rd.begin(), rd.end()), keepdim); }));
}

Tensor mean(const Tensor& x, const Dims& dims, bool keepdim) {
  detail::check_floating(x, "mean");
  auto rd = reduced_dims(x, dims, "mean");
  Shape reduced_sizes;  // their product is checked: it can overflow when x has no elements
  for (auto d : rd) reduced_sizes.push_back(x.shape()[d]);
  const int64_t n = reduced_sizes.numel();
  KERN_CHECK(n > 0, "mean: reduction over an empty dimension of shape ", x.shape());
  return sum(x, dims, keepdim) * (1.0 / static_cast<double>(n));
}

Tensor var(const Tensor& x, const Dims& dims, int64_t correction, bool keepdim) {
  detail::check_floating(x, "var");
  auto rd = reduced_dims(x, dims, "var");
  Shape reduced_sizes;  // their product is checked: it can overflow when x has no elements
  for (auto d : rd) reduced_sizes.push_back(x.shape()[d]);
  const int64_t n = reduced_sizes.numel();
  KERN_CHECK(n - correction > 0, "var: ", n, " elements with correction ", correction,
             " leave no degrees of freedom (shape ", x.shape(), ")");
  Tensor centered = x - mean(x, dims, true);
  return sum(centered * centered, dims, keepdim) * (1.0 / static_cast<double>(n - correction));
}

Tensor std(const Tensor& x, const Dims& dims, int64_t correction, bool keepdim) {
  return sqrt(var(x, dims, correction, keepdim));
}

Tensor norm(const Tensor& x, double p, const Dims& dims, bool keepdim) {
  KERN_CHECK(p > 0, "norm: p must be positive, got ", p);
  if (p == 2.0) return sqrt(sum(x * x, dims, keepdim));
  if (p == 1.0) return sum(abs(x), dims, keepdim);
  return pow(sum(pow(abs(x), p), dims, keepdim), 1.0 / p);
}

Tensor logsumexp(const Tensor& x, const Dims& dims, bool keepdim) {
  detail::check_floating(x, "logsumexp");
  // The shift m is a constant (detached): the result does not depend on it.
  Tensor m = x.detach();
  for (auto d : reduced_dims(x, dims, "logsumexp")) m = max(m, d, true).values;
  {
    NoGradGuard ng;
    m = where(isfinite(m), m, 0.0);
  }
  Tensor out = log(sum(exp(x - m), dims, true)) + m;
  if (keepdim) return out;
  Shape s = reduced_shape(x, reduced_dims(x, dims, "logsumexp"), false);
  return reshape(out, s);
}

Tensor max(const Tensor& x) { return max(reshape(x, {-1}), 0, false).values; }
Tensor min(const Tensor& x) { return min(reshape(x, {-1}), 0, false).values; }

ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim) { return extreme_dim<true>(x, dim, keepdim, "max"); }
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim) { return extreme_dim<false>(x, dim, keepdim, "min"); }
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  detail::check_floating(x, "argmax");
  return max(x.detach(), dim, keepdim).indices;
}
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim) {
  detail::check_floating(x, "argmin");
  return min(x.detach(), dim, keepdim).indices;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  KERN_CHECK(shape.size() <= x.shape().size(), "sum_to: cannot reduce shape ", x.shape(), " to ", shape);
  const size_t lead = x.shape().size() - shape.size();
  Dims dims;
  for (size_t d = 0; d < x.shape().size(); ++d) {
    if (d < lead) {
      dims.push_back(static_cast<int64_t>(d));
      continue;
    }
    const int64_t want = shape[d - lead];
    KERN_CHECK(want == x.shape()[d] || want == 1, "sum_to: shape ", x.shape(), " does not broadcast from ", shape);
    if (want == 1 && x.shape()[d] != 1) dims.push_back(static_cast<int64_t>(d));
  }
  if (dims.empty()) return reshape(x, shape);
  return reshape(sum(x, dims, true), shape);
}

Tensor dot(const Tensor& a, const Tensor& b) {
  KERN_CHECK(a.shape() == b.shape(), "dot: shapes ", a.shape(), " and ", b.shape(), " differ");
  return sum(a * b);
}

}  // namespace kern
