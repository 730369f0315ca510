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
//
// Parameterization records (kern/param) are part of the model: saving an nn::Module stores
// param::records(model) as JSON under the metadata key "kern.param", and loading compares
// them with the model's before anything is changed (RecordsPolicy): a muP checkpoint does
// not load silently into a model without muP. io::save_state_dict / io::load_state_dict do the
// same for the model alone (a plain safetensors state_dict with the records in its metadata).
#include <kern/generator.hpp>
#include <kern/io/safetensors.hpp>
#include <kern/nn/module.hpp>
#include <kern/param/param.hpp>

#include <type_traits>

#include <cstdint>
#include <map>
#include <optional>
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
  /// The model's parameterization records (metadata "kern.param"); nullopt: the file has none.
  std::optional<param::Records> records;
};

/// What loading does with the parameterization records a file carries.
enum class RecordsPolicy {
  /// Default. The file's records and the model's must agree in behaviour
  /// (param::compare_behaviour: forward, depth, lr and weight-decay multipliers; records that
  /// change nothing count as absent), else kern::Error listing every difference and nothing
  /// is loaded. A muP checkpoint into a model built without param::apply throws.
  Check,
  /// The model takes the file's records (param::set_records; no record when the file has
  /// none): load a muP checkpoint into a fresh create_model(...) of the same shapes.
  Apply,
  /// Records are neither checked nor changed (the file's are ignored).
  Ignore,
};

struct LoadCheckpointOptions {
  bool restore_generator = true;  // restore the default generator from the file
  RecordsPolicy records = RecordsPolicy::Check;
};

/// Writes a checkpoint atomically; throws kern::Error (and leaves `path` untouched) on failure.
void write_checkpoint(const std::string& path, const Checkpoint& ck);
/// Reads and validates a checkpoint written by write_checkpoint: the format, a non-negative
/// integer kern.step, and a well-formed kern.rng_state (errors name the file and the field).
Checkpoint read_checkpoint(const std::string& path);

/// Validates `stored` (a file's records, nullopt when it has none) against `model`'s under
/// `policy` without changing anything; throws kern::Error naming `path` and every
/// difference (Check), or a record name the model lacks (Apply).
void check_records(const std::string& path, const std::optional<param::Records>& stored, const nn::Module& model,
                   RecordsPolicy policy);
/// After check_records passed: gives `model` the file's records under RecordsPolicy::Apply.
void commit_records(const std::optional<param::Records>& stored, nn::Module& model, RecordsPolicy policy);

/// Captures the default generator's state into `ck.rng_state`.
void capture_rng(Checkpoint& ck);
/// Restores the default generator from `ck.rng_state` (no-op when empty).
void restore_rng(const Checkpoint& ck);

namespace checkpoint_detail {
/// `given` with each tensor converted to the dtype of the same-named tensor of `targets`
/// (a module's state_dict), so that loading it only copies. A conversion that cannot be
/// done (NaN into an int64 buffer) throws naming `path` and the key.
NamedTensors convert_to_targets(const NamedTensors& given, const NamedTensors& targets,
                                const std::string& path);
/// The generator a checkpoint's RNG state describes (nullopt when it has none).
std::optional<Generator> checkpoint_generator(const Checkpoint& ck);
}  // namespace checkpoint_detail

template <typename Model, typename Optim>
void save_checkpoint(const std::string& path, const Model& model, const Optim& optim, int64_t step = 0,
                     std::map<std::string, std::string> metadata = {}) {
  Checkpoint ck;
  for (auto& kv : model.state_dict()) ck.model.emplace_back(kv.first, kv.second);
  for (auto& kv : optim.state_dict()) ck.optimizer.emplace_back(kv.first, kv.second);
  ck.step = step;
  ck.metadata = std::move(metadata);
  if constexpr (std::is_base_of_v<nn::Module, Model>) {
    param::Records recs = param::records(model);
    if (!recs.empty()) ck.records = std::move(recs);
  }
  capture_rng(ck);
  write_checkpoint(path, ck);
}

namespace checkpoint_detail {
// load_checkpoint without the file name added to its errors.
template <typename Model, typename Optim>
int64_t load_all_or_nothing(const std::string& path, Model& model, Optim& optim, const LoadCheckpointOptions& options) {
  Checkpoint ck = read_checkpoint(path);  // format, step, RNG state, records
  std::optional<Generator> rng = options.restore_generator ? checkpoint_detail::checkpoint_generator(ck) : std::nullopt;
  if constexpr (std::is_base_of_v<nn::Module, Model>) check_records(path, ck.records, model, options.records);
  // Converted to the model's dtypes now, so that the model's own load (which validates every
  // key and shape before it copies anything) cannot fail half-way through its copies.
  const NamedTensors model_state = checkpoint_detail::convert_to_targets(ck.model, model.state_dict(), path);
  if constexpr (requires { optim.commit_state_dict(optim.prepare_state_dict(ck.optimizer)); }) {
    auto prepared = optim.prepare_state_dict(ck.optimizer);  // validated, nothing changed yet
    model.load_state_dict(model_state, true);                // the last step that can fail
    optim.commit_state_dict(std::move(prepared));
  } else {
    auto snapshot = optim.state_dict();
    optim.load_state_dict(ck.optimizer);
    try {
      model.load_state_dict(model_state, true);
    } catch (...) {
      optim.load_state_dict(snapshot);
      throw;
    }
  }
  if constexpr (std::is_base_of_v<nn::Module, Model>) commit_records(ck.records, model, options.records);
  if (rng) default_generator() = *rng;
  return ck.step;
}
}  // namespace checkpoint_detail

/// Loads model (strict) and optimizer state, restores the default generator, returns the
/// saved step. All or nothing: the file, the step, the RNG state, the parameterization
/// records (options.records), the optimizer state and the model state are all validated (and
/// converted) before anything is changed, so on any kern::Error the model, its records, the
/// optimizer and the generator are as they were.
/// (For an optimizer type without prepare_state_dict / commit_state_dict, its state is
/// loaded first and restored from a snapshot if the model then rejects its state.)
template <typename Model, typename Optim>
int64_t load_checkpoint(const std::string& path, Model& model, Optim& optim, const LoadCheckpointOptions& options = {}) {
  try {
    return checkpoint_detail::load_all_or_nothing(path, model, optim, options);
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find(path) != std::string::npos) throw;  // already names the file
    throw Error("load_checkpoint: " + path + ": " + what);
  }
}

// ---- the model alone: a safetensors state_dict (keys as named_parameters / buffers, as
// PyTorch's safetensors.torch.save_file(model.state_dict())) plus the records

/// Writes `model`'s state_dict and its parameterization records (metadata "kern.param") to
/// `path` atomically, with the user's `metadata` (keys must not start with "kern.").
void save_state_dict(const std::string& path, const nn::Module& model, const std::map<std::string, std::string>& metadata = {});
/// Loads a state_dict file into `model` (strict: every key and shape must match; dtypes are
/// converted as copy_ does), checking the file's records under `records` first. All or
/// nothing. A file without "kern.param" (e.g. written by PyTorch) has no records.
void load_state_dict(const std::string& path, nn::Module& model, RecordsPolicy records = RecordsPolicy::Check);

}  // namespace kern::io
