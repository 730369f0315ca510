// Tensor factories: constant fills, ranges and seeded random tensors.
#include <kern/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "../ops/kernel_utils.hpp"

namespace kern {

Tensor empty(const Shape& shape, DType dtype) {
  for (auto s : shape) KERN_CHECK(s >= 0, "empty: negative size in shape ", shape);
  // Checked before anything is allocated: the element count, the byte size and the strides
  // must all fit in int64 (a wrapped-around count would give a too-small buffer).
  KERN_CHECK(shape.checked_numel().has_value(), "empty: shape ", shape,
             " has more elements than int64 can count");
  const int64_t nbytes = checked_nbytes(shape, static_cast<int64_t>(dtype_size(dtype)), "empty");
  auto strides = contiguous_strides(shape);
  auto i = std::make_shared<TensorImpl>();
  i->storage = Storage::allocate(static_cast<std::size_t>(nbytes));
  i->shape = shape;
  i->strides = std::move(strides);
  i->dtype = dtype;
  return Tensor(i);
}

Tensor full(const Shape& shape, double value, DType dtype) {
  KERN_CHECK(dtype != DType::Int64 || fits_int64(value), "full: cannot fill an int64 tensor with ",
             value);
  Tensor t = empty(shape, dtype);
  if (!is_compute_dtype(dtype)) return t.fill_(value);  // storage dtypes: converted as to() does
  detail::dispatch_all(dtype, "full", [&]<typename T>() {
    std::fill_n(static_cast<T*>(t.raw_data()), t.numel(), static_cast<T>(value));
  });
  return t;
}

Tensor zeros(const Shape& shape, DType dtype) { return full(shape, 0.0, dtype); }
Tensor ones(const Shape& shape, DType dtype) { return full(shape, 1.0, dtype); }
Tensor scalar_tensor(double value, DType dtype) { return full(Shape{}, value, dtype); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.dtype()); }
Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.dtype()); }

Tensor arange(double start, double end, double step, DType dtype) {
  // Every bound is checked before the float -> int64 conversion of the length (converting
  // NaN, Inf or a value past 2^63 is undefined behaviour in C++).
  KERN_CHECK(std::isfinite(start) && std::isfinite(end) && std::isfinite(step), "arange: start ",
             start, ", end ", end, " and step ", step, " must be finite");
  KERN_CHECK(step != 0, "arange: step must be nonzero");
  const double len = std::ceil((end - start) / step);  // may be Inf when end - start overflows
  KERN_CHECK(len < 0x1p62, "arange: [", start, ", ", end, ") with step ", step, " has ", len,
             " elements, too many to allocate");
  const int64_t n = len > 0 ? static_cast<int64_t>(len) : 0;
  KERN_CHECK(is_floating(dtype) || n == 0 || (fits_int64(start) && fits_int64(start + (n - 1) * step)),
             "arange: values from ", start, " to ", start + (n - 1) * step, " do not fit int64");
  if (!is_compute_dtype(dtype)) return arange(start, end, step, DType::Float64).to(dtype);
  Tensor t = empty({n}, dtype);
  detail::dispatch_all(dtype, "arange", [&]<typename T>() {
    T* p = static_cast<T*>(t.raw_data());
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(start + i * step);
  });
  return t;
}

Tensor arange(int64_t end, DType dtype) { return arange(0.0, static_cast<double>(end), 1.0, dtype); }

Tensor eye(int64_t n, DType dtype) {
  if (!is_compute_dtype(dtype)) return eye(n, DType::Float64).to(dtype);
  Tensor t = zeros({n, n}, dtype);
  detail::dispatch_all(dtype, "eye", [&]<typename T>() {
    T* p = static_cast<T*>(t.raw_data());
    for (int64_t i = 0; i < n; ++i) p[i * n + i] = T(1);
  });
  return t;
}

Tensor rand(const Shape& shape, DType dtype, Generator* gen, double low, double high) {
  Generator& g = gen ? *gen : default_generator();
  Tensor t = empty(shape, dtype);
  detail::dispatch_float(dtype, "rand", [&]<typename T>() {
    T* p = static_cast<T*>(t.raw_data());
    const int64_t n = t.numel();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(low + (high - low) * g.uniform());
  });
  return t;
}

Tensor randn(const Shape& shape, DType dtype, Generator* gen) {
  Generator& g = gen ? *gen : default_generator();
  Tensor t = empty(shape, dtype);
  detail::dispatch_float(dtype, "randn", [&]<typename T>() {
    T* p = static_cast<T*>(t.raw_data());
    const int64_t n = t.numel();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(g.normal());
  });
  return t;
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator* gen) {
  KERN_CHECK(high > low, "randint: empty range [", low, ", ", high, ")");
  Generator& g = gen ? *gen : default_generator();
  Tensor t = empty(shape, DType::Int64);
  int64_t* p = t.data_ptr<int64_t>();
  const uint64_t range = static_cast<uint64_t>(high - low);
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = low + static_cast<int64_t>(g.next_u64() % range);
  return t;
}

Tensor randperm(int64_t n, Generator* gen) {
  Generator& g = gen ? *gen : default_generator();
  Tensor t = arange(n, DType::Int64);
  int64_t* p = t.data_ptr<int64_t>();
  // Fisher-Yates, sequential: the same permutation for the same seed on any thread count.
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[g.next_u64() % static_cast<uint64_t>(i + 1)]);
  return t;
}

template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
  KERN_CHECK(static_cast<int64_t>(values.size()) == shape.numel(), "from_vector: ", values.size(),
             " values do not fill shape ", shape);
  Tensor t = empty(shape, dtype_of<T>());
  std::copy(values.begin(), values.end(), static_cast<T*>(t.raw_data()));
  return t;
}
template Tensor from_vector<float>(const std::vector<float>&, const Shape&);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, const Shape&);
template Tensor from_vector<bf16>(const std::vector<bf16>&, const Shape&);
template Tensor from_vector<f16>(const std::vector<f16>&, const Shape&);
template Tensor from_vector<int32_t>(const std::vector<int32_t>&, const Shape&);
template Tensor from_vector<int16_t>(const std::vector<int16_t>&, const Shape&);
template Tensor from_vector<int8_t>(const std::vector<int8_t>&, const Shape&);
template Tensor from_vector<uint8_t>(const std::vector<uint8_t>&, const Shape&);

Tensor tensor(std::initializer_list<double> values, DType dtype) {
  return from_vector(std::vector<double>(values), {static_cast<int64_t>(values.size())}).to(dtype);
}

}  // namespace kern
