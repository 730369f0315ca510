// safetensors header validation (reading: safetensors.cpp; writing: safetensors_write.cpp).
//
// The checks run in this order, each step in linear time so that no header (up to the
// 100 MB cap) can make parsing hang:
//   1. the 8-byte length prefix, against the file size and the 100 MB cap (the reference
//      implementation's MAX_HEADER_SIZE);
//   2. UTF-8 and JSON nesting depth, so that the parser can neither misread bytes nor recurse
//      without bound;
//   3. JSON syntax, streamed (HeaderSax below), and duplicate top-level keys;
//   4. the structure, each top-level value as soon as the parser has read it: __metadata__
//      (strings to strings) and each entry's dtype, shape and data_offsets;
//   5. the tensors tile the data section exactly (no overlap, no hole, no trailing bytes), as
//      the reference Rust validator does.
// Only then is tensor data touched.
#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <optional>

#include <kern/io/safetensors.hpp>

#include "safetensors_util.hpp"

namespace kern::io::internal {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // as MAX_HEADER_SIZE in safetensors (Rust)
constexpr int kMaxJsonDepth = 64;                  // a valid header nests 3 deep

// ---------------------------------------------------------------- 2. the header's bytes

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

void check_header_text(std::string_view header, const std::string& label) {
  if (size_t bad = find_invalid_utf8(header); bad != std::string_view::npos)
    fail(label, "header is not valid UTF-8 (bad byte at header offset ", bad, ")");
  if (json_depth(header) > kMaxJsonDepth)
    fail(label, "header JSON is nested more than ", kMaxJsonDepth, " levels deep");
}

// ---------------------------------------------------------------- 4. structure

/// The dtype string of entry `v`; the kern dtype it names, or nullopt when `listing` and kern
/// has none (otherwise that throws).
std::optional<DType> parse_dtype(const std::string& label, const std::string& name, const Json& v,
                                 bool listing, std::string& str) {
  auto it = v.find("dtype");
  if (it == v.end()) fail_tensor(label, name, "missing \"dtype\"");
  if (!it->is_string()) fail_tensor(label, name, "\"dtype\" is not a string: ", shown(*it));
  str = it->get_ref<const std::string&>();
  for (int d = 0; d < kNumDTypes; ++d)
    if (str == safetensors_dtype_name(static_cast<DType>(d))) return static_cast<DType>(d);
  if (listing) return std::nullopt;
  // Defined by the format but without a kern storage type (sub-byte, complex, exponent-only).
  static const std::set<std::string> known = {"F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"};
  if (known.count(str))
    fail_tensor(label, name, "dtype ", str,
                " is not supported by kern (it reads F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 "
                "U64 U32 U16 U8 BOOL; `kern inspect` lists the file)");
  fail_tensor(label, name, "unknown dtype ", quote_name(str));
}

Shape parse_shape(const std::string& label, const std::string& name, const Json& v, DType dtype) {
  auto it = v.find("shape");
  if (it == v.end()) fail_tensor(label, name, "missing \"shape\"");
  if (!it->is_array()) fail_tensor(label, name, "\"shape\" is not an array: ", shown(*it));
  Shape shape;
  for (const auto& d : *it) {
    if (!d.is_number_integer())
      fail_tensor(label, name, "shape ", shown(*it), " has a non-integer dimension ", shown(d));
    if (d.is_number_unsigned() &&
        d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail_tensor(label, name, "shape ", shown(*it), " has a dimension that overflows int64");
    const int64_t n = d.get<int64_t>();
    if (n < 0) fail_tensor(label, name, "shape ", shown(*it), " has a negative dimension ", n);
    shape.push_back(n);
  }
  // The element count, the contiguous strides (products of max(d, 1)) and the byte size must
  // all fit in int64: the same checks as kern::empty, with the file's words in the message.
  int64_t stride_product = 1;
  for (const int64_t n : shape)
    if (__builtin_mul_overflow(stride_product, std::max<int64_t>(n, 1), &stride_product))
      fail_tensor(label, name, "shape ", shown(*it),
                  " overflows: its strides do not fit in int64");
  const std::optional<int64_t> numel = shape.checked_numel();
  if (!numel)
    fail_tensor(label, name, "shape ", shown(*it),
                " overflows: its element count does not fit in int64");
  int64_t nbytes;
  if (__builtin_mul_overflow(*numel, static_cast<int64_t>(dtype_size(dtype)), &nbytes))
    fail_tensor(label, name, "shape ", shown(*it), " overflows: ", *numel, " elements of ",
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

void parse_metadata(const Json& v, const std::string& label,
                    std::map<std::string, std::string>& metadata) {
  if (!v.is_object())
    fail(label, "__metadata__ must be a map of strings to strings, got ", shown(v));
  for (const auto& [mk, mv] : v.items()) {
    if (!mv.is_string())
      fail(label, "__metadata__ must be a map of strings to strings; value of ", quote_name(mk),
           " is ", shown(mv));
    metadata[mk] = mv.get<std::string>();
  }
}

Entry parse_entry(const std::string& key, const Json& v, uint64_t data_size,
                  const std::string& label, bool listing) {
  if (!v.is_object()) fail_tensor(label, key, "entry is not a JSON object: ", shown(v));
  Entry e;
  e.name = key;
  const std::optional<DType> dt = parse_dtype(label, key, v, listing, e.dtype_string);
  e.known = dt.has_value();
  e.dtype = dt.value_or(DType::UInt8);  // unknown: shape checks as for 1-byte elements
  e.shape = parse_shape(label, key, v, e.dtype);
  std::tie(e.begin, e.end) = parse_offsets(label, key, v);
  if (e.end > data_size)
    fail_tensor(label, key, "data_offsets [", e.begin, ", ", e.end,
                "] run past the end of the data section (", data_size, " bytes)");
  const uint64_t nbytes = static_cast<uint64_t>(e.shape.numel()) * dtype_size(e.dtype);
  if (e.known && e.end - e.begin != nbytes)
    fail_tensor(label, key, "data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin,
                " bytes but ", safetensors_dtype_name(e.dtype), " shape ", e.shape, " needs ",
                nbytes, " bytes (wrong byte size)");
  return e;
}

// ---------------------------------------------------------------- 3. JSON, streamed

/// A SAX handler that validates the header while nlohmann's parser reads it: each top-level
/// value (one entry, or __metadata__) is built as a small JSON value of its own, checked
/// (step 4) and dropped as soon as it ends. Time and memory are linear in the header size;
/// no DOM of the whole header is built. (nlohmann's callback parser, used before, rescans
/// the top-level object after every entry: 100k entries took 530 s.)
class HeaderSax {
 public:
  using Dom = nlohmann::detail::json_sax_dom_parser<Json>;
  using number_integer_t = Json::number_integer_t;
  using number_unsigned_t = Json::number_unsigned_t;
  using number_float_t = Json::number_float_t;
  using string_t = Json::string_t;
  using binary_t = Json::binary_t;

  HeaderSax(Header& out, uint64_t data_size, const std::string& label, bool listing)
      : out_(out), data_size_(data_size), label_(label), listing_(listing) {}

  bool null() { return scalar([&](Dom& d) { return d.null(); }, "null"); }
  bool boolean(bool v) { return scalar([&](Dom& d) { return d.boolean(v); }, "a boolean"); }
  bool number_integer(number_integer_t v) {
    return scalar([&](Dom& d) { return d.number_integer(v); }, "a number");
  }
  bool number_unsigned(number_unsigned_t v) {
    return scalar([&](Dom& d) { return d.number_unsigned(v); }, "a number");
  }
  bool number_float(number_float_t v, const string_t& s) {
    return scalar([&](Dom& d) { return d.number_float(v, s); }, "a number");
  }
  bool string(string_t& v) { return scalar([&](Dom& d) { return d.string(v); }, "a string"); }
  bool binary(binary_t& v) { return scalar([&](Dom& d) { return d.binary(v); }, "binary"); }

  bool start_object(std::size_t n) {
    if (depth_++ == 0) return true;  // the header itself
    return dom_->start_object(n);
  }
  bool end_object() {
    if (--depth_ == 0) return true;
    const bool ok = dom_->end_object();
    if (depth_ == 1) finish_value();
    return ok;
  }
  bool start_array(std::size_t n) {
    if (depth_++ == 0) fail(label_, "header is not a JSON object (it is an array)");
    return dom_->start_array(n);
  }
  bool end_array() {
    const bool ok = dom_->end_array();
    if (--depth_ == 1) finish_value();
    return ok;
  }
  bool key(string_t& k) {
    if (depth_ > 1) return dom_->key(k);
    key_ = k;  // a new top-level value begins
    value_ = Json();
    dom_.emplace(value_);
    return true;
  }
  bool parse_error(std::size_t pos, const std::string& token, const nlohmann::detail::exception& e) {
    fail(label_, "header is not valid JSON: ", e.what());
  }

 private:
  template <typename F>
  bool scalar(F&& f, const char* what) {
    if (depth_ == 0) fail(label_, "header is not a JSON object (it is ", what, ")");
    const bool ok = f(*dom_);
    if (depth_ == 1) finish_value();
    return ok;
  }
  // The value of top-level key key_ is complete in value_: check it, keep what it says.
  void finish_value() {
    if (key_ == "__metadata__") {
      if (has_metadata_) fail(label_, "header has the key '__metadata__' more than once");
      has_metadata_ = true;
      parse_metadata(value_, label_, out_.metadata);
    } else {
      out_.entries.push_back(parse_entry(key_, value_, data_size_, label_, listing_));
    }
    dom_.reset();
    value_ = Json();
  }

  Header& out_;
  const uint64_t data_size_;
  const std::string& label_;
  const bool listing_;
  int depth_ = 0;
  std::string key_;
  Json value_;
  std::optional<Dom> dom_;
  bool has_metadata_ = false;
};

/// Parses and validates the JSON header into `out` (entries sorted by name, duplicates
/// rejected).
void parse_json(std::string_view header, uint64_t data_size, const std::string& label,
                Header& out, bool listing) {
  HeaderSax sax(out, data_size, label, listing);
  try {
    Json::sax_parse(header.begin(), header.end(), &sax);
  } catch (const Json::exception& e) {
    fail(label, "header is not valid JSON: ", e.what());
  }
  // Sorted by name (the order of Python's safe_open(...).keys()); equal neighbours are keys
  // given twice (a JSON object would silently keep one of them; safetensors rejects them).
  auto& entries = out.entries;
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.name < b.name; });
  const auto dup = std::adjacent_find(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.name == b.name;
  });
  if (dup != entries.end()) fail(label, "header has the key ", quote_name(dup->name), " more than once");
}

// ---------------------------------------------------------------- 5. tiling

/// The tensors must tile [0, data_size) exactly.
void check_tiling(const std::vector<Entry>& entries, uint64_t data_size, const std::string& label) {
  std::vector<const Entry*> by_offset;
  by_offset.reserve(entries.size());
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
}

}  // namespace

// ---------------------------------------------------------------- 1. and the whole

uint64_t header_length(const char* prefix, uint64_t file_size, const std::string& label) {
  if (file_size < 8)
    fail(label, "file is ", file_size, " bytes, shorter than the 8-byte header length prefix");
  uint64_t n;
  std::memcpy(&n, prefix, 8);
  if (n > kMaxHeaderBytes)
    fail(label, "header length ", n, " exceeds the 100 MB limit (corrupt or not safetensors)");
  if (n > file_size - 8)
    fail(label, "header length ", n, " runs past the end of the file (", file_size - 8,
         " bytes follow the length prefix); the file is truncated or corrupt");
  return n;
}

Header parse_header(std::string_view head, uint64_t file_size, const std::string& label,
                    bool listing) {
  const uint64_t n = header_length(head.data(), file_size, label);
  if (head.size() < 8 + n) fail(label, "internal error: header bytes not read");
  const std::string_view header = head.substr(8, n);
  Header out;
  out.data_start = 8 + n;
  const uint64_t data_size = file_size - out.data_start;

  check_header_text(header, label);
  parse_json(header, data_size, label, out, listing);
  check_tiling(out.entries, data_size, label);
  return out;
}

}  // namespace kern::io::internal
