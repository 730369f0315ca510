// safetensors reading: validated, zero-copy from an mmap (writing: safetensors_write.cpp).
//
// Reading checks, in order: the 8-byte length prefix, the header length against the file
// and a 100 MB cap (the reference implementation's limit), UTF-8 and JSON nesting depth (so
// the parser can neither misread bytes nor recurse without bound), JSON syntax, the header's
// structure, then every entry's dtype, shape and data_offsets, and finally that the tensors
// tile the data section exactly (no overlap, no hole, no trailing bytes), as the reference
// Rust validator does. Only then is tensor data touched.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <kern/io/safetensors.hpp>
#include <limits>
#include <set>

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

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // as MAX_HEADER_SIZE in safetensors (Rust)
constexpr int kMaxJsonDepth = 64;                  // a valid header nests 3 deep

/// Deepest [ / { nesting outside strings (the header is known to be valid UTF-8).
int json_depth(std::string_view s) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
      if (max_depth > kMaxJsonDepth) return max_depth;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

struct Entry {
  std::string name;
  DType dtype = DType::Float32;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

DType parse_dtype(const std::string& label, const std::string& name, const Json& v) {
  auto it = v.find("dtype");
  if (it == v.end()) fail_tensor(label, name, "missing \"dtype\"");
  if (!it->is_string()) fail_tensor(label, name, "\"dtype\" is not a string: ", shown(*it));
  const auto& s = it->get_ref<const std::string&>();
  if (s == "F32") return DType::Float32;
  if (s == "F64") return DType::Float64;
  if (s == "I64") return DType::Int64;
  static const std::set<std::string> known = {
      "BOOL", "U8",      "I8",      "U16",     "I16",     "U32",     "I32", "U64", "F16",
      "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",  "C64"};
  if (known.count(s))
    fail_tensor(label, name, "dtype ", s,
                " is not supported by kern (supported: F32, F64, I64; convert the tensor first)");
  fail_tensor(label, name, "unknown dtype ", quote_name(s));
}

Shape parse_shape(const std::string& label, const std::string& name, const Json& v, DType dtype) {
  auto it = v.find("shape");
  if (it == v.end()) fail_tensor(label, name, "missing \"shape\"");
  if (!it->is_array()) fail_tensor(label, name, "\"shape\" is not an array: ", shown(*it));
  Shape shape;
  // Both the element count and the contiguous strides (products of max(d, 1)) must fit in
  // int64, and so must the byte size.
  int64_t numel = 1, stride_product = 1;
  for (const auto& d : *it) {
    if (!d.is_number_integer())
      fail_tensor(label, name, "shape ", shown(*it), " has a non-integer dimension ", shown(d));
    if (d.is_number_unsigned() &&
        d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail_tensor(label, name, "shape ", shown(*it), " has a dimension that overflows int64");
    const int64_t n = d.get<int64_t>();
    if (n < 0) fail_tensor(label, name, "shape ", shown(*it), " has a negative dimension ", n);
    if (__builtin_mul_overflow(numel, n, &numel) ||
        __builtin_mul_overflow(stride_product, std::max<int64_t>(n, 1), &stride_product))
      fail_tensor(label, name, "shape ", shown(*it),
                  " overflows: its element count does not fit in int64");
    shape.push_back(n);
  }
  int64_t nbytes;
  if (__builtin_mul_overflow(numel, static_cast<int64_t>(dtype_size(dtype)), &nbytes))
    fail_tensor(label, name, "shape ", shown(*it), " overflows: ", numel, " elements of ",
                dtype_size(dtype), " bytes do not fit in int64");
  return shape;
}

std::pair<uint64_t, uint64_t> parse_offsets(const std::string& label, const std::string& name,
                                            const Json& v) {
  auto it = v.find("data_offsets");
  if (it == v.end()) fail_tensor(label, name, "missing \"data_offsets\"");
  if (!it->is_array() || it->size() != 2)
    fail_tensor(label, name, "\"data_offsets\" must be [begin, end], got ", shown(*it));
  for (const auto& o : *it)
    if (!o.is_number_unsigned())  // nlohmann parses every non-negative integer as unsigned
      fail_tensor(label, name, "\"data_offsets\" ", shown(*it),
                  " must hold two non-negative integers");
  const uint64_t begin = (*it)[0].get<uint64_t>(), end = (*it)[1].get<uint64_t>();
  if (begin > end)
    fail_tensor(label, name, "data_offsets [", begin, ", ", end, "] have begin > end");
  return {begin, end};
}

/// Validates the whole file; on success returns the entries (sorted by name) and metadata.
/// `data` holds `size` bytes: the complete file.
std::vector<Entry> parse_header(const char* data, uint64_t size, const std::string& label,
                                std::map<std::string, std::string>& metadata,
                                uint64_t& data_start) {
  if (size < 8)
    fail(label, "file is ", size, " bytes, shorter than the 8-byte header length prefix");
  uint64_t n;
  std::memcpy(&n, data, 8);
  if (n > kMaxHeaderBytes)
    fail(label, "header length ", n, " exceeds the 100 MB limit (corrupt or not safetensors)");
  if (n > size - 8)
    fail(label, "header length ", n, " runs past the end of the file (", size - 8,
         " bytes follow the length prefix); the file is truncated or corrupt");
  const std::string_view header(data + 8, n);
  data_start = 8 + n;
  const uint64_t data_size = size - data_start;

  if (size_t bad = find_invalid_utf8(header); bad != std::string_view::npos)
    fail(label, "header is not valid UTF-8 (bad byte at header offset ", bad, ")");
  if (json_depth(header) > kMaxJsonDepth)
    fail(label, "header JSON is nested more than ", kMaxJsonDepth, " levels deep");

  std::set<std::string> seen;
  std::string duplicate;
  bool has_duplicate = false;
  Json h;
  try {
    h = Json::parse(header.begin(), header.end(),
                    [&](int depth, Json::parse_event_t ev, Json& parsed) {
                      if (ev == Json::parse_event_t::key && depth == 1 && !has_duplicate &&
                          !seen.insert(parsed.get<std::string>()).second) {
                        duplicate = parsed.get<std::string>();
                        has_duplicate = true;
                      }
                      return true;
                    });
  } catch (const Json::exception& e) {
    fail(label, "header is not valid JSON: ", e.what());
  }
  if (!h.is_object()) fail(label, "header is not a JSON object (it is a ", h.type_name(), ")");
  if (has_duplicate) fail(label, "header has the key ", quote_name(duplicate), " more than once");

  std::vector<Entry> entries;
  entries.reserve(h.size());
  for (const auto& [key, v] : h.items()) {
    if (key == "__metadata__") {
      if (!v.is_object())
        fail(label, "__metadata__ must be a map of strings to strings, got ", shown(v));
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string())
          fail(label, "__metadata__ must be a map of strings to strings; value of ", quote_name(mk),
               " is ", shown(mv));
        metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) fail_tensor(label, key, "entry is not a JSON object: ", shown(v));
    Entry e;
    e.name = key;
    e.dtype = parse_dtype(label, key, v);
    e.shape = parse_shape(label, key, v, e.dtype);
    std::tie(e.begin, e.end) = parse_offsets(label, key, v);
    if (e.end > data_size)
      fail_tensor(label, key, "data_offsets [", e.begin, ", ", e.end,
                  "] run past the end of the data section (", data_size, " bytes)");
    const uint64_t nbytes = static_cast<uint64_t>(e.shape.numel()) * dtype_size(e.dtype);
    if (e.end - e.begin != nbytes)
      fail_tensor(label, key, "data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin,
                  " bytes but ", safetensors_dtype_name(e.dtype), " shape ", e.shape, " needs ",
                  nbytes, " bytes (wrong byte size)");
    entries.push_back(std::move(e));
  }

  // The tensors must tile [0, data_size) exactly.
  std::vector<const Entry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : by_offset) {
    if (e->begin < covered)
      fail_tensor(label, e->name, "data_offsets [", e->begin, ", ", e->end, "] overlap tensor ",
                  quote_name(prev->name), " [", prev->begin, ", ", prev->end, "]");
    if (e->begin > covered)
      fail_tensor(label, e->name, "data_offsets [", e->begin, ", ", e->end,
                  "] leave a hole of unused bytes [", covered, ", ", e->begin,
                  ") in the data section");
    covered = e->end;
    prev = e;
  }
  if (covered != data_size)
    fail(label, "data section has ", data_size, " bytes but the tensors cover only ", covered,
         " (trailing bytes; truncated header or corrupt file)");
  return entries;
}

/// Builds the tensors. With a `mapping`, tensors whose bytes are aligned to their element
/// size view the mapping (zero-copy); otherwise the bytes are copied.
SafetensorsFile build(const char* data, uint64_t size, const std::string& label,
                      const std::shared_ptr<void>& mapping) {
  SafetensorsFile out;
  uint64_t data_start = 0;
  std::vector<Entry> entries = parse_header(data, size, label, out.metadata, data_start);
  out.tensors.reserve(entries.size());
  for (auto& e : entries) {
    const char* p = data + data_start + e.begin;
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
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = std::move(storage);
    impl->strides = contiguous_strides(e.shape);
    impl->shape = std::move(e.shape);
    impl->dtype = e.dtype;
    out.tensors.emplace_back(std::move(e.name), Tensor(std::move(impl)));
  }
  return out;
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
}  // namespace

SafetensorsFile load_safetensors(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is rejected just below).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail(path, "cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(path, "cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    build(nullptr, size, path, nullptr);  // throws the "shorter than 8 bytes" error
  }
  // MAP_PRIVATE + PROT_WRITE: the file is opened read-only and never modified, but a loaded
  // tensor updated in place (an optimizer step) gets private copy-on-write pages instead of
  // a SIGSEGV. (Truncating the file while it is mapped would SIGBUS; save_safetensors
  // replaces files by rename, which keeps the old inode alive for existing mappings.)
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (addr == MAP_FAILED) fail(path, "cannot mmap ", size, " bytes: ", std::strerror(err));
  auto mapping = std::make_shared<Mapping>();
  mapping->addr = addr;
  mapping->len = size;
  return build(static_cast<const char*>(addr), size, path, mapping);
}

}  // namespace kern::io
