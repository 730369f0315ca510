// Tensor core: storage, metadata, copies and conversions (outside autograd where stated).
#include <kern/autograd.hpp>
#include <kern/ops.hpp>
#include <kern/tensor.hpp>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "../ops/kernel_utils.hpp"
#include "allocator.hpp"
#include "../ops/jvp_util.hpp"

namespace kern {

std::shared_ptr<Storage> Storage::allocate(std::size_t nbytes) {
  auto s = std::make_shared<Storage>();
  void* p = detail::host_alloc(nbytes);
  KERN_CHECK(nbytes == 0 || p != nullptr, "out of memory allocating ", nbytes, " bytes");
  s->data = p;
  s->nbytes = nbytes;
  s->keepalive = std::shared_ptr<void>(p, [nbytes](void* q) { detail::host_free(q, nbytes); });
  return s;
}

namespace detail {
void throw_numel_overflow(const Shape& shape) {
  throw Error(concat("shape ", shape, " has more elements than int64 can count (the product of ",
                     "its sizes overflows)"));
}
}  // namespace detail

std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> st(shape.size());
  int64_t acc = 1;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    st[d] = acc;
    // The stride of dim d-1; it is needed (and so must fit) only when there is a dim d-1.
    if (d > 0)
      KERN_CHECK(!__builtin_mul_overflow(acc, std::max<int64_t>(shape[d], 1), &acc), "shape ",
                 shape, ": its contiguous strides overflow int64");
  }
  return st;
}

int64_t checked_nbytes(const Shape& shape, int64_t elem_size, const char* op) {
  int64_t nbytes = 0;
  KERN_CHECK(!__builtin_mul_overflow(shape.numel(), elem_size, &nbytes), op, ": shape ", shape,
             " needs more than 2^63 bytes (", shape.numel(), " elements of ", elem_size,
             " bytes)");
  return nbytes;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    KERN_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", a, " and ", b,
               " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  KERN_CHECK(out.checked_numel().has_value(), op, ": the broadcast shape ", out, " of ", a, " and ",
             b, " has more elements than int64 can count");
  return out;
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  const int64_t lo = ndim == 0 ? -1 : -ndim, hi = ndim == 0 ? 0 : ndim - 1;
  KERN_CHECK(dim >= lo && dim <= hi, op, ": dim ", dim, " out of range for a tensor with ", ndim,
             " dims");
  return dim < 0 ? dim + std::max<int64_t>(ndim, 1) : dim;
}

int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int64_t d) const { return strides()[wrap_dim(d, dim(), "stride")]; }

bool Tensor::is_contiguous() const {
  // A tensor without elements is contiguous whatever its strides (as in PyTorch): copying
  // it must not walk its outer dims (a [2^62, 0] tensor has 2^62 empty rows).
  if (numel() == 0) return true;
  int64_t expected = 1;
  for (int64_t d = dim() - 1; d >= 0; --d) {
    if (shape()[d] != 1 && strides()[d] != expected) return false;
    expected *= shape()[d];
  }
  return true;
}

bool Tensor::shares_storage(const Tensor& other) const {
  return impl().storage == other.impl().storage;
}

void* Tensor::raw_data() const {
  auto& i = impl();
  return static_cast<char*>(i.storage->data) + i.offset * static_cast<int64_t>(dtype_size(i.dtype));
}

double Tensor::item_double() const {
  KERN_CHECK(numel() == 1, "item: expected a tensor with one element, got shape ", shape());
  return detail::dispatch_storage(dtype(), [&]<typename T>() {
    return static_cast<double>(*static_cast<const T*>(raw_data()));
  });
}

int64_t Tensor::item_int64() const {
  KERN_CHECK(numel() == 1, "item: expected a tensor with one element, got shape ", shape());
  if (dtype() == DType::Int64) return *static_cast<const int64_t*>(raw_data());
  const double v = item_double();
  KERN_CHECK(fits_int64(v), "item: value ", v, " does not fit int64");
  return static_cast<int64_t>(v);
}


template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = contiguous();
  std::vector<T> out(numel());
  detail::dispatch_storage(dtype(), [&]<typename S>() {
    const S* p = static_cast<const S*>(c.raw_data());
    for (int64_t i = 0; i < numel(); ++i) out[i] = static_cast<T>(p[i]);
  });
  return out;
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;

Tensor& Tensor::requires_grad_(bool value) {
  KERN_CHECK(is_leaf() || value, "requires_grad_: only leaves can stop requiring grad; use detach()");
  KERN_CHECK(is_leaf(), "requires_grad_: tensor is not a leaf (it was produced by ",
             grad_fn() ? "an op" : "?", "); use detach().requires_grad_()");
  KERN_CHECK(!value || is_floating(dtype()), "requires_grad_: only floating tensors can require grad, got ",
             dtype());
  impl().requires_grad = value;
  return *this;
}

Tensor Tensor::detach() const {
  auto i = std::make_shared<TensorImpl>();
  i->storage = impl().storage;
  i->shape = shape();
  i->strides = strides();
  i->offset = storage_offset();
  i->dtype = dtype();
  return Tensor(i);
}


Tensor Tensor::contiguous() const { return kern::contiguous(*this); }

Tensor Tensor::clone() const {
  // Always a fresh copy; differentiable (identity gradient).
  Tensor out = empty(shape(), dtype());
  out.copy_(*this);
  return record_op("clone", out, {*this}, [](const BackwardContext& c) {
    return std::vector<Tensor>{c.grad};
  }, SavedValues::none(), JvpRule([](const JvpContext& c) { return c.tangents[0]; }));
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  detail::check_convertible(*this, target, "to");
  Tensor out = empty(shape(), target);
  detail::convert_strided(out, *this);
  if (!is_floating(target) || !is_floating(dtype())) return out;
  const DType source = dtype();
  return record_op("to", out, {*this}, [source](const BackwardContext& c) {
    return std::vector<Tensor>{c.grad.to(source)};
  }, SavedValues::none(), JvpRule([target](const JvpContext& c) { return c.tangents[0].to(target); }));
}

uint64_t Tensor::version() const {
  const auto& st = impl().storage;
  return st ? st->version.load(std::memory_order_relaxed) : 0;
}

void Tensor::bump_version() const {
  if (const auto& st = impl().storage) st->version.fetch_add(1, std::memory_order_relaxed);
}

namespace {

// copy_ and fill_ are not recorded by autograd: writing into a tensor that requires grad
// while grad mode is on would leave its graph describing values it no longer holds.
void check_inplace_grad_mode(const Tensor& t, const char* op) {
  if (!t.requires_grad() || !grad_mode_enabled()) return;
  KERN_CHECK(!t.is_leaf(), op, ": in-place write into a leaf that requires grad (", t.dtype(), " ", t.shape(),
             "); wrap it in NoGradGuard (initialization, optimizer updates) as in PyTorch");
  throw Error(fmt::format("{}: in-place write into a tensor that requires grad ({} {}, produced by op '{}') while "
                          "grad mode is on; kern's {} is not recorded by autograd: wrap it in NoGradGuard, or build "
                          "the new value with differentiable ops",
                          op, t.dtype(), t.shape(), t.grad_fn()->name(), op));
}

// Can two elements of `t` share a memory location? Exact for kern's views (all come from a
// dense layout by permute / narrow / select / view / expand): after sorting the dims of size
// > 1 by stride, each stride must exceed the extent of the smaller ones.
bool has_internal_overlap(const Tensor& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.shape()[d] > 1) dims.emplace_back(std::abs(t.strides()[d]), t.shape()[d]);
  std::sort(dims.begin(), dims.end());
  int64_t extent = 0;  // max element offset spanned by the dims so far
  for (auto [stride, size] : dims) {
    if (stride <= extent) return true;
    extent += stride * (size - 1);
  }
  return false;
}

// The byte range [lo, hi) that `t`'s elements occupy in its storage (empty for no elements).
std::pair<int64_t, int64_t> byte_range(const Tensor& t) {
  if (t.numel() == 0) return {0, 0};
  const int64_t es = static_cast<int64_t>(dtype_size(t.dtype()));
  int64_t lo = t.storage_offset(), hi = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t span = t.strides()[d] * (t.shape()[d] - 1);
    (span < 0 ? lo : hi) += span;
  }
  return {lo * es, (hi + 1) * es};
}

bool memory_overlaps(const Tensor& a, const Tensor& b) {
  if (!a.shares_storage(b)) return false;
  auto [alo, ahi] = byte_range(a);
  auto [blo, bhi] = byte_range(b);
  return alo < bhi && blo < ahi;
}

bool same_view(const Tensor& a, const Tensor& b) {
  return a.shares_storage(b) && a.dtype() == b.dtype() && a.storage_offset() == b.storage_offset() &&
         a.shape() == b.shape() && a.strides() == b.strides();
}

}  // namespace

Tensor& Tensor::copy_(const Tensor& src) {
  check_inplace_grad_mode(*this, "copy_");
  Shape bs = broadcast_shapes(src.shape(), shape(), "copy_");
  KERN_CHECK(bs == shape(), "copy_: source of shape ", src.shape(), " does not broadcast to ", shape());
  KERN_CHECK(!has_internal_overlap(*this), "copy_: the destination (", dtype(), " ", shape(), ", strides ",
             fmt::format("{}", fmt::join(strides(), ", ")), ") has elements that share memory (an expand()ed view?); which source "
             "element would win is undefined: copy into a contiguous() tensor instead");
  detail::check_convertible(src, dtype(), "copy_");
  bump_version();
  if (same_view(*this, src)) return *this;  // x.copy_(x): nothing to move
  // A source overlapping the destination would be overwritten while it is read: read it
  // from a temporary (PyTorch 1.13 raises here instead).
  Tensor from = src;
  if (memory_overlaps(*this, src)) {
    from = empty(src.shape(), src.dtype());
    from.copy_(src.detach());
  }
  detail::convert_strided(*this, from);
  return *this;
}

Tensor& Tensor::fill_(double value) {
  check_inplace_grad_mode(*this, "fill_");
  KERN_CHECK(dtype() != DType::Int64 || fits_int64(value), "fill_: cannot fill an int64 tensor with ", value);
  // Storage dtypes: the value converted as an element would be (range-checked, rounded to
  // nearest even). Compute dtypes keep the direct cast (no temporaries on the hot path).
  Tensor vt;
  if (!is_compute_dtype(dtype())) {
    const Tensor v1 = scalar_tensor(value, DType::Float64);
    detail::check_convertible(v1, dtype(), "fill_");
    vt = empty({}, dtype());
    detail::convert_strided(vt, v1);
  }
  bump_version();
  detail::dispatch_storage(dtype(), [&]<typename T>() {
    T* o = static_cast<T*>(raw_data());
    T v;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, int64_t>)
      v = static_cast<T>(value);
    else
      v = *static_cast<const T*>(vt.raw_data());
    detail::StridedLoop<1> loop(shape(), {strides()});
    loop.run([&](const std::array<int64_t, 1>& off, int64_t n, const std::array<int64_t, 1>& st) {
      for (int64_t i = 0; i < n; ++i) o[off[0] + i * st[0]] = v;
    });
  });
  return *this;
}

// ---- method forms of ops
Tensor Tensor::view(const Shape& s) const { return kern::view(*this, s); }
Tensor Tensor::reshape(const Shape& s) const { return kern::reshape(*this, s); }
Tensor Tensor::permute(const Dims& d) const { return kern::permute(*this, d); }
Tensor Tensor::transpose(int64_t a, int64_t b) const { return kern::transpose(*this, a, b); }
Tensor Tensor::narrow(int64_t d, int64_t s, int64_t l) const { return kern::narrow(*this, d, s, l); }
Tensor Tensor::select(int64_t d, int64_t i) const { return kern::select(*this, d, i); }
Tensor Tensor::expand(const Shape& s) const { return kern::expand(*this, s); }
Tensor Tensor::squeeze(int64_t d) const { return kern::squeeze(*this, d); }
Tensor Tensor::unsqueeze(int64_t d) const { return kern::unsqueeze(*this, d); }
Tensor Tensor::flatten(int64_t s, int64_t e) const { return kern::flatten(*this, s, e); }
Tensor Tensor::sum(const Dims& d, bool k) const { return kern::sum(*this, d, k); }
Tensor Tensor::mean(const Dims& d, bool k) const { return kern::mean(*this, d, k); }
Tensor Tensor::pow(double e) const { return kern::pow(*this, e); }
Tensor Tensor::exp() const { return kern::exp(*this); }
Tensor Tensor::log() const { return kern::log(*this); }
Tensor Tensor::sqrt() const { return kern::sqrt(*this); }
Tensor Tensor::abs() const { return kern::abs(*this); }
Tensor Tensor::neg() const { return kern::neg(*this); }
Tensor Tensor::matmul(const Tensor& o) const { return kern::matmul(*this, o); }

// ---- operators
Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& a) { return neg(a); }
Tensor operator+(const Tensor& a, double b) { return add(a, detail::scalar_like(b, a)); }
Tensor operator-(const Tensor& a, double b) { return sub(a, detail::scalar_like(b, a)); }
Tensor operator*(const Tensor& a, double b) { return mul(a, detail::scalar_like(b, a)); }
Tensor operator/(const Tensor& a, double b) { return mul(a, detail::scalar_like(1.0 / b, a)); }
Tensor operator+(double a, const Tensor& b) { return add(detail::scalar_like(a, b), b); }
Tensor operator-(double a, const Tensor& b) { return sub(detail::scalar_like(a, b), b); }
Tensor operator*(double a, const Tensor& b) { return mul(detail::scalar_like(a, b), b); }
Tensor operator/(double a, const Tensor& b) { return div(detail::scalar_like(a, b), b); }

double max_abs_diff(const Tensor& a, const Tensor& b) {
  KERN_CHECK(a.shape() == b.shape(), "max_abs_diff: shapes ", a.shape(), " and ", b.shape(), " differ");
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    const double d = std::abs(va[i] - vb[i]);
    if (std::isnan(d)) return d;
    m = std::max(m, d);
  }
  return m;
}

bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol) {
  if (a.shape() != b.shape()) return false;
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  for (size_t i = 0; i < va.size(); ++i)
    if (!(std::abs(va[i] - vb[i]) <= atol + rtol * std::abs(vb[i]))) return false;
  return true;
}

void set_num_threads(int n) {
  KERN_CHECK(n >= 1, "set_num_threads: need at least 1 thread, got ", n);
  omp_set_num_threads(n);
}
int get_num_threads() { return omp_get_max_threads(); }

namespace detail {

std::vector<int64_t> broadcast_strides(const Tensor& t, const Shape& shape) {
  std::vector<int64_t> st(shape.size(), 0);
  const size_t off = shape.size() - t.shape().size();
  for (size_t d = 0; d < t.shape().size(); ++d)
    st[off + d] = t.shape()[d] == 1 ? 0 : t.strides()[d];
  return st;
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  KERN_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch, ", a.dtype(), " ", a.shape(), " vs ",
             b.dtype(), " ", b.shape(), " (convert one with .to())");
}

void check_floating(const Tensor& t, const char* op) {
  // float32 / float64: the floating dtypes ops compute in (bf16 / f16 are storage only).
  KERN_CHECK(t.dtype() == DType::Float32 || t.dtype() == DType::Float64, op,
             ": expected a floating-point tensor, got ", t.dtype(), " ", t.shape(),
             t.dtype() == DType::Int64 ? "" : " (ops compute in float32 or float64; convert with .to())");
}

Tensor scalar_like(double v, const Tensor& like) { return scalar_tensor(v, like.dtype()); }

}  // namespace detail
}  // namespace kern
