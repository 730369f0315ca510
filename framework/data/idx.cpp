// IDX reader through zlib (gzread reads gzip and plain files alike).
#include <kern/data/idx.hpp>

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

namespace kern::data {

namespace {

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzHandle = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

// Reads up to n bytes; returns the count read (< n only at the end of the data). Throws on a
// zlib error (e.g. a corrupt or truncated gzip stream).
size_t read_some(gzFile f, uint8_t* dst, size_t n, const std::string& path) {
  size_t total = 0;
  while (total < n) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - total, 1u << 24));
    const int got = gzread(f, dst + total, chunk);
    if (got < 0) {
      int err = 0;
      const char* msg = gzerror(f, &err);
      throw Error(fmt::format("read_idx: '{}': truncated or corrupt data ({})", path,
                              err == Z_ERRNO ? std::strerror(errno) : msg));
    }
    if (got == 0) break;
    total += static_cast<size_t>(got);
  }
  // A gzip stream cut short reports Z_BUF_ERROR only after the last bytes were returned.
  int err = 0;
  gzerror(f, &err);
  if (err != Z_OK && err != Z_STREAM_END && total < n)
    throw Error(fmt::format("read_idx: '{}': truncated data (the gzip stream ends early)", path));
  return total;
}

}  // namespace

Tensor read_idx(const std::string& path) {
  std::error_code ec;
  KERN_CHECK(std::filesystem::exists(path, ec), "read_idx: '", path, "': no such file");
  KERN_CHECK(!std::filesystem::is_directory(path, ec), "read_idx: '", path, "' is a directory");
  GzHandle f(gzopen(path.c_str(), "rb"));
  KERN_CHECK(f != nullptr, "read_idx: '", path, "': cannot open (", std::strerror(errno), ")");

  uint8_t magic[4];
  const size_t got = read_some(f.get(), magic, 4, path);
  KERN_CHECK(got == 4, "read_idx: '", path, "': truncated data (", got,
             " bytes, shorter than the 4-byte IDX magic)");
  KERN_CHECK(magic[0] == 0 && magic[1] == 0 && magic[2] == 0x08 && (magic[3] == 1 || magic[3] == 3),
             "read_idx: '", path, "': bad magic 0x",
             fmt::format("{:02x}{:02x}{:02x}{:02x}", magic[0], magic[1], magic[2], magic[3]),
             " (expected 0x00000801 for labels or 0x00000803 for images, unsigned bytes)");
  const int ndim = magic[3];

  Shape shape;
  for (int d = 0; d < ndim; ++d) {
    uint8_t b[4];
    KERN_CHECK(read_some(f.get(), b, 4, path) == 4, "read_idx: '", path,
               "': truncated data (the header ends inside dimension ", d, ")");
    shape.push_back((int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | b[3]);
  }
  // Three sizes below 2^32 each can multiply past 2^63 (2^31 * 2^31 * 2): checked, so that
  // a wrapped-around count can neither pass the size check below nor size a buffer.
  const std::optional<int64_t> checked_count = shape.checked_numel();
  KERN_CHECK(checked_count.has_value(), "read_idx: '", path, "': corrupt header: sizes ", shape,
             " declare more elements than int64 can count");
  const int64_t count = *checked_count;

  // Grow the buffer with the data actually present (never trust the header's sizes): each
  // read asks for at most as many bytes as are already there (64 KiB at first), so a
  // 16-byte file declaring 10^8 bytes costs 64 KiB, not a 64 MB buffer (fuzz_idx ran at
  // 51 inputs/s because of that), and a real file doubles its way up at linear cost.
  std::vector<uint8_t> bytes;
  size_t have = 0;
  while (static_cast<int64_t>(have) < count) {
    const int64_t step = std::max<int64_t>(int64_t{64} << 10, static_cast<int64_t>(have));
    const size_t want = static_cast<size_t>(std::min(count - static_cast<int64_t>(have), step));
    bytes.resize(have + want);
    const size_t n = read_some(f.get(), bytes.data() + have, want, path);
    have += n;
    if (n < want) break;
  }
  KERN_CHECK(static_cast<int64_t>(have) == count, "read_idx: '", path, "': truncated data (header ",
             shape, " declares ", count, " bytes of data, the file holds ", have, ")");
  uint8_t extra;
  KERN_CHECK(read_some(f.get(), &extra, 1, path) == 0, "read_idx: '", path,
             "': size mismatch (more data than the header ", shape, " declares)");

  if (ndim == 1) {
    Tensor t = empty(shape, DType::Int64);
    int64_t* o = t.data_ptr<int64_t>();
    for (int64_t i = 0; i < count; ++i) o[i] = bytes[static_cast<size_t>(i)];
    return t;
  }
  Tensor t = empty(shape, DType::Float32);
  float* o = t.data_ptr<float>();
  for (int64_t i = 0; i < count; ++i) o[i] = static_cast<float>(bytes[static_cast<size_t>(i)]);
  return t;
}

}  // namespace kern::data
