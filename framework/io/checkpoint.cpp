// Checkpoint files on top of safetensors (see kern/io/checkpoint.hpp).
#include <kern/io/checkpoint.hpp>

#include <kern/autograd.hpp>
#include <kern/generator.hpp>

#include <charconv>
#include <unordered_map>

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
  const std::string& text = step->second;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), ck.step);
  KERN_CHECK(ec == std::errc() && end == text.data() + text.size(), "load_checkpoint: ", path,
             ": kern.step '", text.substr(0, 40), "' is not an integer");
  KERN_CHECK(ck.step >= 0, "load_checkpoint: ", path, ": kern.step ", ck.step,
             " is negative (a step count starts at 0)");
  if (auto r = f.metadata.find("kern.rng_state"); r != f.metadata.end()) {
    ck.rng_state = r->second;
    try {
      checkpoint_detail::checkpoint_generator(ck);
    } catch (const Error& e) {
      throw Error(::kern::detail::concat("load_checkpoint: ", path, ": kern.rng_state: ", e.what()));
    }
  }
  for (auto& [k, v] : f.metadata)
    if (!starts_with(k, "kern.")) ck.metadata[k] = v;
  return ck;
}

namespace checkpoint_detail {

NamedTensors convert_to_targets(const NamedTensors& given, const NamedTensors& targets,
                                const std::string& path) {
  std::unordered_map<std::string, DType> dtypes;
  for (const auto& [name, t] : targets)
    if (t.defined()) dtypes.emplace(name, t.dtype());
  NoGradGuard no_grad;
  NamedTensors out;
  out.reserve(given.size());
  for (const auto& [name, t] : given) {
    auto it = dtypes.find(name);
    if (it == dtypes.end() || !t.defined() || t.dtype() == it->second) {
      out.emplace_back(name, t);  // unknown keys and shapes are the model's to report
      continue;
    }
    try {
      out.emplace_back(name, t.to(it->second));
    } catch (const Error& e) {
      throw Error(::kern::detail::concat("load_checkpoint: ", path, ": tensor 'model.", name, "': ", e.what()));
    }
  }
  return out;
}

std::optional<Generator> checkpoint_generator(const Checkpoint& ck) {
  if (ck.rng_state.empty()) return std::nullopt;
  Generator g;
  g.set_state(ck.rng_state);
  return g;
}

}  // namespace checkpoint_detail

void capture_rng(Checkpoint& ck) { ck.rng_state = default_generator().state(); }

void restore_rng(const Checkpoint& ck) {
  if (auto g = checkpoint_detail::checkpoint_generator(ck)) default_generator() = *g;
}

}  // namespace kern::io
