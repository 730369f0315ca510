#pragma once
// kern::dist: multi-process collectives over MPI (OpenMPI on Debian), for data-parallel
// training (nn::DistributedDataParallel, nn::SyncBatchNorm) and sharded instruments.
//
// Built only when CMake finds MPI (option KERN_WITH_MPI); link kern::kern_dist. Run with
//   mpirun -np 2 ./train
// One process per rank, one communicator (a duplicate of MPI_COMM_WORLD). Every collective
// must be called by every rank in the same order, as in MPI and torch.distributed.
//
// Checks: every collective first all-gathers a small header (dtype, rank, shape) and throws
// the same kern::Error on every rank when the ranks disagree ("dist::all_reduce: tensors
// differ across ranks: rank 0 float32 [4, 3], rank 1 float32 [4]"), so a mismatch is an
// error, never a hang or a silent mis-reduction. MPI errors are returned (MPI_ERRORS_RETURN),
// not fatal, and become kern::Error naming the call and MPI's message.
//
// Faults: an exception on one rank leaves the others blocked in their next collective.
// dist::run_or_abort(fn) (or Environment's destructor during stack unwinding) prints
// "kern::dist: rank R of N failed: <what>" to stderr and calls MPI_Abort, which ends every
// rank of the job with a non-zero status. There are no collective timeouts: a rank that
// dies without an exception (SIGKILL, OOM) is detected by mpirun, which ends the job.
#include <kern/tensor.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace kern::dist {

/// MPI_Init_thread (MPI_THREAD_FUNNELED: only the thread that initialized calls MPI; OpenMP
/// threads inside kern's ops never do) and MPI_Finalize, as RAII. Nested or repeated
/// Environments are fine: only the outermost one initializes and finalizes. If MPI was
/// initialized by someone else, it is neither initialized nor finalized here.
/// Destroyed while an exception propagates, it calls abort() instead of MPI_Finalize
/// (finalizing would block until the other ranks finalize, which they never do).
class Environment {
 public:
  Environment();
  Environment(int& argc, char**& argv);
  ~Environment();
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

 private:
  bool owns_ = false;
  int uncaught_ = 0;
};

/// True between the first Environment's construction and MPI_Finalize.
bool is_initialized();
/// This process's rank in [0, world_size()). Throws if dist is not initialized.
int rank();
int world_size();

enum class ReduceOp { Sum, Mean };

/// all_reduce, broadcast and all_gather take any number of elements: over 2^31 - 1 (MPI's int
/// count) they make one MPI call per piece of 2^31 - 1 elements, in order (exact: each piece
/// is a whole collective). KERN_DIST_MAX_COUNT=<n> makes the pieces n elements (for tests;
/// the ranks use the smallest value any of them sets).
///
/// In place: t = the sum (or mean) of t over all ranks. float32, float64, int64 (Sum only).
/// t may be a non-contiguous view (reduced through a contiguous copy). Bumps t's version.
void all_reduce(Tensor& t, ReduceOp op = ReduceOp::Sum);
/// In place: t = root's t on every rank.
void broadcast(Tensor& t, int root = 0);
/// Every rank's t, in rank order (one tensor per rank, each shaped like t).
std::vector<Tensor> all_gather(const Tensor& t);
/// Blocks until every rank arrives.
void barrier();

/// (For the same buffers summed again and again, see ReduceBuffers below: DDP's buckets.)
/// A sum all-reduce started by all_reduce_async: the tensor must not be read or written until
/// wait() returns. When every rank runs on one node, all_reduce_async itself reduces through a
/// shared-memory window (while the gradients are still in cache; OpenMPI's MPI_Iallreduce
/// progresses only inside MPI calls, so it overlapped little, and its copies were slower) and
/// returns a finished Work; otherwise it starts an MPI_Iallreduce. KERN_DIST_SHM=0 forces
/// MPI_Iallreduce. The window (kept for the Environment's lifetime) grows to the largest tensor
/// summed so far; when some rank finds less than 1.25x the ranks' new segments free in /dev/shm
/// (where OpenMPI puts the window; a container's default is 64 MB), every rank starts an
/// MPI_Iallreduce for that tensor instead (a pending Work) and keeps the window for smaller
/// ones. KERN_DIST_SHM_FREE=<bytes> makes the room check believe /dev/shm has that much free
/// (for tests). A tensor of more than 2^31 - 1 elements that does not go through the window is
/// an error (MPI's int count). Every rank must start its reductions in the same order. Unchecked (no header exchange): the
/// caller guarantees identical shapes and dtypes on every rank (DistributedDataParallel's
/// buckets, which are checked once at construction).
class Work {
 public:
  Work() = default;
  Work(Work&& other) noexcept;
  Work& operator=(Work&& other) noexcept;
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;
  ~Work();
  /// Blocks until the reduction is done (no-op on a default or finished Work).
  void wait();
  /// Lets MPI progress the reduction; true when it is done.
  bool test();
  bool pending() const { return request_ != nullptr; }

 private:
  friend Work all_reduce_async(Tensor& t);
  void* request_ = nullptr;  // MPI_Request, heap-allocated (mpi.h stays out of this header)
  Tensor tensor_;            // keeps the buffer alive while MPI writes into it
};
/// Starts an in-place sum all-reduce of a contiguous float32/float64 tensor.
Work all_reduce_async(Tensor& t);

/// Buffers summed over the ranks again and again (DistributedDataParallel's gradient buckets).
/// When every rank runs on one node (and no rank sets KERN_DIST_SHM=0, read here as well as at
/// Environment start) they live in node shared memory, one MPI window per ReduceBuffers: a sum
/// reads every rank's buffer in place and writes the result into every rank's buffer, with no
/// copy in or out and two barriers (one per start(), one in finish()). Rank r sums part r of
/// the buffer over the ranks in rank order (((b_0 + b_1) + b_2) + ...), the same order as
/// all_reduce_async's shared-memory sum; with 2 ranks that is MPI_Allreduce's result bit for
/// bit (tested). Otherwise (or when /dev/shm, where OpenMPI puts the window, has less than
/// 1.25x the ranks' segments free on some rank; KERN_DIST_SHM_FREE as for all_reduce_async)
/// the buffers are ordinary tensors summed by MPI_Iallreduce.
/// The constructor, start() and finish() are collective: every rank calls them in the same order.
/// The window is freed (collectively) at the next ReduceBuffers construction or at the end of
/// the Environment after the last tensor viewing it is gone; tensors that view a buffer must
/// not be used after the Environment ends.
class ReduceBuffers {
 public:
  /// One 1-D float32/float64 buffer per (numel, dtype), zero-filled; every rank must pass the
  /// same list (checked: an error naming each rank's list otherwise; then a buffer of more
  /// than 2^31 - 1 elements, MPI_Iallreduce's int count, is the same error on every rank).
  /// allow_shared_memory = false forces MPI_Iallreduce (tests compare the two).
  explicit ReduceBuffers(const std::vector<std::pair<int64_t, DType>>& layout, bool allow_shared_memory = true);
  ~ReduceBuffers();  // local: no MPI call (see above for when the window is freed)
  ReduceBuffers(const ReduceBuffers&) = delete;
  ReduceBuffers& operator=(const ReduceBuffers&) = delete;

  size_t size() const;
  /// This rank's buffer i (contiguous, 1-D). Write it before start(i); read it after finish().
  const Tensor& buffer(size_t i) const;
  /// True when the buffers live in node shared memory.
  bool shared_memory() const;
  /// Starts the in-place sum of buffer i over the ranks; buffer i must not be touched (on any
  /// rank) until finish() returns. A buffer is started at most once between finishes.
  void start(size_t i);
  /// Lets MPI progress the started sums (MPI_Iallreduce path; a no-op on shared memory).
  void progress();
  /// Waits until every started sum is complete in every rank's buffer.
  void finish();

 private:
  struct State;
  std::unique_ptr<State> s_;
};

/// The node-shared windows of ReduceBuffers this rank holds, live or retired but not yet freed
/// (for tests).
size_t reduce_buffer_windows();

namespace detail {
/// The room rule of the shared-memory windows, as this rank sees it now (for tests, which
/// expect shared memory only where the library takes it; a small /dev/shm, such as a
/// container's 64 MB, legitimately falls back to MPI_Iallreduce). Shared memory is taken only
/// when every rank sees room. Not collective.

/// Would all_reduce_async's window hold `bytes` per rank, or grow to?
bool async_window_room(size_t bytes);
/// Would ReduceBuffers(layout)'s window fit in /dev/shm?
bool reduce_buffers_room(const std::vector<std::pair<int64_t, DType>>& layout);
}  // namespace detail

/// Checks that `what` (a description such as a parameter list) is identical on every rank;
/// throws the same kern::Error on every rank naming the first rank that differs from rank 0.
void check_same_on_all_ranks(const std::string& context, const std::string& what);

/// Prints "kern::dist: rank R of N failed: <message>" to stderr and aborts the whole job
/// (MPI_Abort with `code`). Does not return.
[[noreturn]] void abort(const std::string& message, int code = 1);

/// Runs fn; an exception ends the job through abort() naming this rank and the error, so
/// that the other ranks do not wait forever in a collective. Returns fn's status (0 if void).
int run_or_abort(const std::function<void()>& fn);

namespace functional {
/// Differentiable sum all-reduce (torch.distributed.nn.functional.all_reduce): returns the
/// sum of x over ranks, and its backward sums the incoming gradients over ranks (every rank
/// must run the backward). SyncBatchNorm's batch statistics go through it, which makes its
/// gradient exact. x: any shape, float32/float64 -> same shape.
Tensor all_reduce(const Tensor& x);
}  // namespace functional

}  // namespace kern::dist
