#pragma once
#ifndef KERN_BUILDING_FRAMEWORK  // private to kern_core: see CMakeLists.txt (layering)
#error "framework/io/safetensors_util.hpp is private to kern_core; include <kern/...> public headers instead"
#endif
// Internal to framework/io/safetensors*.cpp: error helpers shared by reading and writing.
// (nlohmann-json stays out of kern's public headers.)
#include <fmt/format.h>

#include <kern/error.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

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

}  // namespace kern::io::internal
