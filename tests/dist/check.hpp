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

// Environment variable `name` = value while it lives (when `on`), then the previous value back.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value, bool on = true) : name_(name), on_(on) {
    if (!on_) return;
    if (const char* v = std::getenv(name_)) prev_ = v;
    setenv(name_, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (!on_) return;
    if (prev_) setenv(name_, prev_->c_str(), 1);
    else unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  bool on_;
  std::optional<std::string> prev_;
};
// KERN_DIST_SHM=0 (when `off`): the ReduceBuffers (DDP buckets) made meanwhile take MPI_Iallreduce.
struct ShmOff : ScopedEnv {
  explicit ShmOff(bool off = true) : ScopedEnv("KERN_DIST_SHM", "0", off) {}
};
// KERN_DIST_SHM_FREE=<bytes> (when `on`): the room check of the shared-memory windows
// (all_reduce_async's, ReduceBuffers') believes /dev/shm has that much free.
struct ShmFree : ScopedEnv {
  explicit ShmFree(const std::string& bytes, bool on = true) : ScopedEnv("KERN_DIST_SHM_FREE", bytes, on) {}
};
// KERN_DIST_MAX_COUNT=<n> (when `on`): all_reduce, broadcast and all_gather cut their MPI calls
// into pieces of n elements.
struct MaxCount : ScopedEnv {
  explicit MaxCount(const std::string& n, bool on = true) : ScopedEnv("KERN_DIST_MAX_COUNT", n, on) {}
};

// Shared memory expected by default: one node, and KERN_DIST_SHM is not 0 for the whole run.
inline bool shm_expected() {
  const char* v = std::getenv("KERN_DIST_SHM");
  return !(v && std::string(v) == "0");
}
// Shared memory expected for one window: by default (above), and `room` (this rank's
// dist::detail::async_window_room or reduce_buffers_room, the library's own rule) on every
// rank. A small /dev/shm (a container's 64 MB) legitimately falls back to MPI_Iallreduce.
// Collective.
inline bool shm_expected(bool room) {
  kern::Tensor without = kern::full({1}, room ? 0.0 : 1.0, kern::DType::Int64);
  kern::dist::all_reduce(without);
  return shm_expected() && without.to_vector<int64_t>()[0] == 0;
}

// name -> test; main() runs the ones named on the command line.
std::map<std::string, std::function<void()>>& registry();
struct Register {
  Register(const std::string& name, std::function<void()> fn) { registry()[name] = std::move(fn); }
};
