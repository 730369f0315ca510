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
// kern holds float32, float64 and int64; other safetensors dtypes (F16, BF16, I32, ...) are
// rejected with an error naming the tensor and the dtype.
#include <cstdint>
#include <kern/tensor.hpp>
#include <map>
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
};

/// Loads a safetensors file (zero-copy from a memory map unless `options.copy`; see
/// LoadOptions). A tensor whose data is not aligned to its element size in the file is
/// copied in either case.
SafetensorsFile load_safetensors(const std::string& path, const LoadOptions& options = {});

/// Parses safetensors bytes held in memory (tensors are copied out of `bytes`).
/// `label` names the source in error messages.
SafetensorsFile load_safetensors_from_bytes(std::string_view bytes,
                                            const std::string& label = "<memory>");

/// Writes tensors (float32, float64, int64; any strides: non-contiguous tensors are written
/// in row-major order) and string metadata to `path`, atomically: the bytes go to a temporary
/// file in the same directory, which is fsync'ed and renamed over `path`. On any failure the
/// temporary file is removed, the previous `path` is left untouched and kern::Error is thrown.
/// Names must be unique, non-empty and not `__metadata__`. Data of 8-byte dtypes is placed
/// first so that every tensor is aligned to its element size (zero-copy loads).
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// The bytes save_safetensors would write (same validation and layout).
std::string save_safetensors_to_bytes(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                      const std::map<std::string, std::string>& metadata = {});

/// The safetensors dtype string of a kern dtype ("F32", "F64", "I64").
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

}  // namespace kern::io
