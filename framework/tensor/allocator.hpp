#pragma once
#ifndef KERN_BUILDING_FRAMEWORK  // private to kern_core: see CMakeLists.txt (layering)
#error "framework/tensor/allocator.hpp is private to kern_core; include <kern/...> public headers instead"
#endif
// Internal: the host allocator behind Storage::allocate.
//
// Why a cache: a training step allocates and frees the same large activation and gradient
// buffers every iteration. Through malloc, buffers above the mmap threshold are mapped and
// unmapped each time, and every fresh page costs a page fault plus the kernel zeroing it
// (measured: ~10% of a ConvNeXt block step). Large blocks are therefore kept on free lists
// by exact (4 KiB-rounded) size and reused; small ones go straight to malloc.
#include <cstddef>

namespace kern::detail {

/// 64-byte-aligned memory of at least `nbytes` bytes (nullptr for 0).
void* host_alloc(std::size_t nbytes);
/// Returns memory from host_alloc (the same nbytes).
void host_free(void* p, std::size_t nbytes);
/// Frees every cached block (tests; memory pressure).
void host_cache_clear();
/// Bytes currently held in the cache (not in use).
std::size_t host_cache_bytes();

}  // namespace kern::detail
