// data::DistributedSampler: per-rank shards of a seeded per-epoch order (see the header).
#include <kern/data/distributed_sampler.hpp>
#include <kern/error.hpp>
#include <kern/generator.hpp>
#include <kern/tensor.hpp>

#include <algorithm>

namespace kern::data {

DistributedSampler::DistributedSampler(int64_t size, DistributedSamplerOptions options)
    : size_(size), options_(options) {
  const auto& o = options_;
  KERN_CHECK(o.num_replicas >= 1, "DistributedSampler: num_replicas must be >= 1, got ", o.num_replicas);
  KERN_CHECK(o.rank >= 0 && o.rank < o.num_replicas, "DistributedSampler: rank ", o.rank,
             " is out of range [0, ", o.num_replicas, ")");
  KERN_CHECK(size >= 0, "DistributedSampler: negative dataset size ", size);
  num_samples_ = o.drop_last ? size / o.num_replicas : (size + o.num_replicas - 1) / o.num_replicas;
  KERN_CHECK(num_samples_ > 0, "DistributedSampler: a dataset of ", size, " examples gives no sample to each of ",
             o.num_replicas, " replicas", o.drop_last ? " with drop_last" : "");
}

void DistributedSampler::set_epoch(int64_t epoch) {
  KERN_CHECK(epoch >= 0, "DistributedSampler: set_epoch: negative epoch ", epoch);
  epoch_ = epoch;
}

std::vector<int64_t> DistributedSampler::indices() const {
  std::vector<int64_t> order(static_cast<size_t>(size_));
  if (options_.shuffle) {
    Generator gen(options_.seed + static_cast<uint64_t>(epoch_));
    Tensor perm = randperm(size_, &gen);
    order = perm.to_vector<int64_t>();
  } else {
    for (int64_t i = 0; i < size_; ++i) order[static_cast<size_t>(i)] = i;
  }
  const int64_t total = total_size();
  // pad by repeating the head (wrapping as often as needed), or drop the tail
  for (int64_t i = size_; i < total; ++i) order.push_back(order[static_cast<size_t>((i - size_) % size_)]);
  order.resize(static_cast<size_t>(total));
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(num_samples_));
  for (int64_t i = options_.rank; i < total; i += options_.num_replicas) mine.push_back(order[static_cast<size_t>(i)]);
  return mine;
}

std::vector<std::vector<int64_t>> DistributedSampler::batches(int64_t batch_size, bool drop_last_batch) const {
  KERN_CHECK(batch_size > 0, "DistributedSampler::batches: batch_size must be > 0, got ", batch_size);
  auto idx = indices();
  std::vector<std::vector<int64_t>> out;
  for (size_t s = 0; s < idx.size(); s += static_cast<size_t>(batch_size)) {
    size_t e = std::min(idx.size(), s + static_cast<size_t>(batch_size));
    if (drop_last_batch && e - s < static_cast<size_t>(batch_size)) break;
    out.emplace_back(idx.begin() + static_cast<std::ptrdiff_t>(s), idx.begin() + static_cast<std::ptrdiff_t>(e));
  }
  return out;
}

}  // namespace kern::data
