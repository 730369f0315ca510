// In-place gradient accumulation (see accumulate.hpp). A double backward through a ConvNeXt
// adds hundreds of activation-sized gradient contributions per Hessian-vector product; adding
// into the slot's own buffer saves an allocation and a write pass over fresh memory each.
#include "accumulate.hpp"

#include "kernel_utils.hpp"

#include <kern/forward_ad.hpp>

namespace kern::detail {

bool can_accumulate_in_place(const Tensor& dst, const Tensor& src) {
  if (!dst.defined() || !src.defined()) return false;
  const auto& impl = dst.impl_ptr();
  if (impl.use_count() != 1 || !impl->storage || impl->storage.use_count() != 1) return false;
  if (dst.requires_grad() || src.requires_grad() || dst.grad_fn() || src.grad_fn()) return false;
  if (dst.dtype() != src.dtype() || dst.shape() != src.shape() || !dst.is_contiguous()) return false;
  if (forward_ad::tangent(dst).defined() || forward_ad::tangent(src).defined()) return false;  // a dual's tangent must follow
  return dst.dtype() == DType::Float32 || dst.dtype() == DType::Float64;
}

void accumulate_in_place(Tensor& dst, const Tensor& src) {
  dispatch_float(dst.dtype(), "accumulate_in_place", [&]<typename T>() {
    T* d = static_cast<T*>(dst.raw_data());
    const T* s = static_cast<const T*>(src.raw_data());
    const int64_t n = dst.numel();
    if (src.is_contiguous()) {
#pragma omp parallel for simd schedule(static) if (n > (1 << 15))
      for (int64_t i = 0; i < n; ++i) d[i] += s[i];
      return;
    }
    StridedLoop<2> loop(dst.shape(), {contiguous_strides(dst.shape()), src.strides()});
    loop.run([&](const std::array<int64_t, 2>& off, int64_t m, const std::array<int64_t, 2>& st) {
      T* dd = d + off[0];
      const T* ss = s + off[1];
      if (st[0] == 1 && st[1] == 1) {
        for (int64_t i = 0; i < m; ++i) dd[i] += ss[i];
      } else {
        for (int64_t i = 0; i < m; ++i) dd[i * st[0]] += ss[i * st[1]];
      }
    });
  });
}

}  // namespace kern::detail
