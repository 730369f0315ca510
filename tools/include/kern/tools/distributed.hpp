#pragma once
// Distributed curvature and kernel instruments (issue 15): the Hessian and the empirical NTK
// of a batch sharded across MPI ranks (kern::dist). Compiled into kern_tools_dist, built only
// with KERN_WITH_MPI; link kern::kern_tools_dist (it brings kern_dist). kern_tools itself
// stays free of MPI. Every function here is collective: every rank calls it, in the same
// order, with the same arguments except the rank-local batch.
//
//   dist::Environment env(argc, argv);
//   auto [b, e] = tools::shard_range(N, dist::rank(), dist::world_size());
//   tools::DistributedHessian H(model, x.narrow(0, b, e - b), y.narrow(0, b, e - b),
//                               tools::mean_cross_entropy);
//   auto top = tools::power_iteration(H, {.k = 1});   // the full batch's sharpness
//   auto tr = tools::hutchinson_trace(H);             // same probes on every rank (seed)
//   Tensor K = tools::distributed_ntk(model, x);      // [N*O, N*O] on every rank
//
// The Hessian: rank r holds n_r of the N = sum_r n_r examples and builds the graph of
//   L_r = (n_r / N) * criterion(model(x_r), y_r)
// so that sum_r L_r is the full-batch mean loss L (criterion must be a mean over examples,
// as mean_cross_entropy and half_mean_squared_error are). H v = sum_r H_r v: apply() is the
// local double backward followed by ONE sum all-reduce of the [P] product. The solvers
// (power_iteration, lanczos, hutchinson_trace, slq_density) run unchanged on it: their random
// vectors come from the same seed on every rank, every reduction they do is on replicated
// vectors, so every rank follows the same iterates and returns the same result. The model
// must hold the same parameters on every rank (e.g. after DistributedDataParallel's broadcast).
#include <kern/tools/hessian.hpp>
#include <kern/tools/ntk.hpp>

#include <memory>
#include <utility>

namespace kern::tools {

/// The contiguous shard [begin, end) of n items that `rank` of `world` owns: the first
/// n % world ranks get one item more (sizes differ by at most one).
std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int world);

/// sum over ranks of a rank-local operator: apply(v) = all_reduce(local.apply(v)), one
/// all-reduce per product. `local` must outlive this operator and have the same size and
/// dtype on every rank (checked at construction).
class AllReduceOperator : public SymmetricOperator {
 public:
  explicit AllReduceOperator(SymmetricOperator& local);
  int64_t size() const override { return local_.size(); }
  DType dtype() const override { return local_.dtype(); }
  Tensor apply(const Tensor& v) override;

 private:
  SymmetricOperator& local_;
};

/// The Hessian of the full-batch mean loss of a batch sharded across ranks (see the header
/// comment). x_local [n_r, ...], y_local: this rank's examples (n_r >= 1 on every rank).
class DistributedHessian : public SymmetricOperator {
 public:
  DistributedHessian(nn::Module& model, const Tensor& x_local, const Tensor& y_local,
                     const Criterion& criterion, HessianOptions options = {});

  int64_t size() const override { return local_->size(); }
  DType dtype() const override { return local_->dtype(); }
  /// H v = sum_r H_r v: v [P] (the same on every rank) -> [P] (the same on every rank).
  Tensor apply(const Tensor& v) override;

  /// The full-batch mean loss (0-dim, detached; all-reduced at construction).
  Tensor loss() const { return loss_; }
  /// The full-batch gradient, flat [P] (all-reduced at construction).
  Tensor gradient() const { return gradient_; }
  /// N, the global number of examples.
  int64_t global_examples() const { return global_n_; }
  /// This rank's part: H_r (products on it are not reduced).
  Hessian& local() { return *local_; }

 private:
  std::unique_ptr<Hessian> local_;
  Tensor loss_, gradient_;
  int64_t global_n_ = 0;
};

/// Cross kernel K(x1, x2) [N1*O, N2*O] (as tools::ntk) with its rows computed across ranks:
/// x1 [N1, ...] and x2 [N2, ...] are the same on every rank (checked); rank r computes the
/// rows of its shard of x1 (shard_range) against all of x2, then one all_gather assembles K,
/// returned on every rank. N1 >= world_size().
Tensor distributed_ntk(nn::Module& model, const Tensor& x1, const Tensor& x2,
                       const NtkOptions& options = {}, NtkInfo* info = nullptr);
/// K(x, x) [N*O, N*O].
Tensor distributed_ntk(nn::Module& model, const Tensor& x, const NtkOptions& options = {},
                       NtkInfo* info = nullptr);
/// Output-traced versions (as tools::ntk_traced): [N1, N2].
Tensor distributed_ntk_traced(nn::Module& model, const Tensor& x1, const Tensor& x2,
                              const NtkOptions& options = {}, NtkInfo* info = nullptr);
Tensor distributed_ntk_traced(nn::Module& model, const Tensor& x, const NtkOptions& options = {},
                              NtkInfo* info = nullptr);

}  // namespace kern::tools
