// kern::dist over MPI: environment, checked collectives, async all-reduce, the abort path.
// See kern/dist/dist.hpp for the contract; the node shared memory is in shared_memory.cpp.
#include <kern/autograd.hpp>
#include <kern/dist/dist.hpp>
#include <kern/ops/shape_ops.hpp>

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "dist_internal.hpp"

namespace kern::dist {

namespace {
MPI_Comm g_comm = MPI_COMM_NULL;  // kern's duplicate of MPI_COMM_WORLD
int g_depth = 0;                  // live Environments
}  // namespace

namespace detail {

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

int64_t max_count() {
  constexpr int64_t mpi_max = std::numeric_limits<int>::max();
  if (const char* v = std::getenv("KERN_DIST_MAX_COUNT")) {
    const long long c = std::strtoll(v, nullptr, 10);
    if (c >= 1 && c < mpi_max) return c;
  }
  return mpi_max;
}

}  // namespace detail

using detail::check_mpi;
using detail::comm;
using detail::mpi_type;

namespace {
std::string describe(DType d, const Shape& s) { return fmt::format("{} {}", d, s); }

// The agreement check every collective starts with: an all-gather of (dtype, ndim, dims) and
// of each rank's detail::max_count(). Returns the smallest max_count over the ranks, so that
// every rank cuts the tensor into the same pieces (in_pieces) even if KERN_DIST_MAX_COUNT
// differs between ranks.
constexpr int kMaxDims = 8;
constexpr int kHeader = kMaxDims + 3;  // dtype, ndim, dims, max_count (not compared)
int64_t check_agree(const Tensor& t, const char* op) {
  KERN_CHECK(t.defined(), "dist::", op, ": undefined tensor");
  KERN_CHECK(t.dim() <= kMaxDims, "dist::", op, ": tensors of more than ", kMaxDims, " dims (got ",
             t.shape(), ")");
  int64_t header[kHeader] = {};
  header[0] = static_cast<int64_t>(t.dtype());
  header[1] = t.dim();
  for (int64_t d = 0; d < t.dim(); ++d) header[2 + d] = t.size(d);
  header[kHeader - 1] = detail::max_count();
  const int n = world_size();
  std::vector<int64_t> all(static_cast<size_t>(n) * kHeader);
  check_mpi(MPI_Allgather(header, kHeader, MPI_INT64_T, all.data(), kHeader, MPI_INT64_T, comm()), "MPI_Allgather");
  bool same = true;
  int64_t max_count = header[kHeader - 1];
  for (int r = 0; r < n; ++r) {
    for (int k = 0; k < kHeader - 1; ++k) same = same && all[r * kHeader + k] == all[k];
    max_count = std::min(max_count, all[r * kHeader + kHeader - 1]);
  }
  if (same) return max_count;
  std::string list;
  for (int r = 0; r < n; ++r) {
    const int64_t* h = &all[r * kHeader];
    Shape s;
    for (int64_t d = 0; d < h[1]; ++d) s.push_back(h[2 + d]);
    list += fmt::format("{}rank {} {}", r ? ", " : "", r, describe(static_cast<DType>(h[0]), s));
  }
  throw Error(fmt::format("dist::{}: tensors differ across ranks (shape and dtype must agree): {}", op, list));
}

// MPI counts are ints: calls piece(offset, count) for [0, numel) cut in order into pieces of at
// most max_count elements (none when numel is 0). Every rank must pass the same numel and
// max_count (check_agree's).
template <class F>
void in_pieces(int64_t numel, int64_t max_count, F&& piece) {
  for (int64_t lo = 0; lo < numel; lo += max_count) piece(lo, static_cast<int>(std::min(max_count, numel - lo)));
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
    detail::shm_probe();
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
    detail::shm_teardown();  // ReduceBuffers' windows, all_reduce_async's, the node communicator
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

// Over 2^31 - 1 elements (detail::max_count()), all_reduce, broadcast and all_gather make one
// MPI call per piece (in_pieces), in the same order on every rank: each piece is a complete
// collective, so the result is exact (for an all-reduce: the same per-element sum).
void all_reduce(Tensor& t, ReduceOp op) {
  const int64_t max_count = check_agree(t, "all_reduce");
  MPI_Datatype type = mpi_type(t.dtype(), "all_reduce");
  KERN_CHECK(op == ReduceOp::Sum || is_floating(t.dtype()), "dist::all_reduce: Mean of a ", t.dtype(),
             " tensor; use Sum (integer division would truncate)");
  on_contiguous(t, [&](Tensor& c) {
    char* p = static_cast<char*>(c.raw_data());
    const size_t elem = dtype_size(c.dtype());
    in_pieces(c.numel(), max_count, [&](int64_t lo, int count) {
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, p + lo * elem, count, type, MPI_SUM, comm()), "MPI_Allreduce");
    });
    if (op == ReduceOp::Mean) c.copy_(c / static_cast<double>(world_size()));
  });
}

void broadcast(Tensor& t, int root) {
  KERN_CHECK(root >= 0 && root < world_size(), "dist::broadcast: root ", root, " is not a rank (world size ",
             world_size(), ")");
  const int64_t max_count = check_agree(t, "broadcast");
  MPI_Datatype type = mpi_type(t.dtype(), "broadcast");
  on_contiguous(t, [&](Tensor& c) {
    char* p = static_cast<char*>(c.raw_data());
    const size_t elem = dtype_size(c.dtype());
    in_pieces(c.numel(), max_count, [&](int64_t lo, int count) {
      check_mpi(MPI_Bcast(p + lo * elem, count, type, root, comm()), "MPI_Bcast");
    });
  });
}

std::vector<Tensor> all_gather(const Tensor& t) {
  const int64_t max_count = check_agree(t, "all_gather");
  MPI_Datatype type = mpi_type(t.dtype(), "all_gather");
  NoGradGuard ng;
  Tensor c = t.contiguous();
  const int n = world_size();
  Shape s = t.shape();
  s.insert(s.begin(), n);
  Tensor out = empty(s, t.dtype());
  const int64_t numel = c.numel();
  const char* src = static_cast<const char*>(c.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  const size_t elem = dtype_size(t.dtype());
  in_pieces(numel, max_count, [&](int64_t lo, int count) {
    if (count == numel) {  // one piece: the whole tensor
      check_mpi(MPI_Allgather(src, count, type, dst, count, type, comm()), "MPI_Allgather");
      return;
    }
    // rank r's piece [lo, lo + count) goes to out[r][lo ...]: a block of `count` elements
    // whose extent is one rank's whole tensor, so that the blocks land numel elements apart
    MPI_Datatype run = MPI_DATATYPE_NULL, block = MPI_DATATYPE_NULL;
    check_mpi(MPI_Type_contiguous(count, type, &run), "MPI_Type_contiguous");
    int rc = MPI_Type_create_resized(run, 0, static_cast<MPI_Aint>(numel * static_cast<int64_t>(elem)), &block);
    MPI_Type_free(&run);
    check_mpi(rc, "MPI_Type_create_resized");
    rc = MPI_Type_commit(&block);
    if (rc == MPI_SUCCESS) rc = MPI_Allgather(src + lo * elem, count, type, dst + lo * elem, 1, block, comm());
    MPI_Type_free(&block);
    check_mpi(rc, "MPI_Allgather");
  });
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
  // now, on every rank in the same order: a finished Work; false on every rank when the
  // window cannot grow to t (too little room in /dev/shm): MPI_Iallreduce below
  if (detail::shm_usable() && (t.dtype() == DType::Float32 || t.dtype() == DType::Float64) &&
      detail::shm_sum(t)) {
    t.bump_version();
    return w;
  }
  KERN_CHECK(t.numel() <= std::numeric_limits<int>::max(), "dist::all_reduce_async: ", describe(t.dtype(), t.shape()),
             " has more elements than MPI_Iallreduce takes (2^31 - 1)",
             detail::shm_usable() ? " and /dev/shm has no room for its shared-memory window" : "",
             "; reduce it in parts");
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
