// dist collectives: values from closed forms of the rank (sum_r (r + 1) = n(n+1)/2, ...),
// and the agreement check's error on every rank.
#include "check.hpp"

#include <cstdlib>
#include <cstring>

using namespace kern;

namespace {

void collectives() {
  const int r = dist::rank(), n = dist::world_size();
  for (DType dt : {DType::Float32, DType::Float64, DType::Int64}) {
    Tensor t = full({2, 3}, r + 1.0, dt);
    dist::all_reduce(t);
    DCHECK(maxdiff(t, full({2, 3}, n * (n + 1) / 2.0, DType::Float64)) == 0.0, dt);
    Tensor b = full({3}, 10.0 * (r + 1), dt);
    dist::broadcast(b, n - 1);
    DCHECK(maxdiff(b, full({3}, 10.0 * n, DType::Float64)) == 0.0);
    auto parts = dist::all_gather(full({2}, static_cast<double>(r), dt));
    DCHECK(static_cast<int>(parts.size()) == n);
    for (int q = 0; q < n; ++q) DCHECK(maxdiff(parts[q], full({2}, q, DType::Float64)) == 0.0);
  }
  // mean, and a non-contiguous view reduced in place
  Tensor m = full({4, 2}, 2.0 * r, DType::Float64);
  Tensor col = m.narrow(1, 1, 1);
  dist::all_reduce(col, dist::ReduceOp::Mean);
  DCHECK(maxdiff(m.narrow(1, 1, 1), full({4, 1}, n - 1.0, DType::Float64)) == 0.0);  // mean of 2r
  DCHECK(maxdiff(m.narrow(1, 0, 1), full({4, 1}, 2.0 * r, DType::Float64)) == 0.0);  // untouched
  // async
  Tensor a = full({5}, r + 1.0, DType::Float32);
  dist::Work w = dist::all_reduce_async(a);
  w.wait();
  DCHECK(maxdiff(a, full({5}, n * (n + 1) / 2.0, DType::Float64)) == 0.0);
  dist::barrier();
}

// Equal bits: same dtype and shape, the same bytes.
bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), static_cast<size_t>(x.numel()) * dtype_size(x.dtype())) == 0;
}

// Collectives cut into pieces: over 2^31 - 1 elements (MPI's int count) all_reduce, broadcast
// and all_gather make one MPI call per piece; here KERN_DIST_MAX_COUNT=7 stands for 2^31 - 1
// (2^31 floats would take 8 GB). Sizes around multiples of the piece (0, 1, 6, 7, 8, 49, 52,
// and a non-contiguous [13, 4] view), float32, float64 and int64, different random values on
// every rank: the results equal the same collectives in one piece bit for bit, and all_gather
// returns every rank's values (an element left out at either end of a piece, or reduced
// twice, changes the result). Then KERN_DIST_MAX_COUNT=7 on the last rank only: every rank must
// cut alike (the smallest count over the ranks), else MPI fails or hangs (ctest's timeout).
void pieces() {
  const int r = dist::rank(), n = dist::world_size();
  int64_t k = 0;
  // rank q's values for case k
  const auto values = [](int64_t kase, int q, const Shape& shape, DType dt) {
    Generator gen(9000 + 100 * static_cast<uint64_t>(kase) + static_cast<uint64_t>(q));
    return (randn(shape, DType::Float64, &gen) * 1e6).to(dt);
  };
  for (bool all_ranks : {true, false}) {
    const std::string when = all_ranks ? "pieces of 7 on every rank" : "pieces of 7 set on the last rank only";
    for (const Shape& shape : {Shape{0}, Shape{1}, Shape{6}, Shape{7}, Shape{8}, Shape{49}, Shape{52}, Shape{4, 13}})
      for (DType dt : {DType::Float32, DType::Float64, DType::Int64}) {
        const int64_t kase = k++;
        // rank q's tensor; [4, 13] is viewed as [13, 4], not contiguous (reduced through a copy)
        const auto input = [&](int q) {
          Tensor v = values(kase, q, shape, dt);
          return shape.size() == 2 ? v.transpose(0, 1) : v;
        };
        Tensor x = input(r), sum1 = input(r), root1 = input(r), sum2 = input(r), root2 = input(r);
        dist::all_reduce(sum1);
        dist::broadcast(root1, n - 1);
        std::vector<Tensor> gathered1 = dist::all_gather(x), gathered2;
        {
          MaxCount seven("7", all_ranks || r == n - 1);
          dist::all_reduce(sum2);
          dist::broadcast(root2, n - 1);
          gathered2 = dist::all_gather(x);
        }
        const std::string what = fmt::format("{}: {} {}", when, dt, x.shape());
        DCHECK(same_bits(sum2, sum1), what, ": all_reduce in pieces differs from one MPI_Allreduce");
        DCHECK(same_bits(root2, root1), what, ": broadcast in pieces differs from one MPI_Bcast");
        for (int q = 0; q < n; ++q) {
          Tensor want = input(q);
          DCHECK(same_bits(gathered1[q], want), what, ": all_gather's rank ", q);
          DCHECK(same_bits(gathered2[q], want), what, ": all_gather in pieces: rank ", q);
        }
        if (n > 1 && x.numel() > 0) DCHECK(!same_bits(sum1, x), what, ": the sum equals this rank's values");
      }
  }
}

void mismatch() {
  const int r = dist::rank();
  DCHECK(dist::world_size() >= 2, "needs 2 ranks");
  // shape differs: every rank gets the same error, naming each rank's shape
  Tensor t = zeros({r == 0 ? 3 : 4}, DType::Float32);
  DCHECK_THROWS(dist::all_reduce(t), "dist::all_reduce: tensors differ across ranks", "rank 0 float32 [3]",
                "rank 1 float32 [4]");
  Tensor u = zeros({2}, r == 0 ? DType::Float32 : DType::Float64);
  DCHECK_THROWS(dist::broadcast(u), "dist::broadcast", "rank 0 float32 [2]", "rank 1 float64 [2]");
  DCHECK_THROWS(dist::all_gather(zeros({2, r + 1})), "dist::all_gather", "[2, 1]", "[2, 2]");
  Tensor i = zeros({2}, DType::Int64);
  DCHECK_THROWS(dist::all_reduce(i, dist::ReduceOp::Mean), "Mean of a int64");
  Tensor bad = zeros({2}, DType::Float32);
  DCHECK_THROWS(dist::broadcast(bad, 7), "root 7 is not a rank");
  // the communicator still works after the errors
  Tensor ok = ones({2}, DType::Float64);
  dist::all_reduce(ok);
  DCHECK(maxdiff(ok, full({2}, dist::world_size(), DType::Float64)) == 0.0);
}

// The differentiable all-reduce: y = sum_r x_r, loss_r = <c_r, y> on every rank, so
// d(sum_r loss_r)/dx_q = sum_r c_r on every rank q.
void functional_all_reduce() {
  const int r = dist::rank(), n = dist::world_size();
  Tensor x = full({3}, r + 1.0, DType::Float64).requires_grad_();
  Tensor y = dist::functional::all_reduce(x);
  DCHECK(maxdiff(y, full({3}, n * (n + 1) / 2.0, DType::Float64)) == 0.0);
  Tensor c = full({3}, 2.0 * r + 1.0, DType::Float64);
  (y * c).sum().backward();
  DCHECK(maxdiff(x.grad(), full({3}, static_cast<double>(n) * n, DType::Float64)) == 0.0);  // sum of 2r+1
}

// DistributedSampler on the real ranks: the gathered shares cover every index once.
void sampler() {
  const int r = dist::rank(), n = dist::world_size();
  const int64_t size = 10 * n;
  std::vector<int64_t> prev;
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    data::DistributedSampler s(size, {.num_replicas = n, .rank = r, .seed = 3});
    s.set_epoch(epoch);
    auto mine = s.indices();
    auto parts = dist::all_gather(from_vector(mine, {static_cast<int64_t>(mine.size())}));
    std::vector<int> count(size, 0);
    std::vector<int64_t> all;
    for (auto& p : parts)
      for (int64_t i : p.to_vector<int64_t>()) {
        ++count[i];
        all.push_back(i);
      }
    for (int64_t i = 0; i < size; ++i) DCHECK(count[i] == 1, "index ", i, " seen ", count[i], " times");
    DCHECK(all != prev, "epoch ", epoch, " has the previous epoch's order");
    prev = all;
  }
}

// all_reduce_async on one node reduces through a shared-memory window (dist.cpp):
// several Works in flight, sizes that grow the window (past its 1 MiB start) and an empty
// tensor, float32 and float64, random values: equal bit for bit to MPI_Allreduce's sums
// (dist::all_reduce), every rank's result the same.
void async_all_reduce() {
  const int r = dist::rank();
  std::vector<Tensor> mine, want;
  std::vector<dist::Work> works;
  int64_t k = 0;
  for (int64_t numel : {int64_t(7), int64_t(0), int64_t(300000), int64_t(3000001), int64_t(1)}) {
    for (DType dt : {DType::Float32, DType::Float64}) {
      Generator gen(100 + 10 * static_cast<uint64_t>(r) + static_cast<uint64_t>(k++));
      Tensor t = randn({numel}, dt, &gen);
      Tensor ref = t.clone();
      dist::all_reduce(ref);
      want.push_back(ref);
      mine.push_back(t);
    }
  }
  for (auto& t : mine) works.push_back(dist::all_reduce_async(t));
  for (auto& w : works) w.wait();
  for (size_t i = 0; i < mine.size(); ++i) {
    DCHECK(maxdiff(mine[i], want[i]) == 0.0, "async sum ", i, " differs from MPI_Allreduce's");
    auto parts = dist::all_gather(mine[i]);
    DCHECK(maxdiff(parts[0], parts[1]) == 0.0, "async sum ", i, " differs between ranks");
  }
}

// all_reduce_async when its window cannot grow: KERN_DIST_SHM_FREE=0 makes the room check see
// a full /dev/shm, on every rank and then on the last rank only (the decision must be the
// same on every rank: a rank summing through the window while another waits in MPI_Iallreduce
// hangs, which ctest's timeout turns into a failure). Sums larger than the window must take
// MPI_Iallreduce (a pending Work) and sums that fit the window still go through it (a finished
// Work); in flight together, every result equals MPI_Allreduce's (dist::all_reduce) bit for
// bit on every rank. With room again, the window grows. ReduceBuffers takes MPI_Iallreduce under
// the same check. (Without the check, a 12 MB /dev/shm made the 24 MB window fail with
// MPI_ERR_INTERN: small_shm.sh runs async_all_reduce in one.)
void async_all_reduce_no_room() {
  const int r = dist::rank(), n = dist::world_size();
  uint64_t seed = 0;
  // sums of these sizes started together; pending: MPI_Iallreduce expected (otherwise the
  // window, where the library finds room for it: dist::detail::async_window_room, just
  // before the sum, on every rank)
  auto sums = [&](const std::vector<std::pair<int64_t, DType>>& sizes, const std::vector<bool>& pending,
                  const std::string& when) {
    std::vector<Tensor> mine, want;
    std::vector<dist::Work> works;
    for (auto [numel, dt] : sizes) {
      Generator gen(7000 + 10 * seed++ + static_cast<uint64_t>(r));
      Tensor t = randn({numel}, dt, &gen);
      Tensor ref = t.clone();
      dist::all_reduce(ref);
      want.push_back(ref);
      mine.push_back(t);
    }
    for (size_t i = 0; i < mine.size(); ++i) {
      const auto [numel, dt] = sizes[i];
      const bool window =
          !pending[i] && shm_expected(dist::detail::async_window_room(static_cast<size_t>(numel) * dtype_size(dt)));
      works.push_back(dist::all_reduce_async(mine[i]));
      DCHECK(works.back().pending() == !window, when, ": sum ", i, " of ", numel, " elements: expected ",
             window ? "the window (a finished Work)" : "MPI_Iallreduce (a pending Work)");
    }
    for (auto& w : works) w.wait();
    for (size_t i = 0; i < mine.size(); ++i) {
      DCHECK(maxdiff(mine[i], want[i]) == 0.0, when, ": sum ", i, " differs from MPI_Allreduce's");
      auto parts = dist::all_gather(mine[i]);
      for (int q = 1; q < n; ++q) DCHECK(maxdiff(parts[0], parts[q]) == 0.0, when, ": sum ", i, " differs between ranks");
    }
  };
  // large: 36 MB in float64, 32 MB in float32, larger than any window so far (async_all_reduce
  // leaves 24 MB per rank when kern_dist_tests runs every test)
  const int64_t small = 1000, large = 4500000, large32 = 8000000;
  sums({{small, DType::Float32}}, {false}, "with room");  // the window exists (>= 1 MiB per rank)
  for (bool all_ranks : {true, false}) {
    ShmFree full("0", all_ranks || r == n - 1);
    const std::string when = all_ranks ? "no room on any rank" : "no room on the last rank";
    sums({{small, DType::Float64}, {large, DType::Float64}, {small, DType::Float32}, {large32, DType::Float32},
          {0, DType::Float64}},
         {false, true, false, true, false}, when);
    dist::ReduceBuffers b({{small, DType::Float32}});
    DCHECK(!b.shared_memory(), when, ": ReduceBuffers must take MPI_Iallreduce");
  }
  // room again: a sum past the window grows it (8 MB per rank: fits a container's /dev/shm,
  // not small_shm.sh's 12 MB)
  sums({{2000000, DType::Float32}, {small, DType::Float64}}, {false, false}, "room again");
  // the room rule itself, this rank's view: 1.25x the node's segments (ReduceBuffers' buffers
  // each rounded up to 64 bytes) must be free
  const size_t seg = size_t(64) << 20;  // bytes per rank
  const auto floats = [](size_t bytes) { return static_cast<int64_t>(bytes / 4); };
  {
    ShmFree exact(std::to_string(seg * static_cast<size_t>(n) * 5 / 4));
    DCHECK(dist::detail::reduce_buffers_room({{floats(seg), DType::Float32}}), "room for exactly 1.25x");
    DCHECK(!dist::detail::reduce_buffers_room({{floats(seg), DType::Float32}, {1, DType::Float32}}),
           "a 4-byte buffer takes 64 bytes, past 1.25x");
    // the window's bytes (<= 24 MB per rank so far) come back when it grows
    DCHECK(dist::detail::async_window_room(seg / 2), "room for half");
    DCHECK(!dist::detail::async_window_room(2 * seg), "no room for twice as much");
  }
  {
    ShmFree none("0");
    DCHECK(!dist::detail::reduce_buffers_room({{1, DType::Float64}}), "no room in a full /dev/shm");
    DCHECK(!dist::detail::async_window_room(size_t(1) << 40), "no room in a full /dev/shm");
    DCHECK(dist::detail::async_window_room(0), "an empty sum always fits the window");
  }
}

// ReduceBuffers (DDP's buckets), in node shared memory (summed in place in every rank's
// buffer) and over MPI_Iallreduce (allow_shared_memory = false): several buffers of both
// dtypes, sizes around the part boundaries and an empty one, three rounds of new values
// through the same buffers, started in another order than made and one left out: equal bit
// for bit to MPI_Allreduce's sums (dist::all_reduce) on every rank; the one left out keeps
// this rank's values. Then the errors, KERN_DIST_SHM=0 on one rank, and the windows' lifetime.
void reduce_buffers() {
  const int r = dist::rank(), n = dist::world_size();
  std::vector<std::pair<int64_t, DType>> layout;
  for (int64_t numel : {int64_t(7), int64_t(0), int64_t(300001), int64_t(1), int64_t(2000000)})
    for (DType dt : {DType::Float32, DType::Float64}) layout.emplace_back(numel, dt);
  const size_t windows0 = dist::reduce_buffer_windows();
  // in shared memory on one node where /dev/shm has room (the library's rule; a container's
  // 64 MB /dev/shm has not: 2 x 27.6 MB, plus all_reduce_async's window)
  const bool in_shm = shm_expected(dist::detail::reduce_buffers_room(layout));
  dist::ReduceBuffers shm(layout), mpi(layout, false);
  DCHECK(shm.shared_memory() == in_shm, "shared_memory() is ", shm.shared_memory(), ", expected ", in_shm);
  DCHECK(!mpi.shared_memory(), "allow_shared_memory = false");
  DCHECK(dist::reduce_buffer_windows() == windows0 + (in_shm ? 1 : 0), "one window per shared-memory ReduceBuffers");
  for (int round = 0; round < 3; ++round) {
    std::vector<Tensor> mine, want;
    for (size_t i = 0; i < layout.size(); ++i) {
      Generator gen(1000 * static_cast<uint64_t>(round) + 100 * static_cast<uint64_t>(r) + i);
      Tensor v = randn({layout[i].first}, layout[i].second, &gen);
      Tensor a = shm.buffer(i), b = mpi.buffer(i);
      a.copy_(v);
      b.copy_(v);
      Tensor ref = v.clone();
      dist::all_reduce(ref);
      mine.push_back(v);
      want.push_back(ref);
    }
    const size_t skipped = round == 1 ? 2 : layout.size();
    for (size_t i = layout.size(); i-- > 0;)
      if (i != skipped) {
        shm.start(i);
        mpi.start(i);
        mpi.progress();
      }
    shm.finish();
    mpi.finish();
    for (size_t i = 0; i < layout.size(); ++i) {
      const Tensor& expect = i == skipped ? mine[i] : want[i];
      DCHECK(maxdiff(shm.buffer(i), expect) == 0.0, "round ", round, ": shared-memory sum ", i,
             " differs from MPI_Allreduce's");
      DCHECK(maxdiff(mpi.buffer(i), expect) == 0.0, "round ", round, ": MPI_Iallreduce sum ", i, " differs");
    }
  }
  // a zero-filled start
  {
    dist::ReduceBuffers z({{5, DType::Float64}});
    DCHECK(maxdiff(z.buffer(0), zeros({5}, DType::Float64)) == 0.0, "buffers start as zeros");
  }
  // errors, on every rank
  shm.start(0);
  DCHECK_THROWS(shm.start(0), "dist::ReduceBuffers::start", "started twice");
  shm.finish();
  DCHECK_THROWS(shm.start(layout.size()), "dist::ReduceBuffers::start", "out of range");
  DCHECK_THROWS(dist::ReduceBuffers({{r == 0 ? 3 : 4, DType::Float32}}), "dist::ReduceBuffers",
                "differ across ranks", "float32 3", "float32 4");
  DCHECK_THROWS(dist::ReduceBuffers({{3, DType::Int64}}), "dist::ReduceBuffers", "int64", "not supported");
  // over MPI_Iallreduce's int count: the same error on every rank (checked before any memory
  // is taken), also when only one rank asks for it (the agreement check comes first: a rank
  // throwing alone would leave the others waiting in it)
  const int64_t too_many = int64_t(1) << 31;
  DCHECK_THROWS(dist::ReduceBuffers({{5, DType::Float64}, {too_many, DType::Float32}}), "dist::ReduceBuffers",
                "buffer 1", "float32 [2147483648]", "2^31 - 1");
  DCHECK_THROWS(dist::ReduceBuffers({{r == 0 ? too_many : 3, DType::Float32}}), "dist::ReduceBuffers",
                "differ across ranks", "float32 2147483648", "float32 3");
  // KERN_DIST_SHM=0 on the last rank only: every rank takes MPI_Iallreduce
  {
    std::optional<dist::ReduceBuffers> made;
    {
      ShmOff off(r == n - 1);
      made.emplace(std::vector<std::pair<int64_t, DType>>{{3, DType::Float64}});
    }
    dist::ReduceBuffers& m = *made;
    DCHECK(!m.shared_memory(), "KERN_DIST_SHM=0 on rank ", n - 1, " must turn shared memory off everywhere");
    Tensor b = m.buffer(0);
    b.fill_(r + 1.0);
    m.start(0);
    m.finish();
    DCHECK(maxdiff(m.buffer(0), full({3}, n * (n + 1) / 2.0, DType::Float64)) == 0.0);
  }
  // lifetime: a window outlives its ReduceBuffers while a tensor views it (here a buffer kept
  // past the scope), and is freed at the next construction once nothing does
  const size_t windows1 = dist::reduce_buffer_windows(),
               w = shm_expected(dist::detail::reduce_buffers_room({{4, DType::Float32}})) ? 1 : 0;
  Tensor kept;
  {
    dist::ReduceBuffers a({{4, DType::Float32}});
    kept = a.buffer(0);
    kept.fill_(r + 1.0);
    a.start(0);
    a.finish();
  }
  { dist::ReduceBuffers b({{4, DType::Float32}}); }
  DCHECK(dist::reduce_buffer_windows() == windows1 + 2 * w, "a viewed window was freed, or a retired one was not: ",
         dist::reduce_buffer_windows(), " windows, expected ", windows1 + 2 * w);
  DCHECK(maxdiff(kept, full({4}, n * (n + 1) / 2.0, DType::Float32)) == 0.0, "the kept buffer lost its sum");
  kept = Tensor();
  { dist::ReduceBuffers c({{4, DType::Float32}}); }  // frees a's and b's windows
  DCHECK(dist::reduce_buffer_windows() == windows1 + w, dist::reduce_buffer_windows(), " windows, expected ",
         windows1 + w);
}

Register r1("collectives", collectives);
// ctest runs the tests listed in tests/CMakeLists.txt: ReduceBuffers runs within
// async_all_reduce's test (its shared-memory sibling).
Register r5("async_all_reduce", [] {
  async_all_reduce();
  reduce_buffers();
});
Register r6("async_all_reduce_no_room", async_all_reduce_no_room);
Register r7("pieces", pieces);
Register r2("mismatch", mismatch);
Register r3("functional_all_reduce", functional_all_reduce);
Register r4("sampler", sampler);

}  // namespace
