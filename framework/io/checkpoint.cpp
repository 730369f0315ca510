// Checkpoint files on top of safetensors (see kern/io/checkpoint.hpp).
#include <kern/io/checkpoint.hpp>

#include <kern/generator.hpp>

namespace kern::io {

namespace {
constexpr const char* kFormat = "kern-checkpoint-1";
constexpr const char* kModel = "model.";
constexpr const char* kOptim = "optim.";

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }
}  // namespace

void write_checkpoint(const std::string& path, const Checkpoint& ck) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, t] : ck.model) tensors.emplace_back(kModel + name, t.detach());
  for (auto& [name, t] : ck.optimizer) tensors.emplace_back(kOptim + name, t.detach());
  std::map<std::string, std::string> meta;
  for (auto& [k, v] : ck.metadata) {
    KERN_CHECK(!starts_with(k, "kern."), "save_checkpoint: metadata key '", k, "' uses the reserved prefix 'kern.'");
    meta[k] = v;
  }
  meta["kern.format"] = kFormat;
  meta["kern.step"] = std::to_string(ck.step);
  if (!ck.rng_state.empty()) meta["kern.rng_state"] = ck.rng_state;
  save_safetensors(path, tensors, meta);
}

Checkpoint read_checkpoint(const std::string& path) {
  SafetensorsFile f = load_safetensors(path);
  auto it = f.metadata.find("kern.format");
  KERN_CHECK(it != f.metadata.end(), "load_checkpoint: ", path,
             " is not a kern checkpoint (no kern.format in its metadata); for a plain state_dict use "
             "io::load_safetensors");
  KERN_CHECK(it->second == kFormat, "load_checkpoint: ", path, " has format '", it->second, "', expected '", kFormat,
             "'");
  Checkpoint ck;
  for (auto& [name, t] : f.tensors) {
    if (starts_with(name, kModel)) ck.model.emplace_back(name.substr(6), t);
    else if (starts_with(name, kOptim)) ck.optimizer.emplace_back(name.substr(6), t);
    else throw Error("load_checkpoint: " + path + ": unexpected tensor '" + name + "' (expected model.* or optim.*)");
  }
  auto step = f.metadata.find("kern.step");
  KERN_CHECK(step != f.metadata.end(), "load_checkpoint: ", path, ": missing kern.step");
  try {
    size_t used = 0;
    ck.step = std::stoll(step->second, &used);
    if (used != step->second.size()) throw std::invalid_argument("trailing characters");
  } catch (const std::exception&) {
    throw Error("load_checkpoint: " + path + ": kern.step '" + step->second + "' is not an integer");
  }
  if (auto r = f.metadata.find("kern.rng_state"); r != f.metadata.end()) ck.rng_state = r->second;
  for (auto& [k, v] : f.metadata)
    if (!starts_with(k, "kern.")) ck.metadata[k] = v;
  return ck;
}

void capture_rng(Checkpoint& ck) { ck.rng_state = default_generator().state(); }

void restore_rng(const Checkpoint& ck) {
  if (!ck.rng_state.empty()) default_generator().set_state(ck.rng_state);
}

}  // namespace kern::io
