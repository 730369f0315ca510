#pragma once
// nn::DistributedDataParallel: data-parallel training over kern::dist (PyTorch's DDP).
//
//   kern::dist::Environment env(argc, argv);
//   auto model = std::make_shared<Net>();
//   auto ddp = std::make_shared<nn::DistributedDataParallel>(model);   // rank 0's weights
//   optim::SGD opt(ddp->parameters(), {.lr = 0.1});
//   for (auto& [x, y] : loader_of_this_rank) {          // data::DistributedSampler
//     opt.zero_grad();
//     nn::cross_entropy((*ddp)(x), y).backward();       // gradients averaged over ranks
//     opt.step();                                       // same update on every rank
//   }
//
// What it does (PyTorch semantics):
//   - construction: checks that every rank has the same parameter names, shapes and dtypes,
//     and broadcasts rank 0's parameters and buffers;
//   - forward (training, grad mode on): broadcasts rank 0's buffers first (BatchNorm's
//     running statistics, option broadcast_buffers), then runs the module and arms the
//     reducer for the next backward;
//   - backward: parameters are packed into buckets of about bucket_cap_mb (in reverse
//     registration order, roughly the order their gradients become final); when a
//     parameter's .grad is final (a post-accumulate-grad hook, kern/autograd.hpp) it is
//     divided by the world size into its bucket, and a full bucket starts its sum over the
//     ranks while backward continues (buckets start in index order on every rank). The
//     buckets are dist::ReduceBuffers: in node shared memory when every rank runs on one
//     node (summed in place in every rank's bucket), else MPI_Iallreduce. When backward ends
//     (a queued backward callback) every sum is waited for and each .grad becomes the mean
//     over ranks (the bucket's values copied in, or the bucket itself with
//     gradient_as_bucket_view);
//   - no_sync(): forwards inside the guard skip the reduction; .grad accumulates locally
//     and the next synchronized backward averages the accumulated sum;
//   - parameters that get no gradient: an error naming them, unless
//     find_unused_parameters(true), which reduces zeros for them (and leaves .grad
//     undefined where no rank used the parameter, as PyTorch does). With it, every rank
//     all-reduces the used map when backward ends and only then starts the buckets' sums
//     (which parameters fill a bucket may differ across ranks): no overlap with backward.
// Every rank must run the same number of forward/backward passes (DistributedSampler pads
// or drops so that they do).
#include <kern/dist/dist.hpp>
#include <kern/nn/module.hpp>

#include <memory>
#include <string>
#include <vector>

namespace kern::nn {

struct DistributedDataParallelOptions {
  /// Target bucket size in MiB (PyTorch's default is 25).
  DistributedDataParallelOptions& bucket_cap_mb(double v) { bucket_cap_mb_ = v; return *this; }
  /// Reduce zeros for parameters that got no gradient instead of throwing.
  DistributedDataParallelOptions& find_unused_parameters(bool v) { find_unused_parameters_ = v; return *this; }
  /// Broadcast rank 0's buffers at every training forward.
  DistributedDataParallelOptions& broadcast_buffers(bool v) { broadcast_buffers_ = v; return *this; }
  /// After a synchronized backward, each .grad is a view of its bucket (PyTorch's
  /// gradient_as_bucket_view) instead of a tensor the averaged values are copied into: one
  /// pass over the gradients less per step. The view is overwritten by the next synchronized
  /// backward (the optimizer.zero_grad() of a normal loop drops it before): keep a .grad
  /// across steps with .clone().
  DistributedDataParallelOptions& gradient_as_bucket_view(bool v) { gradient_as_bucket_view_ = v; return *this; }
  double bucket_cap_mb() const { return bucket_cap_mb_; }
  bool find_unused_parameters() const { return find_unused_parameters_; }
  bool broadcast_buffers() const { return broadcast_buffers_; }
  bool gradient_as_bucket_view() const { return gradient_as_bucket_view_; }

 private:
  double bucket_cap_mb_ = 25.0;
  bool find_unused_parameters_ = false;
  bool broadcast_buffers_ = true;
  bool gradient_as_bucket_view_ = false;
};

class DistributedDataParallel : public Module {
 public:
  explicit DistributedDataParallel(std::shared_ptr<Module> module,
                                   const DistributedDataParallelOptions& options = {});
  ~DistributedDataParallel() override;

  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "DistributedDataParallel"; }

  /// The wrapped module (registered as child "module", so names read "module.fc.weight").
  const std::shared_ptr<Module>& module() const { return module_; }

  /// Gradient accumulation without communication: forwards run while the guard lives are
  /// not reduced (their backward only accumulates .grad locally).
  class NoSyncGuard {
   public:
    explicit NoSyncGuard(DistributedDataParallel& ddp) : ddp_(ddp), prev_(ddp.sync_) { ddp.sync_ = false; }
    ~NoSyncGuard() { ddp_.sync_ = prev_; }
    NoSyncGuard(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(const NoSyncGuard&) = delete;

   private:
    DistributedDataParallel& ddp_;
    bool prev_;
  };
  [[nodiscard]] NoSyncGuard no_sync() { return NoSyncGuard(*this); }

  /// Number of buckets and the parameter names in each (for tests and logging).
  std::vector<std::vector<std::string>> bucket_layout() const;
  /// In the last synchronized backward: how many buckets started their all-reduce while
  /// other parameters were still waiting for their gradients (communication overlapping
  /// the rest of backward).
  int64_t buckets_launched_early() const { return launched_early_; }

 private:
  struct Bucket;
  struct Entry;
  void build_buckets();
  void on_grad_ready(size_t entry);
  void launch_ready();
  void finish_backward();

  std::shared_ptr<Module> module_;
  DistributedDataParallelOptions options_;
  std::vector<std::unique_ptr<Entry>> entries_;   // one per parameter
  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::unique_ptr<dist::ReduceBuffers> reduce_;  // the buckets' flat buffers
  std::vector<uint64_t> hook_ids_;
  bool sync_ = true;    // not inside no_sync()
  bool armed_ = false;  // a synchronized forward ran; its backward reduces
  bool callback_queued_ = false;
  size_t ready_count_ = 0;     // parameters whose gradient arrived in this backward
  size_t next_bucket_ = 0;     // buckets start in index order: the next one to start
  int64_t launched_early_ = 0;  // see buckets_launched_early()
};

}  // namespace kern::nn
