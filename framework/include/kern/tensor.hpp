#pragma once
// Tensor: a strided, reference-counted view of a 64-byte-aligned storage buffer, with the
// autograd state (requires_grad, .grad, grad_fn) of PyTorch. Copying a Tensor copies the
// handle, not the data (as in libtorch).
#include <kern/dtype.hpp>
#include <kern/error.hpp>
#include <kern/generator.hpp>
#include <kern/shape.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace kern {

class Node;

/// A raw buffer. Owned (aligned allocation) or borrowed (e.g. a memory-mapped file kept
/// alive by `keepalive`).
struct Storage {
  void* data = nullptr;
  std::size_t nbytes = 0;
  std::shared_ptr<void> keepalive;
  /// Bumped by every in-place write into the buffer (copy_, fill_, init functions, optimizer
  /// steps); shared by every view and detach() of it, as PyTorch's version counter. Autograd
  /// compares it with the value it saw when an op recorded the tensor (see autograd.hpp).
  std::atomic<uint64_t> version{0};
  /// A fresh 64-byte-aligned buffer (contents uninitialized).
  static std::shared_ptr<Storage> allocate(std::size_t nbytes);
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  std::vector<int64_t> strides;  // in elements
  int64_t offset = 0;            // in elements
  DType dtype = DType::Float32;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;  // accumulated by backward() on leaves
  std::shared_ptr<Node> grad_fn;     // the op that produced this tensor (null for leaves)
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- metadata
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  Shape sizes() const { return impl().shape; }
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  int64_t size(int64_t d) const;
  int64_t numel() const { return impl().shape.numel(); }
  const std::vector<int64_t>& strides() const { return impl().strides; }
  int64_t stride(int64_t d) const;
  int64_t storage_offset() const { return impl().offset; }
  DType dtype() const { return impl().dtype; }
  bool is_contiguous() const;
  /// True when both tensors view the same storage.
  bool shares_storage(const Tensor& other) const;

  // ---- data access (host memory)
  void* raw_data() const;  // points at element 0 of this view
  template <typename T>
  T* data_ptr() const {
    KERN_CHECK(dtype_of<T>() == dtype(), "data_ptr: tensor is ", dtype(), ", asked for ",
               dtype_of<T>());
    return static_cast<T*>(raw_data());
  }
  /// The single value of a one-element tensor. For an integer T the value must be a whole
  /// number within T's range (NaN, Inf or 1e300 as int64 throw kern::Error instead of
  /// converting with undefined behaviour); an int64 tensor is read without a double round trip.
  template <typename T = double>
  T item() const {
    if constexpr (std::is_integral_v<T>) {
      const int64_t v = item_int64();
      KERN_CHECK(std::in_range<T>(v), "item: value ", v, " does not fit the requested type");
      return static_cast<T>(v);
    } else {
      return static_cast<T>(item_double());
    }
  }
  double item_double() const;
  /// The single value as int64: exact for int64 tensors; a floating value must fit int64
  /// (fits_int64) and is truncated toward zero, as static_cast.
  int64_t item_int64() const;
  /// Copies the elements out in row-major order, converted to T.
  template <typename T>
  std::vector<T> to_vector() const;

  // ---- autograd
  bool requires_grad() const { return impl().requires_grad; }
  /// Marks a leaf as requiring grad (throws on non-leaves and integer tensors).
  Tensor& requires_grad_(bool value = true);
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  const std::shared_ptr<Node>& grad_fn() const { return impl().grad_fn; }
  /// The accumulated gradient of a leaf (undefined until backward reaches it).
  Tensor grad() const { return Tensor(impl().grad); }
  void set_grad(const Tensor& g) { impl().grad = g.impl_; }
  /// Clears .grad (libtorch's zero_grad with set_to_none).
  void zero_grad() { impl().grad.reset(); }
  /// Reverse-mode differentiation from this tensor into every leaf's .grad.
  void backward(const Tensor& grad_output = {}, bool retain_graph = false,
                bool create_graph = false) const;
  /// Same data, cut from the graph (it shares the version counter, like every view).
  Tensor detach() const;
  /// The in-place version counter of this tensor's storage (PyTorch's `_version`): every
  /// in-place write into any view of the storage increments it.
  uint64_t version() const;
  /// Marks the storage as modified in place. kern's own in-place writes call it; code that
  /// writes through data_ptr() into a tensor that an op may have recorded must call it too,
  /// so that a backward reading the old values fails instead of computing a wrong gradient.
  void bump_version() const;

  // ---- conversion and copies
  /// A copy converted to `dtype` (differentiable between float dtypes). To int64, values are
  /// truncated toward zero; NaN, Inf and values outside [-2^63, 2^63) throw kern::Error naming
  /// the first such element (PyTorch gives an unspecified value; C++ makes it UB).
  Tensor to(DType dtype) const;
  Tensor contiguous() const;
  Tensor clone() const;
  /// In-place copy of `src` (broadcast to this shape) into this tensor's elements, outside
  /// autograd. Used by optimizers and initializers under NoGradGuard. Not recorded, so a
  /// tensor that requires grad is rejected while grad mode is on (PyTorch rejects leaves;
  /// kern also rejects non-leaves, whose recorded graph the write would make wrong). A
  /// destination whose elements overlap (an expand()ed view) is rejected; a source that
  /// overlaps the destination is read through a temporary, so the result is always the
  /// values `src` had before the call. Bumps the version counter.
  /// (A floating `src` copied into an int64 tensor must hold values that fit int64, as in to().)
  Tensor& copy_(const Tensor& src);
  /// Sets every element to `value`; the same grad-mode rule as copy_ (an expand()ed
  /// destination is fine here: every element gets the same value). Bumps the version. For
  /// int64 tensors `value` must fit int64.
  Tensor& fill_(double value);

  // ---- views (share storage; differentiable)
  Tensor view(const Shape& shape) const;
  Tensor reshape(const Shape& shape) const;
  Tensor permute(const Dims& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(0, 1); }
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor expand(const Shape& shape) const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;

  // ---- common math as methods (the free functions in kern/ops are the full API)
  Tensor sum(const Dims& dims = {}, bool keepdim = false) const;
  Tensor mean(const Dims& dims = {}, bool keepdim = false) const;
  Tensor pow(double exponent) const;
  Tensor exp() const;
  Tensor log() const;
  Tensor sqrt() const;
  Tensor abs() const;
  Tensor neg() const;
  Tensor matmul(const Tensor& other) const;

  TensorImpl& impl() const {
    KERN_CHECK(impl_ != nullptr, "use of an undefined tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// ---- factories
struct TensorOptions {
  DType dtype = DType::Float32;
  bool requires_grad = false;
};

Tensor empty(const Shape& shape, DType dtype = DType::Float32);
Tensor zeros(const Shape& shape, DType dtype = DType::Float32);
Tensor ones(const Shape& shape, DType dtype = DType::Float32);
Tensor full(const Shape& shape, double value, DType dtype = DType::Float32);
Tensor scalar_tensor(double value, DType dtype = DType::Float32);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor empty_like(const Tensor& t);
/// [start, end) with `step`, like torch.arange.
Tensor arange(double start, double end, double step = 1.0, DType dtype = DType::Float32);
Tensor arange(int64_t end, DType dtype = DType::Int64);
Tensor eye(int64_t n, DType dtype = DType::Float32);
/// Uniform in [low, high).
Tensor rand(const Shape& shape, DType dtype = DType::Float32, Generator* gen = nullptr,
            double low = 0.0, double high = 1.0);
Tensor randn(const Shape& shape, DType dtype = DType::Float32, Generator* gen = nullptr);
/// Integers uniform in [low, high).
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator* gen = nullptr);
/// A random permutation of 0..n-1 (int64).
Tensor randperm(int64_t n, Generator* gen = nullptr);
/// A tensor holding a copy of `values` with the given shape.
template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape);
Tensor tensor(std::initializer_list<double> values, DType dtype = DType::Float32);

// ---- operators (broadcasting, differentiable)
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator+(double a, const Tensor& b);
Tensor operator-(double a, const Tensor& b);
Tensor operator*(double a, const Tensor& b);
Tensor operator/(double a, const Tensor& b);
// Comparisons give float masks (1 or 0) of the input dtype; they carry no gradient.
Tensor operator>(const Tensor& a, const Tensor& b);
Tensor operator<(const Tensor& a, const Tensor& b);
Tensor operator>=(const Tensor& a, const Tensor& b);
Tensor operator<=(const Tensor& a, const Tensor& b);
Tensor operator>(const Tensor& a, double b);
Tensor operator<(const Tensor& a, double b);
Tensor operator>=(const Tensor& a, double b);
Tensor operator<=(const Tensor& a, double b);
Tensor eq(const Tensor& a, const Tensor& b);

/// Maximum |a - b| over all elements (no autograd), handy in tests.
double max_abs_diff(const Tensor& a, const Tensor& b);
/// True when shapes match and |a - b| <= atol + rtol * |b| everywhere.
bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8);

/// Threads used by kern's loops and oneDNN (one OpenMP pool for both).
void set_num_threads(int n);
int get_num_threads();

}  // namespace kern

template <>
struct fmt::formatter<kern::Tensor> {
  constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
  fmt::format_context::iterator format(const kern::Tensor& t, format_context& ctx) const;
};
