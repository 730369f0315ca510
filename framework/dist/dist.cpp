// kern::dist over MPI: environment, checked collectives, async all-reduce, the abort path.
// See kern/dist/dist.hpp for the contract.
#include <kern/autograd.hpp>
#include <kern/dist/dist.hpp>
#include <kern/ops/shape_ops.hpp>

#include <mpi.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kern::dist {

namespace {
MPI_Comm g_comm = MPI_COMM_NULL;  // kern's duplicate of MPI_COMM_WORLD
int g_depth = 0;                  // live Environments

// MPI's return code -> kern::Error naming the call.
void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(fmt::format("dist: {} failed: {}", call, std::string(msg, len)));
}

MPI_Comm comm() {
  KERN_CHECK(g_comm != MPI_COMM_NULL,
             "dist: not initialized; create a kern::dist::Environment first (and run under mpirun)");
  return g_comm;
}

MPI_Datatype mpi_type(DType d, const char* op) {
  switch (d) {
    case DType::Float32: return MPI_FLOAT;
    case DType::Float64: return MPI_DOUBLE;
    case DType::Int64: return MPI_INT64_T;
    default: break;
  }
  throw Error(fmt::format("dist::{}: dtype {} is not supported (float32, float64, int64)", op, d));
}

std::string describe(DType d, const Shape& s) { return fmt::format("{} {}", d, s); }

// The agreement check every collective starts with: an all-gather of (dtype, ndim, dims).
constexpr int kMaxDims = 8;
void check_agree(const Tensor& t, const char* op) {
  KERN_CHECK(t.defined(), "dist::", op, ": undefined tensor");
  KERN_CHECK(t.dim() <= kMaxDims, "dist::", op, ": tensors of more than ", kMaxDims, " dims (got ",
             t.shape(), ")");
  int64_t header[kMaxDims + 2] = {};
  header[0] = static_cast<int64_t>(t.dtype());
  header[1] = t.dim();
  for (int64_t d = 0; d < t.dim(); ++d) header[2 + d] = t.size(d);
  const int n = world_size();
  std::vector<int64_t> all(static_cast<size_t>(n) * (kMaxDims + 2));
  check_mpi(MPI_Allgather(header, kMaxDims + 2, MPI_INT64_T, all.data(), kMaxDims + 2, MPI_INT64_T, comm()),
            "MPI_Allgather");
  bool same = true;
  for (int r = 1; r < n; ++r)
    for (int k = 0; k < kMaxDims + 2; ++k) same = same && all[r * (kMaxDims + 2) + k] == all[k];
  if (same) return;
  std::string list;
  for (int r = 0; r < n; ++r) {
    const int64_t* h = &all[r * (kMaxDims + 2)];
    Shape s;
    for (int64_t d = 0; d < h[1]; ++d) s.push_back(h[2 + d]);
    list += fmt::format("{}rank {} {}", r ? ", " : "", r, describe(static_cast<DType>(h[0]), s));
  }
  throw Error(fmt::format("dist::{}: tensors differ across ranks (shape and dtype must agree): {}", op, list));
}

// Runs `body` on a contiguous tensor holding t's values, then writes back into t if needed.
template <class F>
void on_contiguous(Tensor& t, F&& body) {
  NoGradGuard ng;
  Tensor c = t.is_contiguous() ? t : t.contiguous();
  body(c);
  if (!c.shares_storage(t) || !t.is_contiguous()) t.copy_(c);
  else t.bump_version();
}
}  // namespace

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

// Collective over kern's communicator (at environment start): is every rank on this node,
// and does no rank set KERN_DIST_SHM=0?
void shm_probe() {
  const char* env = std::getenv("KERN_DIST_SHM");
  const bool wanted = !(env && std::string(env) == "0");
  check_mpi(MPI_Comm_split_type(g_comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &g_shm.node),
            "MPI_Comm_split_type");
  int node_size = 0, world = 0;
  MPI_Comm_size(g_shm.node, &node_size);
  MPI_Comm_size(g_comm, &world);
  int ok = wanted && node_size == world ? 1 : 0, all = 0;
  check_mpi(MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, g_comm), "MPI_Allreduce");
  g_shm.usable = all == 1;
}

void shm_teardown() {
  shm_free_window();
  if (g_shm.node != MPI_COMM_NULL) MPI_Comm_free(&g_shm.node);
  g_shm = Shm{};
}

// Collective over the node: a shared window of `bytes` per rank, locked for the loads and stores
// of every rank; returns every rank's segment (this rank's among them).
std::vector<char*> allocate_node_window(size_t bytes, MPI_Win* win) {
  void* mine = nullptr;
  check_mpi(MPI_Win_allocate_shared(static_cast<MPI_Aint>(bytes), 64, MPI_INFO_NULL, g_shm.node, &mine, win),
            "MPI_Win_allocate_shared");
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

// Collective over the node: grows the window to hold `bytes` per rank (every rank asks for the
// same size, since every rank starts the same reductions in the same order).
void shm_reserve(size_t bytes) {
  if (bytes <= g_shm.cap) return;
  shm_free_window();
  const size_t cap = std::max(bytes, size_t(1) << 20);
  g_shm.seg = allocate_node_window(cap, &g_shm.win);
  g_shm.cap = cap;
}

void shm_sync() { window_barrier(g_shm.win); }

// t (contiguous float32/float64) = the sum of t over the ranks.
void shm_sum(Tensor& t) {
  const int64_t numel = t.numel();
  if (numel == 0) return;
  const size_t elem = dtype_size(t.dtype());
  shm_reserve(static_cast<size_t>(numel) * elem);
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
}
}  // namespace

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
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, retired.data(), static_cast<int>(retired.size()), MPI_INT, MPI_MIN, g_comm),
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

ReduceBuffers::ReduceBuffers(const std::vector<std::pair<int64_t, DType>>& layout, bool allow_shared_memory)
    : s_(std::make_unique<State>()) {
  std::string desc;
  for (auto& [numel, dt] : layout) {
    KERN_CHECK(numel >= 0 && numel <= std::numeric_limits<int>::max(),
               "dist::ReduceBuffers: a buffer of ", numel, " elements (0 to 2^31 - 1)");
    KERN_CHECK(dt == DType::Float32 || dt == DType::Float64, "dist::ReduceBuffers: dtype ", dt,
               " is not supported (float32, float64)");
    desc += fmt::format("{} {}; ", dt, numel);
  }
  check_same_on_all_ranks("dist::ReduceBuffers: the buffers (numel and dtype) differ across ranks", desc);
  free_retired_windows();
  // one window, the buffers at 64-byte-aligned offsets of every rank's segment
  std::vector<size_t> offset;
  size_t total = 0;
  for (auto& [numel, dt] : layout) {
    offset.push_back(total);
    total += (static_cast<size_t>(numel) * dtype_size(dt) + 63) / 64 * 64;
  }
  const char* env = std::getenv("KERN_DIST_SHM");
  int ok = g_shm.usable && allow_shared_memory && !(env && std::string(env) == "0") ? 1 : 0;
  int n = 0;
  if (ok) MPI_Comm_size(g_shm.node, &n);
  // OpenMPI backs the window with a file in /dev/shm: without room there for every rank's
  // segment (a container's 64 MB default), MPI_Win_allocate_shared fails (MPI_ERR_INTERN, seen
  // with a 12 MB /dev/shm and mlp_train's 7.4 MB bucket); take MPI_Iallreduce then.
  struct statvfs fs {};
  if (ok && statvfs("/dev/shm", &fs) == 0 &&
      static_cast<double>(fs.f_bavail) * static_cast<double>(fs.f_frsize) < 1.25 * static_cast<double>(total) * n)
    ok = 0;
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

namespace {
// MPI_Init_thread unless MPI is already up (true when this call initialized it); the first
// live Environment also makes kern's communicator.
bool start_environment(int* argc, char*** argv) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    int provided = 0;
    check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  }
  if (g_depth++ == 0) {
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &g_comm), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(g_comm, MPI_ERRORS_RETURN);
    shm_probe();
  }
  return !inited;
}
}  // namespace

Environment::Environment() : owns_(start_environment(nullptr, nullptr)), uncaught_(std::uncaught_exceptions()) {}

Environment::Environment(int& argc, char**& argv)
    : owns_(start_environment(&argc, &argv)), uncaught_(std::uncaught_exceptions()) {}

Environment::~Environment() {
  if (std::uncaught_exceptions() > uncaught_)
    abort("an exception left the scope of kern::dist::Environment (use dist::run_or_abort to see its message)");
  if (--g_depth == 0 && g_comm != MPI_COMM_NULL) {
    free_all_buffer_windows();
    shm_teardown();
    MPI_Comm_free(&g_comm);
  }
  if (owns_) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
}

bool is_initialized() { return g_comm != MPI_COMM_NULL; }

int rank() {
  int r = 0;
  check_mpi(MPI_Comm_rank(comm(), &r), "MPI_Comm_rank");
  return r;
}

int world_size() {
  int n = 0;
  check_mpi(MPI_Comm_size(comm(), &n), "MPI_Comm_size");
  return n;
}

void all_reduce(Tensor& t, ReduceOp op) {
  check_agree(t, "all_reduce");
  MPI_Datatype type = mpi_type(t.dtype(), "all_reduce");
  KERN_CHECK(op == ReduceOp::Sum || is_floating(t.dtype()), "dist::all_reduce: Mean of a ", t.dtype(),
             " tensor; use Sum (integer division would truncate)");
  on_contiguous(t, [&](Tensor& c) {
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, c.raw_data(), static_cast<int>(c.numel()), type, MPI_SUM, comm()),
              "MPI_Allreduce");
    if (op == ReduceOp::Mean) c.copy_(c / static_cast<double>(world_size()));
  });
}

void broadcast(Tensor& t, int root) {
  KERN_CHECK(root >= 0 && root < world_size(), "dist::broadcast: root ", root, " is not a rank (world size ",
             world_size(), ")");
  check_agree(t, "broadcast");
  MPI_Datatype type = mpi_type(t.dtype(), "broadcast");
  on_contiguous(t, [&](Tensor& c) {
    check_mpi(MPI_Bcast(c.raw_data(), static_cast<int>(c.numel()), type, root, comm()), "MPI_Bcast");
  });
}

std::vector<Tensor> all_gather(const Tensor& t) {
  check_agree(t, "all_gather");
  MPI_Datatype type = mpi_type(t.dtype(), "all_gather");
  NoGradGuard ng;
  Tensor c = t.contiguous();
  const int n = world_size();
  Shape s = t.shape();
  s.insert(s.begin(), n);
  Tensor out = empty(s, t.dtype());
  check_mpi(MPI_Allgather(c.raw_data(), static_cast<int>(c.numel()), type, out.raw_data(),
                          static_cast<int>(c.numel()), type, comm()),
            "MPI_Allgather");
  std::vector<Tensor> parts;
  for (int r = 0; r < n; ++r) parts.push_back(select(out, 0, r));
  return parts;
}

void barrier() { check_mpi(MPI_Barrier(comm()), "MPI_Barrier"); }

void check_same_on_all_ranks(const std::string& context, const std::string& what) {
  // lengths first, then the bytes from every rank
  const int n = world_size();
  int len = static_cast<int>(what.size());
  std::vector<int> lens(n);
  check_mpi(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm()), "MPI_Allgather");
  std::vector<int> offsets(n, 0);
  for (int r = 1; r < n; ++r) offsets[r] = offsets[r - 1] + lens[r - 1];
  std::string all(static_cast<size_t>(offsets[n - 1] + lens[n - 1]), '\0');
  check_mpi(MPI_Allgatherv(what.data(), len, MPI_CHAR, all.data(), lens.data(), offsets.data(), MPI_CHAR, comm()),
            "MPI_Allgatherv");
  for (int r = 1; r < n; ++r) {
    std::string other = all.substr(offsets[r], lens[r]);
    if (other != all.substr(0, lens[0]))
      throw Error(fmt::format("{}: rank {} differs from rank 0:\n  rank 0: {}\n  rank {}: {}", context, r,
                              all.substr(0, lens[0]), r, other));
  }
}

// ---- async

Work::Work(Work&& o) noexcept : request_(o.request_), tensor_(std::move(o.tensor_)) { o.request_ = nullptr; }
Work& Work::operator=(Work&& o) noexcept {
  if (this != &o) {
    if (request_) delete static_cast<MPI_Request*>(request_);  // an un-waited request is abandoned
    request_ = o.request_;
    tensor_ = std::move(o.tensor_);
    o.request_ = nullptr;
  }
  return *this;
}
Work::~Work() {
  // Waiting here could block forever if another rank failed; the abort path ends the job.
  if (request_) delete static_cast<MPI_Request*>(request_);
}
void Work::wait() {
  if (!request_) return;
  auto* req = static_cast<MPI_Request*>(request_);
  int rc = MPI_Wait(req, MPI_STATUS_IGNORE);
  delete req;
  request_ = nullptr;
  tensor_.bump_version();
  tensor_ = Tensor();
  check_mpi(rc, "MPI_Wait");
}
bool Work::test() {
  if (!request_) return true;
  int done = 0;
  check_mpi(MPI_Test(static_cast<MPI_Request*>(request_), &done, MPI_STATUS_IGNORE), "MPI_Test");
  if (done) {
    delete static_cast<MPI_Request*>(request_);
    request_ = nullptr;
    tensor_.bump_version();
    tensor_ = Tensor();
  }
  return done != 0;
}

Work all_reduce_async(Tensor& t) {
  KERN_CHECK(t.defined() && t.is_contiguous() && is_floating(t.dtype()),
             "dist::all_reduce_async: expected a contiguous float tensor, got ",
             t.defined() ? describe(t.dtype(), t.shape()) : std::string("undefined"));
  Work w;
  if (g_shm.usable && (t.dtype() == DType::Float32 || t.dtype() == DType::Float64)) {
    shm_sum(t);  // now, on every rank in the same order: a finished Work
    t.bump_version();
    return w;
  }
  auto* req = new MPI_Request;
  int rc = MPI_Iallreduce(MPI_IN_PLACE, t.raw_data(), static_cast<int>(t.numel()),
                          mpi_type(t.dtype(), "all_reduce_async"), MPI_SUM, comm(), req);
  if (rc != MPI_SUCCESS) {
    delete req;
    check_mpi(rc, "MPI_Iallreduce");
  }
  w.request_ = req;
  w.tensor_ = t;
  return w;
}

// ---- faults

void abort(const std::string& message, int code) {
  int r = -1, n = 0, inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (inited && !finalized) {
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
  }
  std::fprintf(stderr, "kern::dist: rank %d of %d failed: %s\n", r, n, message.c_str());
  std::fflush(stderr);
  if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

int run_or_abort(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    abort(e.what());
  } catch (...) {
    abort("unknown exception");
  }
  return 0;
}

// ---- differentiable all-reduce

Tensor functional::all_reduce(const Tensor& x) {
  Tensor y;
  {
    NoGradGuard ng;
    y = x.contiguous().clone();
    dist::all_reduce(y, ReduceOp::Sum);
  }
  return record_op("dist_all_reduce", y, {x},
                   [](const BackwardContext& ctx) -> std::vector<Tensor> {
                     // d(sum_r x_r)/dx_q = I on every rank: the gradient is the sum of the
                     // gradients every rank's loss sends to y, itself a (differentiable) all-reduce.
                     return {functional::all_reduce(ctx.grad)};
                   },
                   SavedValues::none());
}

}  // namespace kern::dist
