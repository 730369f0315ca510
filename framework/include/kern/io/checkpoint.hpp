#pragma once
// Training checkpoints: model state, optimizer state, step and the default generator's
// state in one safetensors file ("model.<name>", "optim.<key>" tensors; step, RNG state and
// user metadata in the header's __metadata__). Writes are atomic (temp file, fsync, rename):
// a crash mid-save leaves the previous checkpoint intact.
//
//   kern::io::save_checkpoint("run/last.safetensors", *model, opt, step);
//   int64_t step = kern::io::load_checkpoint("run/last.safetensors", *model, opt);
//
// The templates accept anything with state_dict() / load_state_dict(...) (nn::Module,
// optim::Optimizer), so framework/io does not depend on the layers above it.
#include <kern/io/safetensors.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace kern::io {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

struct Checkpoint {
  NamedTensors model;      // module state_dict
  NamedTensors optimizer;  // optimizer state_dict (may be empty)
  int64_t step = 0;
  std::string rng_state;   // kern::default_generator() state
  std::map<std::string, std::string> metadata;  // user entries (keys must not start with "kern.")
};

/// Writes a checkpoint atomically; throws kern::Error (and leaves `path` untouched) on failure.
void write_checkpoint(const std::string& path, const Checkpoint& ck);
/// Reads and validates a checkpoint written by write_checkpoint (errors name the file and field).
Checkpoint read_checkpoint(const std::string& path);

/// Captures the default generator's state into `ck.rng_state`.
void capture_rng(Checkpoint& ck);
/// Restores the default generator from `ck.rng_state` (no-op when empty).
void restore_rng(const Checkpoint& ck);

template <typename Model, typename Optim>
void save_checkpoint(const std::string& path, const Model& model, const Optim& optim, int64_t step = 0,
                     std::map<std::string, std::string> metadata = {}) {
  Checkpoint ck;
  for (auto& kv : model.state_dict()) ck.model.emplace_back(kv.first, kv.second);
  for (auto& kv : optim.state_dict()) ck.optimizer.emplace_back(kv.first, kv.second);
  ck.step = step;
  ck.metadata = std::move(metadata);
  capture_rng(ck);
  write_checkpoint(path, ck);
}

/// Loads model (strict) and optimizer state, restores the RNG, returns the saved step.
template <typename Model, typename Optim>
int64_t load_checkpoint(const std::string& path, Model& model, Optim& optim, bool restore_generator = true) {
  Checkpoint ck = read_checkpoint(path);
  model.load_state_dict(ck.model, true);
  optim.load_state_dict(ck.optimizer);
  if (restore_generator) restore_rng(ck);
  return ck.step;
}

}  // namespace kern::io
