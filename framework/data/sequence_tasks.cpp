// Synthetic long-range sequence tasks, drawn sequentially from one Generator per call.
#include <kern/data/sequence_tasks.hpp>

#include <kern/error.hpp>
#include <kern/generator.hpp>

#include <vector>

namespace kern::data {

namespace {

// Uniform integer in [0, n) (n >= 1); the modulo bias is below 2^-40 for the small n used here.
int64_t uniform_int(Generator& g, int64_t n) {
  return static_cast<int64_t>(g.next_u64() % static_cast<uint64_t>(n));
}

}  // namespace

TensorDataset copy_first_task(const CopyFirstOptions& o) {
  KERN_CHECK(o.n >= 1, "copy_first_task: n (examples) must be >= 1, got ", o.n);
  KERN_CHECK(o.length >= 1, "copy_first_task: length must be >= 1, got ", o.length);
  KERN_CHECK(o.vocab >= 2, "copy_first_task: vocab must be >= 2, got ", o.vocab);
  Generator g(o.seed);
  std::vector<int64_t> x(static_cast<size_t>(o.n * o.length)), y(static_cast<size_t>(o.n));
  for (int64_t i = 0; i < o.n; ++i) {
    for (int64_t t = 0; t < o.length; ++t) x[static_cast<size_t>(i * o.length + t)] = uniform_int(g, o.vocab);
    y[static_cast<size_t>(i)] = x[static_cast<size_t>(i * o.length)];
  }
  return TensorDataset(from_vector<int64_t>(x, {o.n, o.length}), from_vector<int64_t>(y, {o.n}));
}

TensorDataset adding_task(const AddingOptions& o) {
  KERN_CHECK(o.n >= 1, "adding_task: n (examples) must be >= 1, got ", o.n);
  KERN_CHECK(o.length >= 2, "adding_task: length must be >= 2 (one marker per half), got ", o.length);
  Generator g(o.seed);
  const int64_t L = o.length, half = L / 2;
  std::vector<float> x(static_cast<size_t>(o.n * L * 2), 0.0f), y(static_cast<size_t>(o.n));
  for (int64_t i = 0; i < o.n; ++i) {
    float* row = x.data() + i * L * 2;
    for (int64_t t = 0; t < L; ++t) row[t * 2] = static_cast<float>(g.uniform());
    const int64_t a = uniform_int(g, half), b = half + uniform_int(g, L - half);
    row[a * 2 + 1] = 1.0f;
    row[b * 2 + 1] = 1.0f;
    y[static_cast<size_t>(i)] = row[a * 2] + row[b * 2];
  }
  return TensorDataset(from_vector<float>(x, {o.n, L, 2}), from_vector<float>(y, {o.n}));
}

TensorDataset delayed_copy_task(const DelayedCopyOptions& o) {
  KERN_CHECK(o.n >= 1, "delayed_copy_task: n (examples) must be >= 1, got ", o.n);
  KERN_CHECK(o.length >= 1, "delayed_copy_task: length must be >= 1, got ", o.length);
  KERN_CHECK(o.vocab >= 2, "delayed_copy_task: vocab must be >= 2, got ", o.vocab);
  KERN_CHECK(o.delay >= 0 && o.delay < o.length, "delayed_copy_task: delay must be in [0, length = ", o.length,
             "), got ", o.delay);
  Generator g(o.seed);
  const int64_t L = o.length;
  std::vector<int64_t> x(static_cast<size_t>(o.n * L)), y(static_cast<size_t>(o.n * L), 0);
  for (int64_t i = 0; i < o.n; ++i) {
    for (int64_t t = 0; t < L; ++t) x[static_cast<size_t>(i * L + t)] = 1 + uniform_int(g, o.vocab - 1);
    for (int64_t t = o.delay; t < L; ++t)
      y[static_cast<size_t>(i * L + t)] = x[static_cast<size_t>(i * L + t - o.delay)];
  }
  return TensorDataset(from_vector<int64_t>(x, {o.n, L}), from_vector<int64_t>(y, {o.n, L}));
}

}  // namespace kern::data
