#pragma once
#ifndef KERN_BUILDING_FRAMEWORK  // private to kern_core: see CMakeLists.txt (layering)
#error "framework/ops/accumulate.hpp is private to kern_core; include <kern/...> public headers instead"
#endif
// Internal: in-place gradient accumulation for the autograd engine (framework/autograd).
#include <kern/tensor.hpp>

namespace kern::detail {

/// True when `dst += src` may overwrite dst's buffer unobserved: dst is the only handle on
/// its TensorImpl and on its storage (no view, no saved copy, no other gradient slot shares
/// it), dense, and of src's shape and dtype, and neither tracks a graph or a forward tangent.
bool can_accumulate_in_place(const Tensor& dst, const Tensor& src);
/// dst += src elementwise (src may be strided); dst as accepted above. Not recorded.
void accumulate_in_place(Tensor& dst, const Tensor& src);

}  // namespace kern::detail
