#pragma once
// data::DistributedSampler: each rank's share of a dataset's indices for one epoch
// (PyTorch's torch.utils.data.DistributedSampler). Pure index arithmetic, no MPI: rank and
// num_replicas are given (dist::rank(), dist::world_size() in a distributed program).
//
// Epoch e: the order is randperm(size) from Generator(seed + e) (or 0..size-1 without
// shuffle); every rank computes the same order from the shared seed. Then
//   drop_last = false: the order is padded by repeating its head up to a multiple of
//                      num_replicas (a few indices are seen twice; every rank gets ceil(size/R));
//   drop_last = true:  the tail is dropped (every rank gets floor(size/R));
// and rank r takes positions r, r + R, r + 2R, ... So every rank has the same number of
// samples (hence of batches: the collectives of DDP stay matched), and with drop_last the
// ranks' shares are disjoint.
//   data::DistributedSampler sampler(train.size(), {.num_replicas = n, .rank = r, .seed = 0});
//   sampler.set_epoch(epoch);
//   for (auto& idx : sampler.batches(64)) { auto [x, y] = train.get_batch(idx); ... }
#include <cstdint>
#include <vector>

namespace kern::data {

struct DistributedSamplerOptions {
  int64_t num_replicas = 1;
  int64_t rank = 0;
  bool shuffle = true;
  uint64_t seed = 0;
  bool drop_last = false;
};

class DistributedSampler {
 public:
  /// size: the dataset's number of examples (> 0 unless drop_last gives every rank 0).
  DistributedSampler(int64_t size, DistributedSamplerOptions options = {});
  /// The epoch whose order indices() gives (reshuffles when shuffle is on).
  void set_epoch(int64_t epoch);
  int64_t epoch() const { return epoch_; }
  /// This rank's indices for the current epoch, in order; num_samples() of them.
  std::vector<int64_t> indices() const;
  /// indices() cut into batches of batch_size (the last one smaller unless
  /// drop_last_batch).
  std::vector<std::vector<int64_t>> batches(int64_t batch_size, bool drop_last_batch = false) const;
  /// Samples per rank per epoch (the same on every rank).
  int64_t num_samples() const { return num_samples_; }
  /// num_samples() * num_replicas.
  int64_t total_size() const { return num_samples_ * options_.num_replicas; }

 private:
  int64_t size_;
  DistributedSamplerOptions options_;
  int64_t num_samples_;
  int64_t epoch_ = 0;
};

}  // namespace kern::data
