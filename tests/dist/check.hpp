#pragma once
// A minimal test harness for programs run under mpirun: CHECK failures end the whole job
// through dist::abort (naming the rank, file and line), so that a failing rank never leaves
// the other waiting in a collective. Catch2 is not used here: its REQUIRE unwinds one rank
// while the others block.
#include <kern/dist/dist.hpp>
#include <kern/kern.hpp>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <functional>
#include <map>
#include <string>

#define DCHECK(cond, ...)                                                                          \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      ::kern::dist::abort(::kern::detail::concat("CHECK failed at " __FILE__ ":", __LINE__, ": " #cond \
                                                 " ", ##__VA_ARGS__));                             \
  } while (0)

// Runs fn, which must throw a kern::Error whose message contains every string of `parts`.
inline void check_throws(const std::function<void()>& fn, std::initializer_list<std::string> parts,
                         const std::string& where) {
  try {
    fn();
  } catch (const kern::Error& e) {
    std::string what = e.what();
    for (auto& p : parts)
      if (what.find(p) == std::string::npos)
        kern::dist::abort(where + ": error message lacks '" + p + "': " + what);
    return;
  }
  kern::dist::abort(where + ": expected a kern::Error, nothing was thrown");
}
#define DCHECK_THROWS(expr, ...) \
  check_throws([&] { expr; }, {__VA_ARGS__}, std::string(__FILE__) + ":" + std::to_string(__LINE__))

inline double maxdiff(const kern::Tensor& a, const kern::Tensor& b) {
  kern::NoGradGuard ng;
  auto x = a.to(kern::DType::Float64).to_vector<double>();
  auto y = b.to(kern::DType::Float64).to_vector<double>();
  if (x.size() != y.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

// KERN_DIST_SHM=0 while it lives (when `off`), then the previous value back: the ReduceBuffers
// (DDP buckets) made meanwhile take MPI_Iallreduce.
class ShmOff {
 public:
  explicit ShmOff(bool off = true) : off_(off) {
    if (!off_) return;
    if (const char* v = std::getenv("KERN_DIST_SHM")) prev_ = v;
    setenv("KERN_DIST_SHM", "0", 1);
  }
  ~ShmOff() {
    if (!off_) return;
    if (prev_) setenv("KERN_DIST_SHM", prev_->c_str(), 1);
    else unsetenv("KERN_DIST_SHM");
  }
  ShmOff(const ShmOff&) = delete;
  ShmOff& operator=(const ShmOff&) = delete;

 private:
  bool off_;
  std::optional<std::string> prev_;
};
// KERN_DIST_SHM_FREE=<bytes> while it lives (when `on`), then the previous value back: the room
// check of the shared-memory windows (all_reduce_async's, ReduceBuffers') believes /dev/shm has
// that much free.
class ShmFree {
 public:
  ShmFree(const std::string& bytes, bool on = true) : on_(on) {
    if (!on_) return;
    if (const char* v = std::getenv("KERN_DIST_SHM_FREE")) prev_ = v;
    setenv("KERN_DIST_SHM_FREE", bytes.c_str(), 1);
  }
  ~ShmFree() {
    if (!on_) return;
    if (prev_) setenv("KERN_DIST_SHM_FREE", prev_->c_str(), 1);
    else unsetenv("KERN_DIST_SHM_FREE");
  }
  ShmFree(const ShmFree&) = delete;
  ShmFree& operator=(const ShmFree&) = delete;

 private:
  bool on_;
  std::optional<std::string> prev_;
};
// Shared memory expected by default: one node, and KERN_DIST_SHM is not 0 for the whole run.
inline bool shm_expected() {
  const char* v = std::getenv("KERN_DIST_SHM");
  return !(v && std::string(v) == "0");
}

// name -> test; main() runs the ones named on the command line.
std::map<std::string, std::function<void()>>& registry();
struct Register {
  Register(const std::string& name, std::function<void()> fn) { registry()[name] = std::move(fn); }
};
