// data::DistributedSampler without MPI: the ranks' shares are computed in one process.
// The expectations are set arithmetic on 0..N-1 (coverage, disjointness, sizes), not kern
// output.
#include "gradcheck.hpp"

#include <kern/data/distributed_sampler.hpp>

#include <algorithm>
#include <map>
#include <set>

using namespace kern;
using data::DistributedSampler;
using data::DistributedSamplerOptions;

namespace {
std::vector<std::vector<int64_t>> shares(int64_t n, int64_t replicas, int64_t epoch, bool drop_last, bool shuffle = true) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t r = 0; r < replicas; ++r) {
    DistributedSampler s(n, {.num_replicas = replicas, .rank = r, .shuffle = shuffle, .seed = 7, .drop_last = drop_last});
    s.set_epoch(epoch);
    out.push_back(s.indices());
  }
  return out;
}
}  // namespace

TEST_CASE("DistributedSampler: every index exactly once per epoch across ranks, new order each epoch",
          "[sampler]") {
  for (int64_t replicas : {1, 2, 3, 4}) {
    const int64_t n = 24;  // divisible by every replica count: no padding, no drop
    std::vector<int64_t> prev;
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
      auto parts = shares(n, replicas, epoch, false);
      std::vector<int64_t> all;
      for (auto& p : parts) {
        REQUIRE(static_cast<int64_t>(p.size()) == n / replicas);
        all.insert(all.end(), p.begin(), p.end());
      }
      std::vector<int64_t> sorted = all;
      std::sort(sorted.begin(), sorted.end());
      for (int64_t i = 0; i < n; ++i) REQUIRE(sorted[static_cast<size_t>(i)] == i);
      if (epoch > 0) REQUIRE(all != prev);  // reshuffled
      prev = all;
    }
  }
}

TEST_CASE("DistributedSampler: padding repeats the head, drop_last drops the tail, shares are equal",
          "[sampler]") {
  const int64_t n = 11, replicas = 3;
  auto padded = shares(n, replicas, 0, false);
  std::map<int64_t, int> count;
  for (auto& p : padded) {
    REQUIRE(p.size() == 4u);  // ceil(11 / 3)
    for (auto i : p) ++count[i];
  }
  REQUIRE(count.size() == static_cast<size_t>(n));  // all covered
  int twice = 0;
  for (auto& [i, c] : count) {
    REQUIRE((c == 1 || c == 2));
    twice += c == 2;
  }
  REQUIRE(twice == 1);  // 12 - 11
  auto dropped = shares(n, replicas, 0, true);
  std::set<int64_t> seen;
  for (auto& p : dropped) {
    REQUIRE(p.size() == 3u);  // floor(11 / 3)
    for (auto i : p) REQUIRE(seen.insert(i).second);  // disjoint
  }
  // without shuffle: rank r takes r, r + R, ... of 0..n-1 padded with 0..
  auto plain = shares(n, replicas, 5, false, false);
  REQUIRE(plain[0] == std::vector<int64_t>{0, 3, 6, 9});
  REQUIRE(plain[2] == std::vector<int64_t>{2, 5, 8, 0});
  DistributedSampler s(n, {.num_replicas = replicas, .rank = 1, .shuffle = false});
  auto b = s.batches(3);
  REQUIRE(b.size() == 2u);
  REQUIRE(b[1] == std::vector<int64_t>{10});
}

TEST_CASE("DistributedSampler: bad arguments are errors", "[sampler]") {
  REQUIRE_THROWS_WITH(DistributedSampler(10, {.num_replicas = 2, .rank = 2}), Catch::Contains("rank 2"));
  REQUIRE_THROWS_WITH(DistributedSampler(10, {.num_replicas = 0}), Catch::Contains("num_replicas"));
  REQUIRE_THROWS_WITH(DistributedSampler(1, {.num_replicas = 2, .rank = 0, .drop_last = true}),
                      Catch::Contains("no sample"));
}
