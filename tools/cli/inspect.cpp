// `kern inspect FILE.safetensors`: prints the metadata and, per tensor, its name, dtype
// (kern's name; the file's string for dtypes kern cannot hold), shape and checksums (sum and sum of |x| in double, CRC-32 of the raw little-endian bytes,
// equal to Python's zlib.crc32(tensor.numpy().tobytes())).
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <kern/io/safetensors.hpp>
#include <kern/param/param.hpp>
#include <memory>
#include <string>

#include "commands.hpp"

namespace kern::cli {
namespace {

struct InspectOptions {
  std::string path;
};

/// Metadata values may span lines; indent continuation lines under the value.
std::string indent_continuations(const std::string& s, size_t indent) {
  std::string out;
  for (char c : s) {
    out += c;
    if (c == '\n') out.append(indent, ' ');
  }
  return out;
}

/// The parameterization records of a model (metadata "kern.param") as a table, one line per
/// parameter; text that is not valid records is shown as it is, with the reason.
std::string describe_records(const std::string& json, const std::string& where) {
  try {
    const param::Records recs = param::from_json(json, where);
    std::string scheme = recs.empty() ? "none" : std::string(param::scheme_name(recs.front().second.scheme));
    for (const auto& [n, r] : recs)
      if (param::scheme_name(r.scheme) != scheme) scheme = "mixed";
    std::string out = fmt::format("  {}: parameterization records, scheme {}, {} parameter{}\n", param::kMetadataKey,
                                  scheme, recs.size(), recs.size() == 1 ? "" : "s");
    const std::string table = param::describe(recs);
    for (size_t begin = 0, end; begin < table.size(); begin = end + 1) {
      end = table.find('\n', begin);
      if (end == std::string::npos) end = table.size();
      out += "    " + table.substr(begin, end - begin) + "\n";
    }
    return out;
  } catch (const Error& e) {
    return fmt::format("  {}: {}\n    (not valid parameterization records: {})\n", param::kMetadataKey, json, e.what());
  }
}

int run_inspect(const InspectOptions& opt) {
  try {
    // Listed, not loaded: a valid file is shown whole even when kern cannot hold some of its
    // dtypes (F8_E8M0, F4, C64, a dtype newer than kern); malformed files still fail.
    const io::SafetensorsListing f = io::list_safetensors(opt.path);
    std::string out = fmt::format("file: {}\n", opt.path);
    out += fmt::format("metadata: {} entr{}\n", f.metadata.size(),
                       f.metadata.size() == 1 ? "y" : "ies");
    for (const auto& [k, v] : f.metadata)
      out += k == param::kMetadataKey ? describe_records(v, opt.path + ": " + k)
                                      : fmt::format("  {}: {}\n", k, indent_continuations(v, 4 + k.size()));
    size_t width = 4, total_bytes = 0;
    for (const auto& e : f.entries) {
      width = std::max(width, std::min<size_t>(e.name.size(), 60));
      total_bytes += static_cast<size_t>(e.end - e.begin);
    }
    out += fmt::format("tensors: {} ({} bytes of data)\n", f.entries.size(), total_bytes);
    for (const auto& e : f.entries) {
      const std::string shape = fmt::format("{}", e.shape);
      if (!e.tensor.defined()) {  // a dtype kern has no type for: no values to sum
        out += fmt::format("  {:<{}}  {:<7}  {:<16}  ({} bytes; dtype not supported by kern: no checksums)\n",
                           e.name, width, e.dtype, shape, e.end - e.begin);
        continue;
      }
      const io::TensorChecksum c = io::checksum(e.tensor);
      out += fmt::format("  {:<{}}  {:<7}  {:<16}  sum={:.17g}  abs_sum={:.17g}  crc32={:08x}\n",
                         e.name, width, dtype_name(e.tensor.dtype()), shape, c.sum, c.abs_sum, c.crc32);
    }
    // A write error (a full disk, /dev/full) can surface at fputs or only at fflush; either
    // way it is an error with a message, never a silent exit 0.
    errno = 0;
    const bool written = std::fputs(out.c_str(), stdout) >= 0;
    if (!written || std::fflush(stdout) != 0 || std::ferror(stdout)) {
      const int err = errno;
      std::clearerr(stdout);
      std::fprintf(stderr, "kern inspect: cannot write the output: %s\n",
                   err ? std::strerror(err) : "write error");
      return 2;
    }
    return 0;
  } catch (const std::exception& e) {
    // kern::Error for a malformed file; std::bad_alloc and the like fail the same way.
    std::fprintf(stderr, "kern inspect: %s\n", e.what());
    return 2;
  }
}

}  // namespace

Command add_inspect(CLI::App& app) {
  auto opt = std::make_shared<InspectOptions>();
  CLI::App* sub = app.add_subcommand(
      "inspect",
      "Print a safetensors file's metadata and each tensor's dtype, shape and checksums");
  sub->add_option("file", opt->path, "the .safetensors file")->required();
  return {sub, [opt] { return run_inspect(*opt); }};
}

}  // namespace kern::cli
