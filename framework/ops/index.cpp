// Indexing ops with int64 indices (other integer dtypes are converted to int64 first): index_select / index_add and gather / scatter_add are
// each other's backward, so the pair is closed under differentiation.
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include "kernel_utils.hpp"
#include "jvp_util.hpp"

namespace kern {

using G = std::vector<Tensor>;

namespace {

/// An index of another integer dtype (int32, int16, int8, uint8, uint16, ...; not bool): the
/// ops run on its int64 copy (range-checked by to()), as PyTorch accepts int32 indices.
bool other_int_index(const Tensor& index) {
  return index.defined() && !is_floating(index.dtype()) && index.dtype() != DType::Int64 &&
         index.dtype() != DType::Bool;
}

void check_index(const Tensor& index, const char* op) {
  KERN_CHECK(index.dtype() == DType::Int64, op, ": index must be int64, got ", index.dtype(), " ", index.shape());
}

// Views x as [outer, n, inner] around `dim`.
struct Around {
  int64_t outer = 1, n = 1, inner = 1;
};
Around around(const Shape& s, int64_t dim) {
  Around a;
  a.n = s.empty() ? 1 : s[dim];
  // Without elements nothing is visited (outer = inner = 0): no loop over the 2^62 empty
  // rows of [2^62, 0], and no overflowing product of the other sizes.
  if (s.numel() == 0) return {0, a.n, 0};
  for (int64_t d = 0; d < dim; ++d) a.outer *= s[d];
  a.n = s.empty() ? 1 : s[dim];
  for (size_t d = dim + 1; d < s.size(); ++d) a.inner *= s[d];
  return a;
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  if (other_int_index(index)) return index_select(x, dim, index.to(DType::Int64));
  check_index(index, "index_select");
  KERN_CHECK(index.dim() == 1, "index_select: index must be 1-D, got shape ", index.shape());
  dim = wrap_dim(dim, x.dim(), "index_select");
  Tensor xc = contiguous(x.detach()), ic = contiguous(index);
  const Around a = around(x.shape(), dim);
  const int64_t k = index.numel();
  const int64_t* ip = ic.data_ptr<int64_t>();
  for (int64_t j = 0; j < k; ++j)
    KERN_CHECK(ip[j] >= 0 && ip[j] < a.n, "index_select: index ", ip[j], " out of range for dim ", dim,
               " of size ", a.n);
  Shape shape = x.shape();
  shape[dim] = k;
  Tensor out = empty(shape, x.dtype());
  detail::dispatch_bytes(x.dtype(), [&]<typename T>() {  // moves elements: every dtype
    const T* p = static_cast<const T*>(xc.raw_data());
    T* o = static_cast<T*>(out.raw_data());
#pragma omp parallel for schedule(static) if (out.numel() > (1 << 15))
    for (int64_t b = 0; b < a.outer; ++b)
      for (int64_t j = 0; j < k; ++j)
        std::copy_n(p + (b * a.n + ip[j]) * a.inner, a.inner, o + (b * k + j) * a.inner);
  });
  if (!is_floating(x.dtype())) return out;
  const Shape in_shape = x.shape();
  // The index is an input (never differentiated) so that writing into it after the forward
  // makes backward fail instead of scattering to the wrong rows.
  return record_op("index_select", out, {x, index}, [dim, in_shape](const BackwardContext& c) {
    return G{index_add(zeros(in_shape, c.grad.dtype()), dim, c.inputs[1], c.grad), Tensor()};
  }, SavedValues::none().input(1), JvpRule([dim](const JvpContext& c) { return index_select(c.tangents[0], dim, c.inputs[1]); }));
}

Tensor index_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  if (other_int_index(index)) return index_add(self, dim, index.to(DType::Int64), src);
  check_index(index, "index_add");
  detail::check_same_dtype(self, src, "index_add");
  detail::check_floating(self, "index_add");
  dim = wrap_dim(dim, self.dim(), "index_add");
  KERN_CHECK(index.dim() == 1 && src.dim() == self.dim() && src.shape()[dim] == index.numel(),
             "index_add: src ", src.shape(), " and index ", index.shape(), " do not match self ", self.shape(),
             " along dim ", dim);
  for (int64_t d = 0; d < self.dim(); ++d)
    KERN_CHECK(d == dim || src.shape()[d] == self.shape()[d], "index_add: src ", src.shape(),
               " differs from self ", self.shape(), " outside dim ", dim);
  Tensor out = contiguous(self.detach()).clone().detach();
  Tensor sc = contiguous(src.detach()), ic = contiguous(index);
  const Around a = around(self.shape(), dim);
  const int64_t k = index.numel();
  const int64_t* ip = ic.data_ptr<int64_t>();
  for (int64_t j = 0; j < k; ++j)
    KERN_CHECK(ip[j] >= 0 && ip[j] < a.n, "index_add: index ", ip[j], " out of range for dim ", dim,
               " of size ", a.n);
  detail::dispatch_float(self.dtype(), "index_add", [&]<typename T>() {
    const T* s = static_cast<const T*>(sc.raw_data());
    T* o = static_cast<T*>(out.raw_data());
    // Parallel over `outer` only: rows j with equal indices write the same place.
#pragma omp parallel for schedule(static) if (a.outer > 1 && out.numel() > (1 << 15))
    for (int64_t b = 0; b < a.outer; ++b)
      for (int64_t j = 0; j < k; ++j) {
        T* dst = o + (b * a.n + ip[j]) * a.inner;
        const T* row = s + (b * k + j) * a.inner;
        for (int64_t i = 0; i < a.inner; ++i) dst[i] += row[i];
      }
  });
  return record_op("index_add", out, {self, src, index}, [dim](const BackwardContext& c) {
    return G{c.grad, c.needs[1] ? index_select(c.grad, dim, c.inputs[2]) : Tensor(), Tensor()};
  }, SavedValues::none().input_for(2, {1}), JvpRule([dim](const JvpContext& c) {  // linear in (self, src)
    if (!c.has(1)) return c.tangents[0];
    return index_add(c.tangent_or_zeros(0), dim, c.inputs[2], c.tangents[1]);
  }));
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  if (other_int_index(index)) return gather(x, dim, index.to(DType::Int64));
  check_index(index, "gather");
  dim = wrap_dim(dim, x.dim(), "gather");
  KERN_CHECK(index.dim() == x.dim(), "gather: index ", index.shape(), " must have the rank of input ", x.shape());
  for (int64_t d = 0; d < x.dim(); ++d)
    KERN_CHECK(d == dim || index.shape()[d] <= x.shape()[d], "gather: index ", index.shape(),
               " is larger than input ", x.shape(), " in dim ", d);
  Tensor out = empty(index.shape(), x.dtype());
  const int64_t n = x.shape()[dim];
  detail::dispatch_bytes(x.dtype(), [&]<typename T>() {  // moves elements: every dtype
    const T* p = static_cast<const T*>(x.raw_data());
    const int64_t* ip = static_cast<const int64_t*>(index.raw_data());
    T* o = static_cast<T*>(out.raw_data());
    // Loop over index positions; the input offset uses x's strides with dim replaced by the index.
    std::vector<int64_t> xs = x.strides();
    std::vector<int64_t> xstr = xs;
    xstr[dim] = 0;
    detail::StridedLoop<3> loop(index.shape(), {contiguous_strides(index.shape()), index.strides(), xstr});
    bool bad = false;
    int64_t bad_value = 0;
    loop.run([&](const std::array<int64_t, 3>& off, int64_t m, const std::array<int64_t, 3>& st) {
      for (int64_t i = 0; i < m; ++i) {
        const int64_t j = ip[off[1] + i * st[1]];
        if (j < 0 || j >= n) {
          bad = true;
          bad_value = j;
          continue;
        }
        o[off[0] + i * st[0]] = p[off[2] + i * st[2] + j * xs[dim]];
      }
    });
    KERN_CHECK(!bad, "gather: index ", bad_value, " out of range for dim ", dim, " of size ", n);
  });
  if (!is_floating(x.dtype())) return out;
  const Shape in_shape = x.shape();
  return record_op("gather", out, {x, index}, [dim, in_shape](const BackwardContext& c) {
    return G{scatter_add(zeros(in_shape, c.grad.dtype()), dim, c.inputs[1], c.grad), Tensor()};
  }, SavedValues::none().input(1), JvpRule([dim](const JvpContext& c) { return gather(c.tangents[0], dim, c.inputs[1]); }));
}

Tensor scatter_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  if (other_int_index(index)) return scatter_add(self, dim, index.to(DType::Int64), src);
  check_index(index, "scatter_add");
  detail::check_same_dtype(self, src, "scatter_add");
  detail::check_floating(self, "scatter_add");
  dim = wrap_dim(dim, self.dim(), "scatter_add");
  KERN_CHECK(index.dim() == self.dim() && src.dim() == self.dim(), "scatter_add: self ", self.shape(),
             ", index ", index.shape(), " and src ", src.shape(), " must have the same rank");
  for (int64_t d = 0; d < self.dim(); ++d)
    KERN_CHECK(index.shape()[d] <= src.shape()[d] && (d == dim || index.shape()[d] <= self.shape()[d]),
               "scatter_add: index ", index.shape(), " does not fit src ", src.shape(), " and self ", self.shape());
  Tensor out = contiguous(self.detach()).clone().detach();
  const int64_t n = self.shape()[dim];
  // Fast path: scatter along the last dim with contiguous operands of equal outer shape.
  // Rows are independent, so they run in parallel; within a row the adds are sequential.
  bool same_outer = index.shape() == src.shape();
  for (int64_t d = 0; d + 1 < self.dim(); ++d) same_outer = same_outer && index.shape()[d] == self.shape()[d];
  if (dim == self.dim() - 1 && same_outer && index.is_contiguous() && src.is_contiguous()) {
    const int64_t k = index.dim() ? index.shape()[dim] : 1, rows = k ? index.numel() / k : 0;
    bool bad = false;
    int64_t bad_value = 0;
    detail::dispatch_float(self.dtype(), "scatter_add", [&]<typename T>() {
      const T* s = static_cast<const T*>(src.raw_data());
      const int64_t* ip = static_cast<const int64_t*>(index.raw_data());
      T* o = static_cast<T*>(out.raw_data());
#pragma omp parallel for schedule(static) if (rows > 1 && index.numel() > (1 << 15))
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < k; ++j) {
          const int64_t t = ip[r * k + j];
          if (t < 0 || t >= n) {
            bad = true;
            bad_value = t;
            continue;
          }
          o[r * n + t] += s[r * k + j];
        }
    });
    KERN_CHECK(!bad, "scatter_add: index ", bad_value, " out of range for dim ", dim, " of size ", n);
  } else
  detail::dispatch_float(self.dtype(), "scatter_add", [&]<typename T>() {
    const T* s = static_cast<const T*>(src.raw_data());
    const int64_t* ip = static_cast<const int64_t*>(index.raw_data());
    T* o = static_cast<T*>(out.raw_data());
    std::vector<int64_t> os = out.strides(), ostr = os;
    ostr[dim] = 0;
    // Sequential: different positions may add into the same element.
    const int64_t nd = index.dim();
    std::vector<int64_t> pos(nd, 0);
    for (int64_t e = 0; e < index.numel(); ++e) {
      int64_t io = 0, so = 0, oo = 0;
      for (int64_t d = 0; d < nd; ++d) {
        io += pos[d] * index.strides()[d];
        so += pos[d] * src.strides()[d];
        oo += pos[d] * ostr[d];
      }
      const int64_t j = ip[io];
      KERN_CHECK(j >= 0 && j < n, "scatter_add: index ", j, " out of range for dim ", dim, " of size ", n);
      o[oo + j * os[dim]] += s[so];
      for (int64_t d = nd - 1; d >= 0; --d) {
        if (++pos[d] < index.shape()[d]) break;
        pos[d] = 0;
      }
    }
  });
  return record_op("scatter_add", out, {self, src, index}, [dim](const BackwardContext& c) {
    return G{c.grad, c.needs[1] ? gather(c.grad, dim, c.inputs[2]) : Tensor(), Tensor()};
  }, SavedValues::none().input_for(2, {1}), JvpRule([dim](const JvpContext& c) {  // linear in (self, src)
    if (!c.has(1)) return c.tangents[0];
    return scatter_add(c.tangent_or_zeros(0), dim, c.inputs[2], c.tangents[1]);
  }));
}

Tensor one_hot(const Tensor& labels, int64_t num_classes, DType dtype) {
  check_index(labels, "one_hot");
  KERN_CHECK(labels.dim() == 1, "one_hot: labels must be 1-D, got ", labels.shape());
  Tensor out = zeros({labels.numel(), num_classes}, dtype);
  auto v = labels.to_vector<int64_t>();
  detail::dispatch_float(dtype, "one_hot", [&]<typename T>() {
    T* o = static_cast<T*>(out.raw_data());
    for (size_t i = 0; i < v.size(); ++i) {
      KERN_CHECK(v[i] >= 0 && v[i] < num_classes, "one_hot: label ", v[i], " out of range [0, ", num_classes, ")");
      o[i * num_classes + v[i]] = T(1);
    }
  });
  return out;
}

}  // namespace kern
