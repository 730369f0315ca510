// Caching host allocator (see allocator.hpp).
#include "allocator.hpp"

#include <kern/memory.hpp>

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace kern::detail {

namespace {

constexpr std::size_t kCacheMin = 256 * 1024;               // smaller blocks: plain malloc
constexpr std::size_t kCacheLimit = std::size_t(2) << 30;  // cache at most 2 GiB of free blocks

std::size_t round_size(std::size_t n) {
  return n >= kCacheMin ? (n + 4095) / 4096 * 4096 : (n + 63) / 64 * 64;
}

struct Cache {
  std::mutex mu;
  std::unordered_map<std::size_t, std::vector<void*>> free_blocks;  // by rounded size
  std::size_t cached = 0;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: storages may be freed during static teardown
  return *c;
}

}  // namespace

void* host_alloc(std::size_t nbytes) {
  if (nbytes == 0) return nullptr;
  const std::size_t size = round_size(nbytes);
  if (size >= kCacheMin) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free_blocks.find(size);
    if (it != c.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.cached -= size;
      return p;
    }
  }
  return std::aligned_alloc(64, size);
}

void host_free(void* p, std::size_t nbytes) {
  if (!p) return;
  const std::size_t size = round_size(nbytes);
  if (size >= kCacheMin) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.cached + size <= kCacheLimit) {
      c.free_blocks[size].push_back(p);
      c.cached += size;
      return;
    }
  }
  std::free(p);
}

void host_cache_clear() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& [size, blocks] : c.free_blocks)
    for (void* p : blocks) std::free(p);
  c.free_blocks.clear();
  c.cached = 0;
}

std::size_t host_cache_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.cached;
}

}  // namespace kern::detail

namespace kern::memory {
void empty_cache() { detail::host_cache_clear(); }
std::size_t cached_bytes() { return detail::host_cache_bytes(); }
}  // namespace kern::memory
