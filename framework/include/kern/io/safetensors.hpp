#pragma once
// safetensors read/write (https://github.com/huggingface/safetensors, the checkpoint format).
//
// File layout: [u64 little-endian N][N bytes of JSON header][data section].
// Header: {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..],
//          "data_offsets": [begin, end]}, ...}, offsets relative to the data section.
//
// Reading never trusts the header: every length, offset, shape and dtype is checked against
// the file before a byte of tensor data is touched, and every problem is a kern::Error naming
// the file, the tensor and what is wrong (no crash, no out-of-bounds read, no hang).
// Every dtype kern has a storage type for is read as stored and written back as it is (F64
// F32 F16 BF16 I64 I32 I16 I8 U8 BOOL, and U64 U32 U16 F8_E4M3 F8_E5M2, which kern stores and
// converts from but does not compute in); LoadOptions::float_dtype converts floating tensors
// while loading. F8_E8M0, F6, F4 and C64 tensors, and dtypes the format may add later, are
// rejected by load_safetensors with an error naming the tensor and the dtype, and listed by
// list_safetensors (`kern inspect`).
#include <cstdint>
#include <kern/tensor.hpp>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kern::io {

/// The contents of a safetensors file: the tensors sorted by name (the order of Python's
/// `safe_open(...).keys()`), and the `__metadata__` map.
struct SafetensorsFile {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> metadata;

  /// The tensor called `name`; throws kern::Error naming the missing key and the closest
  /// names present (a typo in a state_dict key shows its likely intent).
  Tensor get(const std::string& name) const;
  bool contains(const std::string& name) const;
};

struct LoadOptions {
  /// false (default): zero-copy. The file is memory-mapped (MAP_PRIVATE: the file is never
  /// written; in-place updates of a loaded tensor go to private copy-on-write pages) and the
  /// tensors view the mapping; their Storage keeps it alive. Pages are read from the file
  /// when first touched, so while such tensors live the file must not be truncated or
  /// rewritten in place: touching a page past the new end of the file raises SIGBUS, which
  /// no exception can catch. Replacing the file by rename (as save_safetensors does) or
  /// deleting it is safe: the mapping keeps the old inode.
  /// true: every tensor is read (pread) into memory kern owns; the file may change or go
  /// away as soon as load_safetensors returns. Costs a copy of the data.
  bool copy = false;
  /// Set: every floating tensor (F64 F32 F16 BF16 F8_*) is converted to this dtype while
  /// loading (as Tensor::to; e.g. Float32 for a BF16 checkpoint); integer and BOOL tensors
  /// keep their dtype. Unset (default): every tensor keeps the stored dtype.
  std::optional<DType> float_dtype;
};

/// Loads a safetensors file (zero-copy from a memory map unless `options.copy`; see
/// LoadOptions). A tensor whose data is not aligned to its element size in the file is
/// copied in either case.
SafetensorsFile load_safetensors(const std::string& path, const LoadOptions& options = {});

/// Parses safetensors bytes held in memory (tensors are copied out of `bytes`).
/// `label` names the source in error messages.
SafetensorsFile load_safetensors_from_bytes(std::string_view bytes,
                                            const std::string& label = "<memory>");

/// Writes tensors (every dtype, kept as it is; any strides: non-contiguous tensors are written
/// in row-major order) and string metadata to `path`, atomically: the bytes go to a temporary
/// file in the same directory, which is fsync'ed and renamed over `path`. On any failure the
/// temporary file is removed, the previous `path` is left untouched and kern::Error is thrown.
/// Names must be unique, non-empty and not `__metadata__`. Data of 8-byte dtypes is placed
/// first, then 4, 2 and 1-byte ones (each group in the given order), so that every tensor is
/// aligned to its element size (zero-copy loads). A file written this way from tensors in
/// name order (as load_safetensors returns them) is reproduced byte for byte.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// The bytes save_safetensors would write (same validation and layout).
std::string save_safetensors_to_bytes(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                      const std::map<std::string, std::string>& metadata = {});

/// The safetensors dtype string of a kern dtype ("F32", "BF16", "BOOL", ...).
std::string_view safetensors_dtype_name(DType dtype);

/// Fingerprint of a tensor's values, as printed by `kern inspect`: sum and sum of absolute
/// values (accumulated in double, row-major order), and the zlib CRC-32 of the row-major
/// little-endian bytes (the same bytes a safetensors file holds).
struct TensorChecksum {
  double sum = 0.0;
  double abs_sum = 0.0;
  uint32_t crc32 = 0;
};
TensorChecksum checksum(const Tensor& t);

/// One tensor of a file as list_safetensors sees it.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;       // as the file spells it ("BF16", "F8_E8M0", "F17")
  Shape shape;
  uint64_t begin = 0, end = 0;  // data_offsets
  Tensor tensor;           // undefined when kern has no storage type for `dtype`
};
struct SafetensorsListing {
  std::vector<SafetensorsEntry> entries;  // sorted by name
  std::map<std::string, std::string> metadata;
};

/// Lists every tensor of a valid file, including those whose dtype kern cannot hold (their
/// byte size cannot be checked, but everything else is, as for load_safetensors: malformed
/// files throw the same errors). For `kern inspect`.
SafetensorsListing list_safetensors(const std::string& path);

}  // namespace kern::io
