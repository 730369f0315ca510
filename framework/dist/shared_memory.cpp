// kern::dist's node shared memory: all_reduce_async's window (copy in, sum, copy out) and
// ReduceBuffers (DDP's buckets summed in place), both MPI shared-memory windows over the node
// communicator. See kern/dist/dist.hpp for the contract, dist.cpp for the MPI front end.
#include <kern/dist/dist.hpp>

#include <mpi.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dist_internal.hpp"

namespace kern::dist {

using detail::check_mpi;
using detail::comm;
using detail::mpi_type;

// ---- node shared memory: all_reduce_async's reduction when every rank runs on one node.
// (Synchronous: with one thread per rank nothing could run beside it anyway.)
// One window, a segment of `cap` bytes per rank. A sum: each rank copies its tensor into its
// segment; barrier; rank r sums part r of every segment (in rank order, so every rank gets
// the same bits) into its own segment; barrier; every rank copies the n parts out; barrier.
namespace {
struct Shm {
  bool usable = false;
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Win win = MPI_WIN_NULL;
  std::vector<char*> seg;  // every rank's segment, in this process's address space
  size_t cap = 0;          // bytes per segment
};
Shm g_shm;

void shm_free_window() {
  if (g_shm.win == MPI_WIN_NULL) return;
  MPI_Win_unlock_all(g_shm.win);
  MPI_Win_free(&g_shm.win);
  g_shm.seg.clear();
  g_shm.cap = 0;
}

void shm_teardown_window() {
  shm_free_window();
  if (g_shm.node != MPI_COMM_NULL) MPI_Comm_free(&g_shm.node);
  g_shm = Shm{};
}

// Free bytes in /dev/shm, where OpenMPI backs a shared window with a file (-1: unknown).
double dev_shm_free() {
  struct statvfs fs {};
  if (statvfs("/dev/shm", &fs) != 0) return -1;
  return static_cast<double>(fs.f_bavail) * static_cast<double>(fs.f_frsize);
}

// What the room check believes: KERN_DIST_SHM_FREE=<bytes> replaces dev_shm_free() (tests:
// "too small" on some ranks).
double shm_free_bytes() {
  if (const char* v = std::getenv("KERN_DIST_SHM_FREE")) return std::strtod(v, nullptr);
  return dev_shm_free();
}

// This rank's view: is there room in /dev/shm for a window of `bytes` per rank over n ranks,
// after `reclaimed` bytes (a window freed first) come back? Without room for every rank's
// segment (a container's 64 MB default), MPI_Win_allocate_shared fails (MPI_ERR_INTERN, seen
// with a 12 MB /dev/shm and mlp_train's 7.4 MB bucket); 1.25x leaves room for OpenMPI's own
// segments. Unknown free space counts as room. Not collective: the callers take the minimum
// over the ranks, so that every rank takes the same branch.
bool shm_room(size_t bytes, int n, size_t reclaimed = 0) {
  const double avail = shm_free_bytes();
  return avail < 0 || avail + static_cast<double>(reclaimed) >= 1.25 * static_cast<double>(bytes) * n;
}

// Collective over the node: a shared window of `bytes` per rank, locked for the loads and stores
// of every rank; returns every rank's segment (this rank's among them).
std::vector<char*> allocate_node_window(size_t bytes, MPI_Win* win) {
  void* mine = nullptr;
  const int rc = MPI_Win_allocate_shared(static_cast<MPI_Aint>(bytes), 64, MPI_INFO_NULL, g_shm.node, &mine, win);
  if (rc != MPI_SUCCESS) {  // the room check passed, yet it failed (/dev/shm filled meanwhile?)
    const double avail = dev_shm_free();
    check_mpi(rc, fmt::format("MPI_Win_allocate_shared ({} bytes per rank; /dev/shm, where OpenMPI puts the "
                              "window, has {} bytes free; KERN_DIST_SHM=0 avoids shared memory)",
                              bytes, avail < 0 ? std::string("?") : fmt::format("{:.0f}", avail))
                      .c_str());
  }
  int n = 0;
  MPI_Comm_size(g_shm.node, &n);
  std::vector<char*> seg(static_cast<size_t>(n));
  for (int k = 0; k < n; ++k) {
    MPI_Aint size = 0;
    int disp = 0;
    check_mpi(MPI_Win_shared_query(*win, k, &size, &disp, &seg[static_cast<size_t>(k)]), "MPI_Win_shared_query");
  }
  check_mpi(MPI_Win_lock_all(MPI_MODE_NOCHECK, *win), "MPI_Win_lock_all");
  return seg;
}

// Collective over the node: every rank's stores to `win` so far are visible to every rank.
void window_barrier(MPI_Win win) {
  MPI_Win_sync(win);
  check_mpi(MPI_Barrier(g_shm.node), "MPI_Barrier");
  MPI_Win_sync(win);
}

// all_reduce_async's window grows to `bytes` per rank, but starts at 1 MiB.
size_t window_cap(size_t bytes) { return std::max(bytes, size_t(1) << 20); }

int node_size() {
  int n = 0;
  check_mpi(MPI_Comm_size(g_shm.node, &n), "MPI_Comm_size");
  return n;
}

}  // namespace

// This rank's view of shm_reserve's room check (the window, freed first, gives its bytes back).
bool detail::async_window_room(size_t bytes) {
  (void)comm();  // throws without an Environment
  if (bytes <= g_shm.cap) return true;
  const int n = node_size();
  return shm_room(window_cap(bytes), n, g_shm.cap * static_cast<size_t>(n));
}

namespace {

// Collective over the node: grows the window to hold `bytes` per rank (every rank asks for the
// same size, since every rank starts the same reductions in the same order), or returns false
// on every rank when some rank sees too little room in /dev/shm (the window is then kept as it
// is, for smaller sums). The decision is an all-reduce over the node, so every rank takes the
// same branch (a rank deciding alone would sum through the window while another waits in
// MPI_Iallreduce: a hang). Reached on every rank or none (all_reduce_async's shared-memory path
// depends only on shm_usable() and the dtype, the same everywhere), never after teardown.
bool shm_reserve(size_t bytes) {
  if (bytes <= g_shm.cap) return true;
  int ok = detail::async_window_room(bytes) ? 1 : 0;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, g_shm.node), "MPI_Allreduce");
  if (!ok) return false;
  const size_t cap = window_cap(bytes);
  shm_free_window();
  g_shm.seg = allocate_node_window(cap, &g_shm.win);
  g_shm.cap = cap;
  return true;
}

void shm_sync() { window_barrier(g_shm.win); }

}  // namespace

// t (contiguous float32/float64) = the sum of t over the ranks; false (on every rank, t
// untouched) when the window cannot grow to t.
bool detail::shm_sum(Tensor& t) {
  const int64_t numel = t.numel();
  if (numel == 0) return true;
  const size_t elem = dtype_size(t.dtype());
  if (!shm_reserve(static_cast<size_t>(numel) * elem)) return false;
  int n = 0, r = 0;
  MPI_Comm_size(g_shm.node, &n);
  MPI_Comm_rank(g_shm.node, &r);
  std::memcpy(g_shm.seg[static_cast<size_t>(r)], t.raw_data(), static_cast<size_t>(numel) * elem);
  shm_sync();
  auto part = [&](int k) { return std::pair<int64_t, int64_t>{numel * k / n, numel * (k + 1) / n}; };
  auto reduce = [&]<typename T>() {
    const auto [lo, hi] = part(r);
    T* out = reinterpret_cast<T*>(g_shm.seg[static_cast<size_t>(r)]);
    // in rank order: out = seg 0 + seg 1 + ...; out is this rank's own segment, each element
    // read before it is written
    std::vector<const T*> ins(static_cast<size_t>(n));
    for (int k = 0; k < n; ++k) ins[static_cast<size_t>(k)] = reinterpret_cast<const T*>(g_shm.seg[static_cast<size_t>(k)]);
    for (int64_t i = lo; i < hi; ++i) {
      T acc = ins[0][i];
      for (int k = 1; k < n; ++k) acc += ins[static_cast<size_t>(k)][i];
      out[i] = acc;
    }
  };
  if (t.dtype() == DType::Float64) reduce.template operator()<double>();
  else reduce.template operator()<float>();
  shm_sync();
  char* dst = static_cast<char*>(t.raw_data());
  for (int k = 0; k < n; ++k) {
    const auto [lo, hi] = part(k);
    std::memcpy(dst + lo * elem, g_shm.seg[static_cast<size_t>(k)] + lo * elem, static_cast<size_t>(hi - lo) * elem);
  }
  shm_sync();  // nobody rewrites its segment while another still copies from it
  return true;
}

// ---- ReduceBuffers (see dist.hpp): one node-shared window per ReduceBuffers, kept in a
// registry that is identical on every rank (windows are made and freed collectively). A
// window is retired on a rank when the last tensor viewing it is gone there; the next
// ReduceBuffers construction frees the windows every rank has retired, the end of the
// Environment frees them all. (A destructor cannot free it: MPI_Win_free is collective, and a
// rank unwinding an exception must not block in it while the others wait elsewhere.)
namespace {
struct BufferWindow {
  uint64_t id = 0;
  MPI_Win win = MPI_WIN_NULL;
};
// never destroyed: a tensor viewing a buffer may outlive static destruction's order
std::vector<BufferWindow>& g_buffer_windows = *new std::vector<BufferWindow>;  // live, in creation order
std::vector<uint64_t>& g_retired = *new std::vector<uint64_t>;  // ids no tensor of this rank views any more
uint64_t g_next_window = 0;

// Owned by ReduceBuffers and by every buffer's storage.
struct WindowRef {
  uint64_t id = 0;
  ~WindowRef() {
    for (auto& w : g_buffer_windows)
      if (w.id == id) g_retired.push_back(id);  // not found: already freed with the Environment
  }
};

void free_window(MPI_Win& win) {
  MPI_Win_unlock_all(win);
  MPI_Win_free(&win);
}

// Collective over kern's communicator.
void free_retired_windows() {
  if (g_buffer_windows.empty()) return;
  std::vector<int> retired(g_buffer_windows.size());
  for (size_t k = 0; k < retired.size(); ++k)
    retired[k] = std::find(g_retired.begin(), g_retired.end(), g_buffer_windows[k].id) != g_retired.end();
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, retired.data(), static_cast<int>(retired.size()), MPI_INT, MPI_MIN, comm()),
            "MPI_Allreduce");
  std::vector<BufferWindow> live;
  for (size_t k = 0; k < retired.size(); ++k) {
    BufferWindow& w = g_buffer_windows[k];
    if (!retired[k]) {
      live.push_back(w);
      continue;
    }
    free_window(w.win);
    g_retired.erase(std::find(g_retired.begin(), g_retired.end(), w.id));
  }
  g_buffer_windows = std::move(live);
}

void free_all_buffer_windows() {
  for (auto& w : g_buffer_windows) free_window(w.win);
  g_buffer_windows.clear();
  g_retired.clear();
}
}  // namespace

namespace detail {

void shm_probe() {
  const char* env = std::getenv("KERN_DIST_SHM");
  const bool wanted = !(env && std::string(env) == "0");
  check_mpi(MPI_Comm_split_type(comm(), MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &g_shm.node),
            "MPI_Comm_split_type");
  int on_node = 0, world = 0;
  MPI_Comm_size(g_shm.node, &on_node);
  MPI_Comm_size(comm(), &world);
  int ok = wanted && on_node == world ? 1 : 0, all = 0;
  check_mpi(MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm()), "MPI_Allreduce");
  g_shm.usable = all == 1;
}

bool shm_usable() { return g_shm.usable; }

void shm_teardown() {
  free_all_buffer_windows();
  shm_teardown_window();
}

}  // namespace detail

struct ReduceBuffers::State {
  std::vector<Tensor> buffers;
  bool shm = false;
  // shared memory
  MPI_Win win = MPI_WIN_NULL;
  std::vector<std::vector<char*>> bases;  // [buffer][node rank]: that rank's buffer in this address space
  std::shared_ptr<WindowRef> ref;
  bool unsynced = false;  // a sum was written since the last barrier
  // MPI
  std::vector<MPI_Request> requests;  // per buffer, MPI_REQUEST_NULL when idle
  std::vector<char> started;          // per buffer, since the last finish()
};

size_t reduce_buffer_windows() { return g_buffer_windows.size(); }

namespace {
// ReduceBuffers' window: the buffers at 64-byte-aligned offsets of every rank's segment.
// Returns the segment's bytes; offset[b] = buffer b's offset.
size_t window_layout(const std::vector<std::pair<int64_t, DType>>& layout, std::vector<size_t>* offset) {
  size_t total = 0;
  for (auto& [numel, dt] : layout) {
    if (offset) offset->push_back(total);
    total += (static_cast<size_t>(numel) * dtype_size(dt) + 63) / 64 * 64;
  }
  return total;
}
}  // namespace

// This rank's view of the constructor's room check.
bool detail::reduce_buffers_room(const std::vector<std::pair<int64_t, DType>>& layout) {
  (void)comm();  // throws without an Environment
  return shm_room(window_layout(layout, nullptr), node_size());
}

ReduceBuffers::ReduceBuffers(const std::vector<std::pair<int64_t, DType>>& layout, bool allow_shared_memory)
    : s_(std::make_unique<State>()) {
  std::string desc;
  for (auto& [numel, dt] : layout) desc += fmt::format("{} {}; ", dt, numel);
  check_same_on_all_ranks("dist::ReduceBuffers: the buffers (numel and dtype) differ across ranks", desc);
  // the same layout on every rank from here: the same error on every rank
  for (size_t b = 0; b < layout.size(); ++b) {
    const auto [numel, dt] = layout[b];
    KERN_CHECK(dt == DType::Float32 || dt == DType::Float64, "dist::ReduceBuffers: buffer ", b, ": dtype ", dt,
               " is not supported (float32, float64)");
    KERN_CHECK(numel >= 0 && numel <= std::numeric_limits<int>::max(), "dist::ReduceBuffers: buffer ", b, ": ", dt,
               " [", numel, "] has ", numel < 0 ? "a negative size" : "more elements than MPI_Iallreduce takes",
               " (0 to 2^31 - 1); use more, smaller buffers");
  }
  free_retired_windows();
  std::vector<size_t> offset;
  const size_t total = window_layout(layout, &offset);
  const char* env = std::getenv("KERN_DIST_SHM");
  int ok = g_shm.usable && allow_shared_memory && !(env && std::string(env) == "0") ? 1 : 0;
  const int n = node_size();
  if (ok && !detail::reduce_buffers_room(layout)) ok = 0;  // too little room in /dev/shm: MPI_Iallreduce
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, comm()), "MPI_Allreduce");
  s_->shm = ok == 1;
  s_->started.assign(layout.size(), 0);
  if (!s_->shm) {
    for (auto& [numel, dt] : layout) s_->buffers.push_back(zeros({numel}, dt));
    s_->requests.assign(layout.size(), MPI_REQUEST_NULL);
    return;
  }
  const std::vector<char*> seg = allocate_node_window(std::max<size_t>(total, 64), &s_->win);
  int me = 0;
  MPI_Comm_rank(g_shm.node, &me);
  char* mine = seg[static_cast<size_t>(me)];
  s_->ref = std::make_shared<WindowRef>();
  s_->ref->id = g_next_window++;
  g_buffer_windows.push_back({s_->ref->id, s_->win});
  for (size_t b = 0; b < layout.size(); ++b) {
    const auto [numel, dt] = layout[b];
    auto storage = std::make_shared<Storage>();
    storage->data = mine + offset[b];
    storage->nbytes = static_cast<size_t>(numel) * dtype_size(dt);
    storage->keepalive = s_->ref;
    std::memset(storage->data, 0, storage->nbytes);
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = std::move(storage);
    impl->shape = Shape{numel};
    impl->strides = {1};
    impl->dtype = dt;
    s_->buffers.emplace_back(std::move(impl));
    s_->bases.emplace_back();
    for (int k = 0; k < n; ++k) s_->bases.back().push_back(seg[static_cast<size_t>(k)] + offset[b]);
  }
  window_barrier(s_->win);  // every rank's zeros are in place before anyone starts a sum
}

ReduceBuffers::~ReduceBuffers() = default;

size_t ReduceBuffers::size() const { return s_->buffers.size(); }

const Tensor& ReduceBuffers::buffer(size_t i) const {
  KERN_CHECK(i < s_->buffers.size(), "dist::ReduceBuffers::buffer: index ", i, " out of range (", s_->buffers.size(),
             " buffers)");
  return s_->buffers[i];
}

bool ReduceBuffers::shared_memory() const { return s_->shm; }

void ReduceBuffers::start(size_t i) {
  KERN_CHECK(i < s_->buffers.size(), "dist::ReduceBuffers::start: index ", i, " out of range (", s_->buffers.size(),
             " buffers)");
  KERN_CHECK(!s_->started[i], "dist::ReduceBuffers::start: buffer ", i, " was started twice before finish()");
  s_->started[i] = 1;
  Tensor& t = s_->buffers[i];
  if (!s_->shm) {
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, t.raw_data(), static_cast<int>(t.numel()),
                             mpi_type(t.dtype(), "ReduceBuffers::start"), MPI_SUM, comm(), &s_->requests[i]),
              "MPI_Iallreduce");
    return;
  }
  // every rank's buffer i is written (and the previous sums' readers are done: finish())
  window_barrier(s_->win);
  s_->unsynced = true;
  const int n = static_cast<int>(s_->bases[i].size());
  int r = 0;
  MPI_Comm_rank(g_shm.node, &r);
  const int64_t numel = t.numel(), lo = numel * r / n, hi = numel * (r + 1) / n;
  auto sum = [&]<typename T>() {
    std::vector<T*> p(static_cast<size_t>(n));
    for (int k = 0; k < n; ++k) p[static_cast<size_t>(k)] = reinterpret_cast<T*>(s_->bases[i][static_cast<size_t>(k)]);
    if (n == 2) {  // the common case, vectorized: two distinct buffers
      T* __restrict a = p[0];
      T* __restrict b = p[1];
      for (int64_t j = lo; j < hi; ++j) b[j] = a[j] = a[j] + b[j];
      return;
    }
    for (int64_t j = lo; j < hi; ++j) {
      T acc = p[0][j];
      for (int k = 1; k < n; ++k) acc += p[static_cast<size_t>(k)][j];
      for (int k = 0; k < n; ++k) p[static_cast<size_t>(k)][j] = acc;
    }
  };
  if (t.dtype() == DType::Float64) sum.template operator()<double>();
  else sum.template operator()<float>();
}

void ReduceBuffers::progress() {
  if (s_->shm) return;
  for (auto& req : s_->requests) {
    if (req == MPI_REQUEST_NULL) continue;
    int done = 0;
    check_mpi(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
  }
}

void ReduceBuffers::finish() {
  if (s_->shm) {
    if (s_->unsynced) {  // every rank's part of every started sum is written
      window_barrier(s_->win);
      s_->unsynced = false;
    }
  } else {
    check_mpi(MPI_Waitall(static_cast<int>(s_->requests.size()), s_->requests.data(), MPI_STATUSES_IGNORE),
              "MPI_Waitall");
  }
  for (size_t i = 0; i < s_->started.size(); ++i)
    if (s_->started[i]) s_->buffers[i].bump_version();
  std::fill(s_->started.begin(), s_->started.end(), 0);
}

}  // namespace kern::dist
