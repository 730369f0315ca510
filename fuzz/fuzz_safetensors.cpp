// libFuzzer target: the safetensors reader. The same bytes go through the three read paths
// (from memory, mmap'ed from a file, copied from a file with pread), which must agree: all
// reject with kern::Error, or all load the same tensors and metadata. A loaded file must
// survive the operations `kern inspect` applies, and write + read must give it back.
#include <kern/io/safetensors.hpp>
#include <kern/kern.hpp>

#include <optional>
#include <tuple>
#include <vector>

#include "fuzz_util.hpp"

namespace {

using kern::io::SafetensorsFile;

// What the reader returned, in comparable form: per tensor name, dtype, shape, CRC-32.
using Digest = std::tuple<std::vector<std::tuple<std::string, kern::DType, kern::Shape, uint32_t>>,
                          std::map<std::string, std::string>>;

Digest digest(const SafetensorsFile& f) {
  Digest d;
  for (const auto& [name, t] : f.tensors)
    std::get<0>(d).emplace_back(name, t.dtype(), t.shape(), kern::io::checksum(t).crc32);
  std::get<1>(d) = f.metadata;
  return d;
}

template <typename Load>
std::optional<Digest> try_load(Load&& load) {
  try {
    return digest(load());
  } catch (const kern::Error&) {
    return std::nullopt;
  }
}

// Operations a user applies to loaded tensors; none may crash on any shape or value.
void exercise(const SafetensorsFile& f) {
  kern::NoGradGuard ng;
  for (const auto& [name, t] : f.tensors) {
    (void)t.contiguous();
    if (t.numel() > 0 && t.numel() <= (1 << 16)) {
      (void)kern::sum(t.to(kern::DType::Float64)).item();
      if (t.dim() >= 2) (void)t.t().contiguous();
      try {
        (void)t.to(kern::DType::Int64);  // NaN / Inf / huge values: kern::Error, never UB
      } catch (const kern::Error&) {
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes = kern::fuzz::as_chars(data, size);
  const kern::fuzz::MemFile file(data, size);
  const auto from_bytes = try_load([&] { return kern::io::load_safetensors_from_bytes(bytes, "fuzz"); });
  const auto mapped = try_load([&] { return kern::io::load_safetensors(file.path()); });
  const auto copied = try_load([&] { return kern::io::load_safetensors(file.path(), {.copy = true}); });
  if (from_bytes != mapped || mapped != copied)
    kern::fuzz::invariant_failed("the three read paths disagree");
  if (!from_bytes) return 0;

  const SafetensorsFile f = kern::io::load_safetensors(file.path());
  exercise(f);
  // Round trip: what kern writes, kern reads back identically. (The writer may refuse what
  // the reader accepts, e.g. an empty tensor name; that is a kern::Error, not a bug.)
  std::string again;
  try {
    again = kern::io::save_safetensors_to_bytes(f.tensors, f.metadata);
  } catch (const kern::Error&) {
    return 0;
  }
  const auto reread = try_load([&] { return kern::io::load_safetensors_from_bytes(again); });
  if (reread != from_bytes) kern::fuzz::invariant_failed("write + read changed the file");
  return 0;
}
