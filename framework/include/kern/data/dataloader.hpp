#pragma once
// DataLoader: batches of a Dataset in a seeded order, optionally transformed, optionally
// prepared one or more batches ahead on a background thread.
//
//   kern::data::DataLoader loader(train, {.batch_size = 128, .shuffle = true, .seed = 0});
//   for (int epoch = 0; epoch < 5; ++epoch)
//     for (auto& [x, y] : loader) { ... }   // each pass over the loader is the next epoch
//
// Determinism: epoch e shuffles with a Generator seeded from (seed, e), and the transform of
// batch b gets a Generator seeded from (seed, e, b). So the same seed gives the same batches,
// with or without prefetch, and a run can resume at any epoch (set_epoch). Batch b of epoch e
// is a pure function of (dataset, options, e, b).
//
// Prefetch: a background std::thread prepares up to prefetch_depth batches ahead. It stops and
// is joined when the iteration ends, when the loop is left early (break, exception: the
// iterator is destroyed), never later. An exception thrown while preparing a batch (e.g. by
// the transform) is rethrown by the iterator at that batch.
#include <kern/data/dataset.hpp>
#include <kern/generator.hpp>

#include <concepts>
#include <cstddef>
#include <functional>
#include <iterator>
#include <memory>

namespace kern::data {

/// A batch transform; `gen` is seeded per (seed, epoch, batch).
using Transform = std::function<Batch(Batch batch, Generator& gen)>;

struct DataLoaderOptions {
  int64_t batch_size = 128;
  bool shuffle = true;
  bool drop_last = false;   // drop a final batch smaller than batch_size
  uint64_t seed = 0;
  bool prefetch = true;     // prepare batches on a background thread
  Transform transform = {}; // applied to every batch (empty = none)
  int64_t prefetch_depth = 2;
};

namespace detail {
struct EpochRun;
}

class DataLoader {
 public:
  struct Sentinel {};

  /// An input iterator over one epoch's batches. Holds the epoch (and its prefetch thread).
  class Iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Batch;
    using difference_type = std::ptrdiff_t;
    using reference = Batch&;
    using pointer = Batch*;

    Iterator() = default;
    explicit Iterator(std::shared_ptr<detail::EpochRun> run) : run_(std::move(run)) {}
    Batch& operator*() const;
    Batch* operator->() const { return &**this; }
    Iterator& operator++();
    void operator++(int) { ++*this; }
    bool operator==(Sentinel) const;
    /// The index of the current batch within the epoch.
    int64_t index() const;

   private:
    std::shared_ptr<detail::EpochRun> run_;
  };

  /// The batches of one given epoch (iterate it like the loader).
  class EpochRange {
   public:
    Iterator begin() const;
    Sentinel end() const { return {}; }
    int64_t size() const;

   private:
    friend class DataLoader;
    EpochRange(const DataLoader* loader, int64_t epoch) : loader_(loader), epoch_(epoch) {}
    const DataLoader* loader_;
    int64_t epoch_;
  };

  /// Takes a copy of the dataset (datasets share their tensors, so this is cheap).
  template <typename D>
    requires std::derived_from<D, Dataset>
  DataLoader(D dataset, DataLoaderOptions options = {})
      : DataLoader(std::shared_ptr<const Dataset>(std::make_shared<D>(std::move(dataset))),
                   std::move(options)) {}
  DataLoader(std::shared_ptr<const Dataset> dataset, DataLoaderOptions options = {});

  /// Number of batches per epoch.
  int64_t size() const;
  const Dataset& dataset() const { return *dataset_; }
  const DataLoaderOptions& options() const { return options_; }

  /// Starts the next epoch (then advances the epoch counter).
  Iterator begin();
  Sentinel end() const { return {}; }
  /// The batches of epoch `e`, without touching the epoch counter.
  EpochRange epoch(int64_t e) const { return EpochRange(this, e); }
  /// The epoch the next begin() runs (0 for a new loader).
  int64_t next_epoch() const { return next_epoch_; }
  void set_epoch(int64_t e);

  /// The order in which epoch `e` visits the examples.
  std::vector<int64_t> order(int64_t epoch) const;
  /// Batch `b` of epoch `e` computed directly on this thread.
  Batch get(int64_t epoch, int64_t b) const;

 private:
  Iterator start(int64_t epoch) const;
  std::shared_ptr<const Dataset> dataset_;
  DataLoaderOptions options_;
  int64_t next_epoch_ = 0;
};

}  // namespace kern::data
