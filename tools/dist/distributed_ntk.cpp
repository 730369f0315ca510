// distributed_ntk: the empirical NTK with its rows sharded across ranks, assembled by one
// all_gather (tools/include/kern/tools/distributed.hpp).
#include <kern/dist/dist.hpp>
#include <kern/ops/shape_ops.hpp>
#include <kern/tools/distributed.hpp>

#include <algorithm>
#include <functional>

namespace kern::tools {
namespace {

using Block = std::function<Tensor(const Tensor& x1_shard)>;

// Rank r computes block(x1[shard r]) [n_r * R, C] (R rows per example: O, or 1 when traced);
// shards differ in size by at most one, and all_gather wants one shape, so every block is
// padded with zero rows to the largest shard's and trimmed after the gather.
Tensor gather_rows(const char* op, const Tensor& x1, const Tensor& x2, const Block& block) {
  KERN_CHECK(x1.defined() && x2.defined() && x1.dim() >= 1 && x2.dim() >= 1, op,
             ": x1 and x2 must be [N, ...] tensors");
  dist::check_same_on_all_ranks(detail::concat(op, ": inputs differ across ranks (x1 and x2 must be replicated)"),
                                detail::concat("x1 ", x1.dtype(), " ", x1.shape(), ", x2 ", x2.dtype(), " ", x2.shape()));
  const int world = dist::world_size(), rank = dist::rank();
  const int64_t n1 = x1.size(0);
  KERN_CHECK(n1 >= world, op, ": x1 ", x1.shape(), " has fewer rows than the ", world, " ranks");
  auto [b, e] = shard_range(n1, rank, world);
  Tensor mine = block(x1.narrow(0, b, e - b)).contiguous();
  const int64_t rows_per_example = mine.size(0) / (e - b);
  const int64_t max_rows = shard_range(n1, 0, world).second * rows_per_example;  // rank 0's shard is the largest
  Tensor padded = mine;
  if (mine.size(0) < max_rows) {
    padded = cat({mine, zeros({max_rows - mine.size(0), mine.size(1)}, mine.dtype())}, 0);
  }
  auto all = dist::all_gather(padded);
  std::vector<Tensor> parts;
  for (int r = 0; r < world; ++r) {
    auto [rb, re] = shard_range(n1, r, world);
    parts.push_back(all[r].narrow(0, 0, (re - rb) * rows_per_example));
  }
  return cat(parts, 0);
}

}  // namespace

Tensor distributed_ntk(nn::Module& model, const Tensor& x1, const Tensor& x2, const NtkOptions& options,
                       NtkInfo* info) {
  return gather_rows("distributed_ntk", x1, x2,
                     [&](const Tensor& s) { return ntk(model, s, x2, options, info); });
}

Tensor distributed_ntk(nn::Module& model, const Tensor& x, const NtkOptions& options, NtkInfo* info) {
  return distributed_ntk(model, x, x, options, info);
}

Tensor distributed_ntk_traced(nn::Module& model, const Tensor& x1, const Tensor& x2,
                              const NtkOptions& options, NtkInfo* info) {
  return gather_rows("distributed_ntk_traced", x1, x2,
                     [&](const Tensor& s) { return ntk_traced(model, s, x2, options, info); });
}

Tensor distributed_ntk_traced(nn::Module& model, const Tensor& x, const NtkOptions& options, NtkInfo* info) {
  return distributed_ntk_traced(model, x, x, options, info);
}

}  // namespace kern::tools
