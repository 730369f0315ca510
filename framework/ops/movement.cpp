// Movement ops: views sharing storage (reshape/view, permute, transpose, narrow, select,
// expand, squeeze/unsqueeze) and copies (contiguous, cat, pad), with their backwards.
#include <kern/autograd.hpp>
#include <kern/ops.hpp>

#include <numeric>
#include <optional>

#include "kernel_utils.hpp"
#include "jvp_util.hpp"

namespace kern {

using G = std::vector<Tensor>;

namespace {

Tensor make_view(const Tensor& x, Shape shape, std::vector<int64_t> strides, int64_t offset) {
  (void)shape.numel();  // throws when the element count overflows (expand to [2^62, 8])
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = x.impl().storage;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = x.dtype();
  return Tensor(impl);
}

// Resolves a single -1 in a target shape.
Shape infer_shape(const Shape& target, int64_t numel, const char* op, const Shape& from) {
  Shape s = target, known_sizes;
  int64_t infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      KERN_CHECK(infer < 0, op, ": only one dimension can be -1 in ", target);
      infer = static_cast<int64_t>(i);
    } else {
      KERN_CHECK(s[i] >= 0, op, ": invalid size ", s[i], " in ", target);
      known_sizes.push_back(s[i]);
    }
  }
  const auto known_numel = known_sizes.checked_numel();
  KERN_CHECK(known_numel.has_value(), op, ": shape ", target, " has more elements than int64 can count");
  const int64_t known = *known_numel;
  if (infer >= 0) {
    KERN_CHECK(known != 0 && numel % known == 0, op, ": shape ", target, " is invalid for input of shape ", from);
    s[infer] = numel / known;
  }
  KERN_CHECK(s.numel() == numel, op, ": shape ", target, " is invalid for input of shape ", from, " (",
             numel, " elements)");
  return s;
}

// Strides for viewing (shape, strides) as new_shape without a copy, if possible
// (the same chunk-matching rule as PyTorch's computeStride).
std::optional<std::vector<int64_t>> view_strides(const Shape& old_shape, const std::vector<int64_t>& old_strides,
                                                 const Shape& new_shape) {
  std::vector<int64_t> ns(new_shape.size());
  if (old_shape.numel() == 0 || old_shape.empty()) return contiguous_strides(new_shape);
  int64_t view_d = static_cast<int64_t>(new_shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.empty() ? 1 : old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(old_shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= old_shape[d];
    if (d == 0 || (old_shape[d - 1] != 1 && old_strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        ns[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base_stride = old_strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return ns;
}

}  // namespace

Tensor view(const Tensor& x, const Shape& target) {
  const Shape shape = infer_shape(target, x.numel(), "view", x.shape());
  auto st = view_strides(x.shape(), x.strides(), shape);
  KERN_CHECK(st.has_value(), "view: shape ", target, " is incompatible with the strides of input ",
             x.shape(), "; use reshape (it copies)");
  const Shape in_shape = x.shape();
  return record_op("view", make_view(x, shape, *st, x.storage_offset()), {x},
                   [in_shape](const BackwardContext& c) { return G{reshape(c.grad, in_shape)}; }, SavedValues::none(), detail::linear_rule([shape](const Tensor& t) { return reshape(t, shape); }));
}

Tensor reshape(const Tensor& x, const Shape& target) {
  const Shape shape = infer_shape(target, x.numel(), "reshape", x.shape());
  if (view_strides(x.shape(), x.strides(), shape)) return view(x, shape);
  return view(contiguous(x), shape);
}

Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  Tensor out = empty(x.shape(), x.dtype());
  {
    NoGradGuard ng;
    out.copy_(x);
  }
  return record_op("contiguous", out, {x}, [](const BackwardContext& c) { return G{c.grad}; }, SavedValues::none(), detail::linear_rule([](const Tensor& t) { return t; }));
}

Tensor permute(const Tensor& x, const Dims& dims) {
  const int64_t nd = x.dim();
  KERN_CHECK(static_cast<int64_t>(dims.size()) == nd, "permute: ", dims.size(), " dims given for a tensor of shape ", x.shape());
  Shape shape(nd);
  std::vector<int64_t> strides(nd), inverse(nd, -1);
  for (int64_t i = 0; i < nd; ++i) {
    const int64_t d = wrap_dim(dims[i], nd, "permute");
    KERN_CHECK(inverse[d] == -1, "permute: dim ", d, " repeated");
    inverse[d] = i;
    shape[i] = x.shape()[d];
    strides[i] = x.strides()[d];
  }
  return record_op("permute", make_view(x, shape, strides, x.storage_offset()), {x},
                   [inverse](const BackwardContext& c) { return G{permute(c.grad, inverse)}; }, SavedValues::none(), detail::linear_rule([dims](const Tensor& t) { return permute(t, dims); }));
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  const int64_t nd = x.dim();
  d0 = wrap_dim(d0, nd, "transpose");
  d1 = wrap_dim(d1, nd, "transpose");
  Dims p(nd);
  std::iota(p.begin(), p.end(), 0);
  std::swap(p[d0], p[d1]);
  return permute(x, p);
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  dim = wrap_dim(dim, x.dim(), "narrow");
  const int64_t n = x.shape()[dim];
  if (start < 0) start += n;
  KERN_CHECK(start >= 0 && length >= 0 && start + length <= n, "narrow: [", start, ", ", start + length,
             ") is out of range for dim ", dim, " of size ", n, " (shape ", x.shape(), ")");
  Shape shape = x.shape();
  shape[dim] = length;
  // A view without elements keeps x's offset: it reads nothing, and start * stride can
  // overflow there ([2^31, 0, 2^32 - 1] has stride 2^32 - 1 in dim 0; found by fuzz_idx).
  const int64_t offset =
      shape.numel() == 0 ? x.storage_offset() : x.storage_offset() + start * x.strides()[dim];
  const int64_t nd = x.dim();
  return record_op("narrow", make_view(x, shape, x.strides(), offset), {x},
                   [dim, start, n, length, nd](const BackwardContext& c) {
                     std::vector<int64_t> pads(2 * nd, 0);
                     pads[2 * (nd - 1 - dim)] = start;
                     pads[2 * (nd - 1 - dim) + 1] = n - start - length;
                     return G{pad(c.grad, pads)};
                   },
                   SavedValues::none(), detail::linear_rule([dim, start, length](const Tensor& t) { return narrow(t, dim, start, length); }));
}

Tensor select(const Tensor& x, int64_t dim, int64_t index) {
  dim = wrap_dim(dim, x.dim(), "select");
  const int64_t n = x.shape()[dim];
  KERN_CHECK(index >= -n && index < n, "select: index ", index, " out of range for dim ", dim, " of size ", n);
  if (index < 0) index += n;
  return squeeze(narrow(x, dim, index, 1), dim);
}

Tensor expand(const Tensor& x, const Shape& target) {
  KERN_CHECK(target.size() >= x.shape().size(), "expand: cannot expand shape ", x.shape(), " to ", target);
  const size_t lead = target.size() - x.shape().size();
  Shape shape(target.size());
  std::vector<int64_t> strides(target.size(), 0);
  for (size_t i = 0; i < target.size(); ++i) {
    if (i < lead) {
      KERN_CHECK(target[i] >= 0, "expand: invalid size ", target[i], " in ", target);
      shape[i] = target[i];
      continue;
    }
    const int64_t s = x.shape()[i - lead];
    const int64_t t = target[i] == -1 ? s : target[i];
    KERN_CHECK(s == t || s == 1, "expand: size ", s, " of dim ", i - lead, " cannot expand to ", t,
               " (shape ", x.shape(), " to ", target, ")");
    shape[i] = t;
    strides[i] = s == t ? x.strides()[i - lead] : 0;
  }
  if (shape == x.shape()) return x;
  const Shape in_shape = x.shape();
  return record_op("expand", make_view(x, shape, strides, x.storage_offset()), {x},
                   [in_shape](const BackwardContext& c) { return G{sum_to(c.grad, in_shape)}; }, SavedValues::none(), detail::linear_rule([shape](const Tensor& t) { return expand(t, shape); }));
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  dim = wrap_dim(dim, x.dim(), "squeeze");
  if (x.shape()[dim] != 1) return x;
  Shape shape = x.shape();
  shape.erase(shape.begin() + dim);
  return reshape(x, shape);
}

Tensor squeeze(const Tensor& x) {
  Shape shape;
  for (auto s : x.shape())
    if (s != 1) shape.push_back(s);
  return reshape(x, shape);
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  dim = wrap_dim(dim, x.dim() + 1, "unsqueeze");
  Shape shape = x.shape();
  shape.insert(shape.begin() + dim, 1);
  return reshape(x, shape);
}

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  if (x.dim() == 0) return reshape(x, {1});
  start_dim = wrap_dim(start_dim, x.dim(), "flatten");
  end_dim = wrap_dim(end_dim, x.dim(), "flatten");
  KERN_CHECK(start_dim <= end_dim, "flatten: start_dim ", start_dim, " > end_dim ", end_dim);
  Shape shape(x.shape().begin(), x.shape().begin() + start_dim);
  // The merged size, overflow-checked (only a tensor without elements can get there).
  shape.push_back(Shape(x.shape().begin() + start_dim, x.shape().begin() + end_dim + 1).numel());
  shape.insert(shape.end(), x.shape().begin() + end_dim + 1, x.shape().end());
  return reshape(x, shape);
}

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  KERN_CHECK(!xs.empty(), "cat: no tensors given");
  const Tensor& first = xs[0];
  dim = wrap_dim(dim, first.dim(), "cat");
  Shape shape = first.shape();
  shape[dim] = 0;
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& t = xs[i];
    KERN_CHECK(t.dim() == first.dim() && t.dtype() == first.dtype(), "cat: tensor ", i, " (", t.dtype(), " ",
               t.shape(), ") does not match tensor 0 (", first.dtype(), " ", first.shape(), ")");
    for (int64_t d = 0; d < t.dim(); ++d)
      KERN_CHECK(d == dim || t.shape()[d] == first.shape()[d], "cat: tensor ", i, " has shape ", t.shape(),
                 ", expected ", first.shape(), " except in dim ", dim);
    sizes.push_back(t.shape()[dim]);
    shape[dim] += t.shape()[dim];
  }
  Tensor out = empty(shape, first.dtype());
  {
    NoGradGuard ng;
    int64_t at = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      narrow(out, dim, at, sizes[i]).copy_(xs[i]);
      at += sizes[i];
    }
  }
  return record_op("cat", out, xs, [dim, sizes](const BackwardContext& c) {
    G g(sizes.size());
    int64_t at = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (c.needs[i]) g[i] = narrow(c.grad, dim, at, sizes[i]);
      at += sizes[i];
    }
    return g;
  }, SavedValues::none(), JvpRule([dim](const JvpContext& c) {
    std::vector<Tensor> ts;
    for (size_t i = 0; i < c.inputs.size(); ++i) ts.push_back(c.tangent_or_zeros(i));
    return cat(ts, dim);
  }));
}

Tensor stack(const std::vector<Tensor>& xs, int64_t dim) {
  KERN_CHECK(!xs.empty(), "stack: no tensors given");
  dim = wrap_dim(dim, xs[0].dim() + 1, "stack");
  std::vector<Tensor> u;
  for (size_t i = 0; i < xs.size(); ++i) {
    KERN_CHECK(xs[i].shape() == xs[0].shape(), "stack: tensor ", i, " has shape ", xs[i].shape(),
               ", expected ", xs[0].shape());
    u.push_back(unsqueeze(xs[i], dim));
  }
  return cat(u, dim);
}

std::vector<Tensor> split_with_sizes(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  dim = wrap_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (auto s : sizes) {
    KERN_CHECK(s >= 0, "split: negative size ", s);
    total += s;
  }
  KERN_CHECK(total == x.shape()[dim], "split: sizes sum to ", total, " but dim ", dim, " has size ",
             x.shape()[dim]);
  std::vector<Tensor> out;
  int64_t at = 0;
  for (auto s : sizes) {
    out.push_back(narrow(x, dim, at, s));
    at += s;
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  KERN_CHECK(split_size > 0, "split: split_size must be positive, got ", split_size);
  dim = wrap_dim(dim, x.dim(), "split");
  std::vector<int64_t> sizes;
  for (int64_t at = 0; at < x.shape()[dim]; at += split_size)
    sizes.push_back(std::min(split_size, x.shape()[dim] - at));
  return split_with_sizes(x, sizes, dim);
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  KERN_CHECK(chunks > 0, "chunk: chunks must be positive, got ", chunks);
  dim = wrap_dim(dim, x.dim(), "chunk");
  const int64_t n = x.shape()[dim];
  return split(x, std::max<int64_t>(1, (n + chunks - 1) / chunks), dim);
}

Tensor pad(const Tensor& x, const std::vector<int64_t>& pads, double value) {
  KERN_CHECK(pads.size() % 2 == 0 && static_cast<int64_t>(pads.size()) <= 2 * x.dim(), "pad: ", pads.size(),
             " pad values for a tensor of shape ", x.shape(), " (need an even count, at most 2 per dim)");
  const int64_t nd = x.dim();
  Shape shape = x.shape();
  std::vector<int64_t> before(nd, 0);
  for (size_t i = 0; i < pads.size() / 2; ++i) {
    const int64_t d = nd - 1 - static_cast<int64_t>(i);
    KERN_CHECK(pads[2 * i] >= 0 && pads[2 * i + 1] >= 0, "pad: negative padding is not supported (",
               pads[2 * i], ", ", pads[2 * i + 1], ")");
    before[d] = pads[2 * i];
    shape[d] += pads[2 * i] + pads[2 * i + 1];
  }
  Tensor out = full(shape, value, x.dtype());
  Tensor inner = out;
  for (int64_t d = 0; d < nd; ++d) inner = narrow(inner, d, before[d], x.shape()[d]);
  {
    NoGradGuard ng;
    inner.copy_(x);
  }
  const Shape in_shape = x.shape();
  return record_op("pad", out, {x}, [before, in_shape](const BackwardContext& c) {
    Tensor g = c.grad;
    for (size_t d = 0; d < in_shape.size(); ++d)
      if (g.shape()[d] != in_shape[d]) g = narrow(g, static_cast<int64_t>(d), before[d], in_shape[d]);
    return G{g};
  }, SavedValues::none(), detail::linear_rule([pads](const Tensor& t) { return pad(t, pads, 0.0); }));
}

}  // namespace kern
