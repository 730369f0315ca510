// safetensors reading: zero-copy from an mmap, or copied on request (LoadOptions::copy).
// The header is validated by safetensors_header.cpp before a byte of tensor data is touched;
// writing is in safetensors_write.cpp.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <kern/autograd.hpp>
#include <kern/io/safetensors.hpp>

#include "safetensors_util.hpp"

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian data; kern assumes a little-endian host");

namespace kern::io {
namespace internal {

std::string quote_name(std::string_view s) {
  constexpr size_t kMax = 120;
  if (s.size() <= kMax) return fmt::format("'{}'", s);
  return fmt::format("'{}...' ({} bytes)", s.substr(0, kMax), s.size());
}

std::string shown(const Json& v) {
  std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  return s.size() <= 80 ? s : s.substr(0, 80) + "...";
}

size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    }
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else
      return i;
    if (n - i < len) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are invalid.
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return i;
    i += len;
  }
  return std::string_view::npos;
}

}  // namespace internal

using namespace internal;

namespace {

/// A tensor of entry `e` over `storage` (contiguous, offset 0).
Tensor make_tensor(Entry& e, std::shared_ptr<Storage> storage) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->strides = contiguous_strides(e.shape);
  impl->shape = std::move(e.shape);
  impl->dtype = e.dtype;
  return Tensor(std::move(impl));
}

/// The tensor of entry `e` whose bytes are at `p` in the file's bytes in memory. With a
/// `mapping`, bytes aligned to the element size are viewed (zero-copy); otherwise copied.
Tensor entry_tensor(Entry& e, const char* p, const std::shared_ptr<void>& mapping) {
  const size_t nbytes = e.end - e.begin;
  std::shared_ptr<Storage> storage;
  if (mapping && reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) == 0) {
    storage = std::make_shared<Storage>();
    storage->data = const_cast<char*>(p);
    storage->nbytes = nbytes;
    storage->keepalive = mapping;
  } else {
    storage = Storage::allocate(nbytes);
    if (nbytes) std::memcpy(storage->data, p, nbytes);
  }
  return make_tensor(e, std::move(storage));
}

/// Builds the tensors from the whole file's bytes in memory (see entry_tensor).
SafetensorsFile build(const char* data, uint64_t size, const std::string& label,
                      const std::shared_ptr<void>& mapping) {
  Header h = parse_header(std::string_view(data, data ? size : 0), size, label);
  SafetensorsFile out;
  out.metadata = std::move(h.metadata);
  out.tensors.reserve(h.entries.size());
  for (auto& e : h.entries) {
    Tensor t = entry_tensor(e, data + h.data_start + e.begin, mapping);
    out.tensors.emplace_back(std::move(e.name), std::move(t));
  }
  return out;
}

/// LoadOptions::float_dtype: floating tensors converted, the others kept.
SafetensorsFile convert_floats(SafetensorsFile f, const LoadOptions& options, const std::string& path) {
  if (!options.float_dtype) return f;
  NoGradGuard ng;
  for (auto& [name, t] : f.tensors) {
    if (!is_floating(t.dtype()) || t.dtype() == *options.float_dtype) continue;
    try {
      t = t.to(*options.float_dtype);
    } catch (const Error& e) {
      fail_tensor(path, name, e.what());
    }
  }
  return f;
}

/// Levenshtein distance, giving up (returning limit + 1) once it must exceed `limit`.
size_t edit_distance(std::string_view a, std::string_view b, size_t limit) {
  if ((a.size() > b.size() ? a.size() - b.size() : b.size() - a.size()) > limit) return limit + 1;
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0], best = i;
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
      best = std::min(best, row[j]);
    }
    if (best > limit) return limit + 1;
  }
  return row[b.size()];
}

}  // namespace

// ---------------------------------------------------------------- reading

Tensor SafetensorsFile::get(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  // Close names: small edit distance, or one name contained in the other.
  const size_t limit = std::max<size_t>(2, name.size() / 3);
  std::vector<std::pair<size_t, const std::string*>> close;
  for (const auto& [n, t] : tensors) {
    size_t d = edit_distance(name, n, limit);
    // One name inside the other ("weight" in "fc.weight"): the distance is the length gap.
    if (d > limit && !name.empty() && !n.empty() &&
        (n.find(name) != std::string::npos || name.find(n) != std::string::npos))
      d = n.size() > name.size() ? n.size() - name.size() : name.size() - n.size();
    else if (d > limit)
      continue;
    close.emplace_back(d, &n);
  }
  std::sort(close.begin(), close.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : *a.second < *b.second;
  });
  std::string hint;
  for (size_t i = 0; i < close.size() && i < 5; ++i)
    hint += (i ? ", " : "") + quote_name(*close[i].second);
  throw Error(detail::concat("SafetensorsFile::get: no tensor named ", quote_name(name), " among ",
                             tensors.size(), " tensors",
                             hint.empty() ? std::string("") : "; close names: " + hint));
}

bool SafetensorsFile::contains(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return true;
  return false;
}

SafetensorsFile load_safetensors_from_bytes(std::string_view bytes, const std::string& label) {
  return build(bytes.data(), bytes.size(), label, nullptr);
}

namespace {

struct Mapping {
  void* addr = nullptr;
  size_t len = 0;
  ~Mapping() {
    if (addr) ::munmap(addr, len);
  }
};

/// An open file descriptor, closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

/// Reads exactly n bytes at `offset`; throws naming the file when it ends early (it was
/// truncated while being read) or the read fails.
void read_at(int fd, char* dst, size_t n, uint64_t offset, const std::string& path) {
  while (n > 0) {
    const ssize_t got = ::pread(fd, dst, std::min<size_t>(n, size_t{1} << 30),
                                static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail(path, "read failed at offset ", offset, ": ", std::strerror(errno));
    if (got == 0)
      fail(path, "the file ended at offset ", offset, " while being read (truncated meanwhile?)");
    dst += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
}

/// LoadOptions::copy: the header and then every tensor straight into memory kern owns, with
/// pread (no mapping, so a later change of the file cannot reach the tensors).
SafetensorsFile read_copy(int fd, uint64_t size, const std::string& path) {
  char prefix[8] = {};
  if (size >= 8) read_at(fd, prefix, 8, 0, path);
  const uint64_t n = header_length(prefix, size, path);
  std::string head(8 + n, '\0');
  read_at(fd, head.data(), head.size(), 0, path);
  Header h = parse_header(head, size, path);
  SafetensorsFile out;
  out.metadata = std::move(h.metadata);
  out.tensors.reserve(h.entries.size());
  for (auto& e : h.entries) {
    const size_t nbytes = e.end - e.begin;
    auto storage = Storage::allocate(nbytes);
    if (nbytes) read_at(fd, static_cast<char*>(storage->data), nbytes, h.data_start + e.begin, path);
    out.tensors.emplace_back(std::move(e.name), make_tensor(e, std::move(storage)));
  }
  return out;
}

}  // namespace

namespace {

/// The file's bytes, memory-mapped (see load_safetensors); null data for an empty file.
struct MappedFile {
  const char* data = nullptr;
  uint64_t size = 0;
  std::shared_ptr<Mapping> mapping;
};

MappedFile map_file(int fd, uint64_t size, const std::string& path) {
  if (size < 8) header_length(nullptr, size, path);  // throws "shorter than the 8-byte prefix"
  // MAP_PRIVATE + PROT_WRITE: the file is opened read-only and never modified, but a loaded
  // tensor updated in place (an optimizer step) gets private copy-on-write pages instead of
  // a SIGSEGV. Pages not yet written still read the file: truncating it while the tensors
  // live gives SIGBUS (see LoadOptions; save_safetensors replaces files by rename, which
  // keeps the old inode alive for existing mappings).
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (addr == MAP_FAILED) fail(path, "cannot mmap ", size, " bytes: ", std::strerror(errno));
  auto mapping = std::make_shared<Mapping>();
  mapping->addr = addr;
  mapping->len = size;
  return {static_cast<const char*>(addr), size, std::move(mapping)};
}

/// Opens `path` as a regular file; returns its size.
uint64_t open_regular(const std::string& path, Fd& fd) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is rejected just below).
  fd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd.fd < 0) fail(path, "cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) fail(path, "cannot stat: ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  return static_cast<uint64_t>(st.st_size);
}

}  // namespace

SafetensorsFile load_safetensors(const std::string& path, const LoadOptions& options) {
  Fd fd;
  const uint64_t size = open_regular(path, fd);
  if (options.copy) return convert_floats(read_copy(fd.fd, size, path), options, path);
  const MappedFile m = map_file(fd.fd, size, path);
  return convert_floats(build(m.data, size, path, m.mapping), options, path);
}

SafetensorsListing list_safetensors(const std::string& path) {
  Fd fd;
  const uint64_t size = open_regular(path, fd);
  const MappedFile m = map_file(fd.fd, size, path);
  Header h = parse_header(std::string_view(m.data, size), size, path, /*listing=*/true);
  SafetensorsListing out;
  out.metadata = std::move(h.metadata);
  for (auto& e : h.entries) {
    SafetensorsEntry s{e.name, e.dtype_string, e.shape, e.begin, e.end, Tensor()};
    if (e.known) s.tensor = entry_tensor(e, m.data + h.data_start + e.begin, m.mapping);
    out.entries.push_back(std::move(s));
  }
  return out;
}

}  // namespace kern::io
