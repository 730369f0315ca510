#pragma once
// Memory of one call, sampled by a polling thread (every ~20 us) while it runs, above the
// state just before it (with kern's allocator cache emptied first):
//   live_mb:        resident memory minus the allocator's cached free blocks: the call's
//                   live working set;
//   rss_growth_mb:  resident memory, cache included (kern's allocator keeps freed blocks
//                   by exact size, so this counts every distinct buffer size ever held).
// Used by the NTK workloads (wl_ntk.cpp, wl_zoo.cpp).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <thread>

namespace kern::detail {  // kern's caching host allocator (framework/tensor/allocator.hpp)
void host_cache_clear();
std::size_t host_cache_bytes();
}  // namespace kern::detail

namespace kern::bench {

/// Resident set size of this process now, from /proc/self/statm (0 if unreadable).
inline double rss_mb() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0.0;
  if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  std::fclose(f);
  return resident * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

struct MemoryPeak {
  double rss_growth_mb = 0;  // resident memory above the baseline
  double live_mb = 0;        // the same minus kern's cached free blocks
};

/// Peaks while fn runs, above the state just before it (with an empty allocator cache).
template <class F>
MemoryPeak memory_peak(F&& fn) {
  detail::host_cache_clear();
  const double base = rss_mb();
  std::atomic<bool> done{false};
  MemoryPeak peak;
  std::thread poll([&] {
    while (!done.load()) {
      const double r = rss_mb() - base;
      const double live = r - detail::host_cache_bytes() / (1024.0 * 1024.0);
      peak.rss_growth_mb = std::max(peak.rss_growth_mb, r);
      peak.live_mb = std::max(peak.live_mb, live);
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  });
  fn();
  done.store(true);
  poll.join();
  return peak;
}

}  // namespace kern::bench
