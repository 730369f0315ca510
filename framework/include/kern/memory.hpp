#pragma once
// Host memory held by kern's caching allocator.
//
// Large tensor buffers (>= 256 KiB) are not returned to the system when freed: a training step
// frees and reallocates the same activation and gradient sizes every iteration, so kern keeps
// them on free lists (up to 2 GiB) and reuses them. This is the host analogue of
// torch.cuda.empty_cache()/memory_reserved(): call empty_cache() before measuring live memory
// or when another phase of a program needs the memory back.
#include <cstddef>

namespace kern::memory {

/// Returns every cached free block to the system. Tensors in use are not affected.
void empty_cache();

/// Bytes held in the cache: freed by tensors, kept for reuse, not yet returned to the system.
std::size_t cached_bytes();

}  // namespace kern::memory
