// DistributedHessian and AllReduceOperator: the Hessian of a batch sharded across ranks as a
// sum of per-rank Hessians, one all-reduce per product (tools/include/kern/tools/distributed.hpp).
#include <kern/dist/dist.hpp>
#include <kern/tools/distributed.hpp>

#include <string>

namespace kern::tools {

std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int world) {
  KERN_CHECK(world >= 1 && rank >= 0 && rank < world, "shard_range: rank ", rank, " of ", world);
  KERN_CHECK(n >= 0, "shard_range: negative size ", n);
  const int64_t base = n / world, extra = n % world;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

AllReduceOperator::AllReduceOperator(SymmetricOperator& local) : local_(local) {
  dist::check_same_on_all_ranks("AllReduceOperator: local operators differ across ranks",
                                detail::concat("size ", local.size(), ", dtype ", local.dtype()));
}

Tensor AllReduceOperator::apply(const Tensor& v) {
  Tensor out = local_.apply(v).contiguous();
  dist::all_reduce(out, dist::ReduceOp::Sum);
  ++products_;
  return out;
}

DistributedHessian::DistributedHessian(nn::Module& model, const Tensor& x_local, const Tensor& y_local,
                                       const Criterion& criterion, HessianOptions options) {
  // Every rank learns every shard size first, so that a bad shard throws the same error on
  // every rank (never one rank throwing while the others wait in a collective).
  const int64_t n_local = x_local.defined() && x_local.dim() > 0 ? x_local.size(0) : 0;
  auto counts = dist::all_gather(from_vector<int64_t>({n_local}, {1}));
  global_n_ = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    const int64_t c = counts[r].item<int64_t>();
    KERN_CHECK(c >= 1, "DistributedHessian: rank ", r, " has ", c,
               " examples (x_local must be [n_r, ...] with n_r >= 1 on every rank)");
    global_n_ += c;
  }
  const double weight = double(n_local) / double(global_n_);
  // L_r = (n_r / N) criterion(...): sum_r L_r is the full-batch mean loss.
  Criterion weighted = [&](const Tensor& out, const Tensor& y) { return criterion(out, y) * weight; };
  local_ = std::make_unique<Hessian>(model, x_local, y_local, weighted, options);
  dist::check_same_on_all_ranks("DistributedHessian: parameters differ across ranks",
                                detail::concat("P = ", local_->size(), ", dtype ", local_->dtype()));
  loss_ = local_->loss().contiguous().clone();
  dist::all_reduce(loss_, dist::ReduceOp::Sum);
  gradient_ = flatten_vectors(local_->gradient()).contiguous();
  dist::all_reduce(gradient_, dist::ReduceOp::Sum);
}

Tensor DistributedHessian::apply(const Tensor& v) {
  Tensor out = local_->apply(v).contiguous();
  dist::all_reduce(out, dist::ReduceOp::Sum);  // the one collective of a product
  ++products_;
  return out;
}

}  // namespace kern::tools
