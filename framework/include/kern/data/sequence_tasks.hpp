#pragma once
// Synthetic sequence tasks whose answer depends on inputs far back in the sequence: the
// standard probes of long-range memory for sequence models (long convolutions, SSMs, RNNs).
// Every task is generated from its seed alone (same seed, same data, on any thread count).
//
//   auto train = kern::data::copy_first_task({.n = 4096, .length = 128, .vocab = 8, .seed = 0});
//   auto [x, y] = train.batch(0, 32);   // x: int64 [32, 128], y: int64 [32]
#include <kern/data/dataset.hpp>

#include <cstdint>

namespace kern::data {

struct CopyFirstOptions {
  int64_t n = 1024;      // examples
  int64_t length = 128;  // sequence length L >= 1
  int64_t vocab = 8;     // tokens are uniform in [0, vocab), vocab >= 2
  uint64_t seed = 0;
};
/// Copy the first token: x int64 [n, L] uniform tokens, y int64 [n] = x[:, 0]. A causal model
/// reading the last position must carry the first token across L - 1 steps; chance accuracy
/// is 1 / vocab.
TensorDataset copy_first_task(const CopyFirstOptions& options);

struct AddingOptions {
  int64_t n = 1024;
  int64_t length = 128;  // L >= 2
  uint64_t seed = 0;
};
/// The adding problem (Hochreiter & Schmidhuber 1997): x float32 [n, L, 2], channel 0 uniform
/// in [0, 1), channel 1 zero except one 1 in each half of the sequence; y float32 [n] = the
/// sum of the two marked values. Predicting the mean (1) gives an MSE of 1/6.
TensorDataset adding_task(const AddingOptions& options);

struct DelayedCopyOptions {
  int64_t n = 1024;
  int64_t length = 128;  // L >= 1
  int64_t vocab = 8;     // input tokens are uniform in [1, vocab), vocab >= 2; 0 is "blank"
  int64_t delay = 32;    // 0 <= delay < L
  uint64_t seed = 0;
};
/// Per-token delayed copy: x int64 [n, L] tokens in [1, vocab); y int64 [n, L] with
/// y[:, t] = x[:, t - delay] for t >= delay and 0 (blank) before. Chance accuracy on the
/// copied positions is 1 / (vocab - 1).
TensorDataset delayed_copy_task(const DelayedCopyOptions& options);

}  // namespace kern::data
