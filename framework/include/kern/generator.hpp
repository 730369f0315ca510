#pragma once
// Seeded random numbers. The same seed gives the same numbers on every run and thread
// count: generation is sequential (mt19937_64), never split across threads.
#include <cstdint>
#include <random>
#include <string>

namespace kern {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : engine_(seed), seed_(seed) {}
  /// Restarts the stream: also drops a cached second Box-Muller normal, so that re-seeding
  /// after an odd number of normal() draws gives the same numbers as a fresh Generator(seed).
  void manual_seed(uint64_t seed) { engine_.seed(seed); seed_ = seed; has_spare_ = false; }
  uint64_t initial_seed() const { return seed_; }
  uint64_t next_u64() { return engine_(); }
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  /// Standard normal by Box-Muller (one value per call; the pair's second value is cached).
  double normal();
  /// The full engine state as text (for checkpoints) and back.
  std::string state() const;
  void set_state(const std::string& state);

 private:
  std::mt19937_64 engine_;
  uint64_t seed_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

/// The process-wide default generator used when an op is given none.
Generator& default_generator();
/// Seeds the default generator.
void manual_seed(uint64_t seed);

}  // namespace kern
