#pragma once
#ifndef KERN_BUILDING_FRAMEWORK  // private to kern_core: see CMakeLists.txt (layering)
#error "framework/io/safetensors_util.hpp is private to kern_core; include <kern/...> public headers instead"
#endif
// Internal to framework/io/safetensors*.cpp: error helpers shared by reading and writing, and
// the header validation of safetensors_header.cpp.
// (nlohmann-json stays out of kern's public headers.)
#include <fmt/format.h>

#include <kern/error.hpp>
#include <kern/shape.hpp>
#include <kern/dtype.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace kern::io::internal {

using Json = nlohmann::json;

/// A name for an error message: quoted, cut to a sane length (names come from the file).
std::string quote_name(std::string_view s);

/// A JSON value for an error message, cut to a sane length.
std::string shown(const Json& v);

/// Byte offset of the first invalid UTF-8 sequence in s, or npos.
size_t find_invalid_utf8(std::string_view s);

/// Throws "safetensors: <label>: <args...>".
template <typename... Args>
[[noreturn]] void fail(const std::string& label, const Args&... args) {
  throw Error(::kern::detail::concat("safetensors: ", label, ": ", args...));
}

/// Throws "safetensors: <label>: tensor '<name>': <args...>".
template <typename... Args>
[[noreturn]] void fail_tensor(const std::string& label, const std::string& name,
                              const Args&... args) {
  throw Error(
      ::kern::detail::concat("safetensors: ", label, ": tensor ", quote_name(name), ": ", args...));
}

/// One validated tensor entry of a header: its bytes are [begin, end) of the data section.
struct Entry {
  std::string name;
  DType dtype = DType::Float32;
  std::string dtype_string;  // as the file spells it ("BF16")
  bool known = true;         // false: a dtype kern has no type for (listing only; see below)
  Shape shape;
  uint64_t begin = 0, end = 0;
};

/// A validated header (safetensors_header.cpp): entries sorted by name, the metadata, and
/// the file offset where the data section starts (8 + header length).
struct Header {
  std::vector<Entry> entries;
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;
};

/// The header length declared by the 8 bytes at `prefix`, checked against the file size and
/// the 100 MB cap. `prefix` may be null only when file_size < 8 (which throws).
uint64_t header_length(const char* prefix, uint64_t file_size, const std::string& label);

/// Validates a file of `file_size` bytes from its first bytes `head` (at least the prefix and
/// the header it declares; more is ignored): everything but the tensor data itself.
/// `listing` (kern inspect): a dtype kern has no type for (F8_E8M0, F4, C64, or one a later
/// format version adds) gives an entry with known = false instead of an error; its byte size
/// is not checked (kern cannot know it) but its offsets still must tile the data section.
Header parse_header(std::string_view head, uint64_t file_size, const std::string& label,
                    bool listing = false);

}  // namespace kern::io::internal
