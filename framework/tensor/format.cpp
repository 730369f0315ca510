// fmt formatter for Tensor: a PyTorch-like summary (values, with ... past 6 per dim).
#include <kern/tensor.hpp>

#include <string>

#include "../ops/kernel_utils.hpp"

namespace {

using kern::Tensor;

void append_values(std::string& out, const std::vector<double>& v, const kern::Shape& shape,
                   size_t dim, int64_t base, int64_t stride_elems, bool integral) {
  out += '[';
  const int64_t n = shape[dim];
  const int64_t inner = stride_elems / std::max<int64_t>(n, 1);
  auto emit = [&](int64_t i) {
    if (dim + 1 == shape.size()) {
      out += integral ? fmt::format("{}", static_cast<int64_t>(v[base + i]))
                      : fmt::format("{:.4f}", v[base + i]);
    } else {
      append_values(out, v, shape, dim + 1, base + i * inner, inner, integral);
    }
  };
  for (int64_t i = 0; i < n; ++i) {
    if (n > 6 && i == 3) {
      out += "..., ";
      i = n - 3;
    }
    emit(i);
    if (i + 1 < n) out += ", ";
  }
  out += ']';
}

}  // namespace

fmt::format_context::iterator fmt::formatter<kern::Tensor>::format(const kern::Tensor& t,
                                                                   format_context& ctx) const {
  if (!t.defined()) return fmt::format_to(ctx.out(), "tensor(undefined)");
  std::string body;
  auto v = t.to_vector<double>();
  if (t.dim() == 0) {
    body = t.dtype() == kern::DType::Int64 ? fmt::format("{}", static_cast<int64_t>(v[0]))
                                           : fmt::format("{:.4f}", v[0]);
  } else {
    append_values(body, v, t.shape(), 0, 0, t.numel(), t.dtype() == kern::DType::Int64);
  }
  return fmt::format_to(ctx.out(), "tensor({}, shape={}, dtype={}{})", body, t.shape(), t.dtype(),
                        t.requires_grad() ? ", requires_grad" : "");
}
