// DataLoader: seeded epoch orders, batch assembly, and the prefetch thread (a bounded queue
// filled in batch order by one producer thread, drained by the iterating thread).
#include <kern/autograd.hpp>
#include <kern/data/dataloader.hpp>

#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

namespace kern::data {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Distinct streams for (seed, epoch) orders and (seed, epoch, batch) transforms.
uint64_t order_seed(uint64_t seed, int64_t epoch) {
  return splitmix64(splitmix64(seed) ^ splitmix64(static_cast<uint64_t>(epoch) + 0x5eed));
}
uint64_t transform_seed(uint64_t seed, int64_t epoch, int64_t batch) {
  return splitmix64(order_seed(seed, epoch) ^ splitmix64(static_cast<uint64_t>(batch) ^ 0x7a11ULL << 32));
}

struct Plan {
  std::shared_ptr<const Dataset> dataset;
  DataLoaderOptions options;
  int64_t epoch = 0;
  std::vector<int64_t> order;
  int64_t num_batches = 0;

  Batch make(int64_t b) const {
    NoGradGuard ng;
    const int64_t bs = options.batch_size;
    const int64_t start = b * bs;
    const int64_t count = std::min<int64_t>(bs, static_cast<int64_t>(order.size()) - start);
    Batch batch = dataset->get_batch(std::span<const int64_t>(order.data() + start, count));
    if (options.transform) {
      Generator gen(transform_seed(options.seed, epoch, b));
      batch = options.transform(std::move(batch), gen);
    }
    return batch;
  }
};

}  // namespace

namespace detail {

struct EpochRun {
  Plan plan;
  int64_t index = 0;  // current batch
  Batch current;

  // Prefetch state (unused without prefetch).
  std::thread worker;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<Batch, std::exception_ptr>> ready;  // batches next_consumed.. in order
  bool stop = false;
  int64_t depth = 2;

  explicit EpochRun(Plan p) : plan(std::move(p)) {
    depth = std::max<int64_t>(1, plan.options.prefetch_depth);
    if (plan.options.prefetch && plan.num_batches > 1)
      worker = std::thread([this] { produce(); });  // `this` outlives the thread (joined below)
    try {
      load_current();
    } catch (...) {
      shutdown();  // no destructor runs for a half-constructed object
      throw;
    }
  }

  ~EpochRun() { shutdown(); }

  void shutdown() {
    if (worker.joinable()) {
      {
        std::lock_guard lock(mu);
        stop = true;
      }
      cv.notify_all();
      worker.join();
    }
  }

  void produce() {
    for (int64_t b = 0; b < plan.num_batches; ++b) {
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stop || static_cast<int64_t>(ready.size()) < depth; });
        if (stop) return;
      }
      std::pair<Batch, std::exception_ptr> item;
      try {
        item.first = plan.make(b);
      } catch (...) {
        item.second = std::current_exception();
      }
      const bool failed = item.second != nullptr;
      {
        std::lock_guard lock(mu);
        ready.push_back(std::move(item));
      }
      cv.notify_all();
      if (failed) return;
    }
  }

  void load_current() {
    if (index >= plan.num_batches) {
      current = {};
      return;
    }
    if (!worker.joinable()) {
      current = plan.make(index);
      return;
    }
    std::pair<Batch, std::exception_ptr> item;
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return !ready.empty(); });
      item = std::move(ready.front());
      ready.pop_front();
    }
    cv.notify_all();
    if (item.second) {
      index = plan.num_batches;  // the epoch cannot continue past a failed batch
      std::rethrow_exception(item.second);
    }
    current = std::move(item.first);
  }
};

}  // namespace detail

// ---- DataLoader

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, DataLoaderOptions options)
    : dataset_(std::move(dataset)), options_(std::move(options)) {
  KERN_CHECK(dataset_ != nullptr, "DataLoader: null dataset");
  KERN_CHECK(options_.batch_size > 0, "DataLoader: batch_size must be > 0, got ",
             options_.batch_size);
  KERN_CHECK(options_.prefetch_depth > 0, "DataLoader: prefetch_depth must be > 0, got ",
             options_.prefetch_depth);
}

int64_t DataLoader::size() const {
  const int64_t n = dataset_->size(), bs = options_.batch_size;
  return options_.drop_last ? n / bs : (n + bs - 1) / bs;
}

void DataLoader::set_epoch(int64_t e) {
  KERN_CHECK(e >= 0, "DataLoader: set_epoch: negative epoch ", e);
  next_epoch_ = e;
}

std::vector<int64_t> DataLoader::order(int64_t epoch) const {
  const int64_t n = dataset_->size();
  std::vector<int64_t> out(static_cast<size_t>(n));
  if (!options_.shuffle) {
    for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = i;
    return out;
  }
  Generator gen(order_seed(options_.seed, epoch));
  Tensor perm = randperm(n, &gen);
  const int64_t* p = perm.data_ptr<int64_t>();
  std::copy(p, p + n, out.begin());
  return out;
}

Batch DataLoader::get(int64_t epoch, int64_t b) const {
  KERN_CHECK(b >= 0 && b < size(), "DataLoader: batch ", b, " out of range (", size(),
             " batches per epoch)");
  Plan plan{dataset_, options_, epoch, order(epoch), size()};
  return plan.make(b);
}

DataLoader::Iterator DataLoader::start(int64_t epoch) const {
  Plan plan{dataset_, options_, epoch, order(epoch), size()};
  return Iterator(std::make_shared<detail::EpochRun>(std::move(plan)));
}

DataLoader::Iterator DataLoader::begin() { return start(next_epoch_++); }

DataLoader::Iterator DataLoader::EpochRange::begin() const { return loader_->start(epoch_); }
int64_t DataLoader::EpochRange::size() const { return loader_->size(); }

// ---- Iterator

Batch& DataLoader::Iterator::operator*() const {
  KERN_CHECK(run_ && run_->index < run_->plan.num_batches,
             "DataLoader: dereferencing an iterator past the end of the epoch");
  return run_->current;
}

DataLoader::Iterator& DataLoader::Iterator::operator++() {
  KERN_CHECK(run_ && run_->index < run_->plan.num_batches,
             "DataLoader: incrementing an iterator past the end of the epoch");
  ++run_->index;
  run_->load_current();
  return *this;
}

bool DataLoader::Iterator::operator==(Sentinel) const {
  return !run_ || run_->index >= run_->plan.num_batches;
}

int64_t DataLoader::Iterator::index() const { return run_ ? run_->index : 0; }

}  // namespace kern::data
