// safetensors writing (atomic: temp file, fsync, rename) and tensor checksums.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <kern/autograd.hpp>
#include <kern/io/safetensors.hpp>
#include <optional>
#include <random>
#include <set>

#include "../ops/kernel_utils.hpp"
#include "safetensors_util.hpp"

namespace kern::io {

using namespace internal;

std::string_view safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "F32";
    case DType::Float64: return "F64";
    case DType::Int64: return "I64";
    case DType::BFloat16: return "BF16";
    case DType::Float16: return "F16";
    case DType::Int32: return "I32";
    case DType::Int16: return "I16";
    case DType::Int8: return "I8";
    case DType::UInt8: return "U8";
    case DType::Bool: return "BOOL";
    case DType::UInt16: return "U16";
    case DType::UInt32: return "U32";
    case DType::UInt64: return "U64";
    case DType::Float8E4M3: return "F8_E4M3";
    case DType::Float8E5M2: return "F8_E5M2";
  }
  return "?";
}

namespace {

/// Validated header bytes plus the order in which tensor data follows it.
struct Plan {
  std::string prefix;  // length prefix + header (padded with spaces to a multiple of 8)
  std::vector<size_t> data_order;
};

Plan make_plan(const std::vector<std::pair<std::string, Tensor>>& tensors,
               const std::map<std::string, std::string>& metadata, const std::string& label) {
  std::set<std::string_view> names;
  for (const auto& [name, t] : tensors) {
    if (name.empty()) fail(label, "cannot save a tensor with an empty name");
    if (name == "__metadata__") fail(label, "cannot save a tensor named '__metadata__' (reserved)");
    if (find_invalid_utf8(name) != std::string::npos)
      fail(label, "tensor name ", quote_name(name), " is not valid UTF-8");
    if (!names.insert(name).second) fail_tensor(label, name, "name given more than once");
    if (!t.defined()) fail_tensor(label, name, "cannot save an undefined tensor");
  }
  for (const auto& [k, v] : metadata)
    if (find_invalid_utf8(k) != std::string::npos || find_invalid_utf8(v) != std::string::npos)
      fail(label, "metadata entry ", quote_name(k), " is not valid UTF-8");

  Plan plan;
  // By element size, 8-byte dtypes first, then 4, 2 and 1 (each group in the given order):
  // with the header padded to a multiple of 8, every tensor then starts at an address
  // aligned to its element size.
  for (size_t size : {8, 4, 2, 1})
    for (size_t i = 0; i < tensors.size(); ++i)
      if (dtype_size(tensors[i].second.dtype()) == size) plan.data_order.push_back(i);

  Json h = Json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i : plan.data_order) {
    const auto& [name, t] = tensors[i];
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype());
    h[name] = {{"dtype", safetensors_dtype_name(t.dtype())},
               {"shape", std::vector<int64_t>(t.shape().begin(), t.shape().end())},
               {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  const uint64_t n = header.size();
  plan.prefix.resize(8);
  std::memcpy(plan.prefix.data(), &n, 8);
  plan.prefix += header;
  return plan;
}

/// Streams the prefix and then each tensor's row-major bytes to `sink(ptr, nbytes)`.
template <typename Sink>
void emit(const Plan& plan, const std::vector<std::pair<std::string, Tensor>>& tensors,
          Sink&& sink) {
  sink(plan.prefix.data(), plan.prefix.size());
  NoGradGuard no_grad;
  for (size_t i : plan.data_order) {
    const Tensor c = tensors[i].second.contiguous();  // copies only when strided
    const size_t nbytes = static_cast<size_t>(c.numel()) * dtype_size(c.dtype());
    if (nbytes) sink(static_cast<const char*>(c.raw_data()), nbytes);
  }
}

// Temporary files are named ".<target name>.tmp-<pid>-<counter>-<8 hex digits>" in the
// target's directory, and their writer holds an exclusive flock on them until they are
// renamed or removed. A writer killed (kill -9, power loss) leaves its temp file behind;
// the next save to the same target removes such orphans (remove_stale_temp_files).

/// The writer's pid when `name` is one of kern's temp names for target file `target_name`.
std::optional<pid_t> temp_file_pid(std::string_view name, std::string_view target_name) {
  const std::string prefix = fmt::format(".{}.tmp-", target_name);
  if (name.size() <= prefix.size() || name.substr(0, prefix.size()) != prefix) return std::nullopt;
  std::string_view rest = name.substr(prefix.size());  // "<pid>-<counter>-<hex8>"
  auto digits = [&](size_t& n) {
    n = 0;
    while (n < rest.size() && rest[n] >= '0' && rest[n] <= '9') ++n;
    return n > 0 && n <= 20;
  };
  size_t n = 0;
  if (!digits(n) || n > 9 || n == rest.size() || rest[n] != '-') return std::nullopt;
  const pid_t pid = static_cast<pid_t>(std::stol(std::string(rest.substr(0, n))));
  rest.remove_prefix(n + 1);
  if (!digits(n) || n == rest.size() || rest[n] != '-') return std::nullopt;
  rest.remove_prefix(n + 1);
  if (rest.size() != 8 || !std::all_of(rest.begin(), rest.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
      }))
    return std::nullopt;
  return pid;
}

/// Removes kern's temp files for `target` left behind by writers that died: a file is
/// removed only when (a) its name has kern's pattern for this target, (b) no process holds
/// its writer's flock (a live writer, on this machine or sharing the filesystem, always
/// does), and (c) the pid in its name is not a live process here, or the file has not been
/// modified for a day (the pid was reused). Best effort: errors are ignored, a save never
/// fails because of them. Returns the number of files removed.
size_t remove_stale_temp_files(const std::filesystem::path& target) {
  namespace fs = std::filesystem;
  const auto dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  const std::string target_name = target.filename().string();
  size_t removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const std::optional<pid_t> pid = temp_file_pid(name, target_name);
    if (!pid || *pid == ::getpid()) continue;  // ours may be a concurrent save of this process
    const std::string path = it->path().string();
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) continue;
    struct stat st {};
    const bool locked_by_writer = ::flock(fd, LOCK_EX | LOCK_NB) != 0;
    if (!locked_by_writer && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
      const bool writer_dead = ::kill(*pid, 0) != 0 && errno == ESRCH;
      const bool day_old = std::time(nullptr) - st.st_mtime > 24 * 3600;
      if ((writer_dead || day_old) && ::unlink(path.c_str()) == 0) ++removed;
    }
    ::close(fd);  // releases our lock
  }
  return removed;
}

/// A temporary file next to the target, removed unless commit() renamed it into place. Its
/// exclusive flock, held from creation until after the rename, tells remove_stale_temp_files
/// that its writer is alive.
class TempFile {
 public:
  TempFile(const std::filesystem::path& target, const std::string& label) : label_(label) {
    static std::atomic<uint64_t> counter{0};
    std::random_device rd;
    const auto dir =
        target.parent_path().empty() ? std::filesystem::path(".") : target.parent_path();
    for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
      path_ = (dir / fmt::format(".{}.tmp-{}-{}-{:08x}", target.filename().string(), ::getpid(),
                                 counter++, rd()))
                  .string();
      // 0666 & ~umask, like any new file (mkstemp would force 0600).
      fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ < 0 && errno != EEXIST)
        fail(label_, "cannot create temporary file ", path_, ": ", std::strerror(errno));
    }
    if (fd_ < 0) fail(label_, "cannot create a unique temporary file in ", dir.string());
    // Nobody else can hold the lock of a file created just now; a failure (a filesystem
    // without flock) only means a cleaner on another machine could not see us.
    ::flock(fd_, LOCK_EX | LOCK_NB);
    lock_fd_ = ::dup(fd_);  // keeps the lock through close(fd_) until after the rename
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write(const char* p, size_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, std::min<size_t>(n, size_t{1} << 30));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail(label_, "write to ", path_, " failed: ", std::strerror(w < 0 ? errno : EIO));
      p += w;
      n -= static_cast<size_t>(w);
    }
  }

  /// fsync, close and rename over `target`.
  void commit(const std::string& target) {
    if (::fsync(fd_) != 0) fail(label_, "fsync of ", path_, " failed: ", std::strerror(errno));
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail(label_, "close of ", path_, " failed: ", std::strerror(errno));
    if (::rename(path_.c_str(), target.c_str()) != 0)
      fail(label_, "cannot rename ", path_, " to ", target, ": ", std::strerror(errno));
    committed_ = true;
  }

 private:
  std::string label_, path_;
  int fd_ = -1, lock_fd_ = -1;
  bool committed_ = false;
};

}  // namespace

std::string save_safetensors_to_bytes(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                      const std::map<std::string, std::string>& metadata) {
  const Plan plan = make_plan(tensors, metadata, "<memory>");
  std::string out;
  emit(plan, tensors, [&](const char* p, size_t n) { out.append(p, n); });
  return out;
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const Plan plan = make_plan(tensors, metadata, path);  // validates before touching the disk
  // Write through a symlink to its target rather than replacing the link by a file.
  std::string target = path;
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
    if (char* real = ::realpath(path.c_str(), nullptr)) {
      target = real;
      std::free(real);
    }
  }
  const std::filesystem::path tp(target);
  if (tp.filename().empty()) fail(path, "path names a directory, not a file");

  remove_stale_temp_files(tp);
  TempFile tmp(tp, path);
  emit(plan, tensors, [&](const char* p, size_t n) { tmp.write(p, n); });
  tmp.commit(target);
  // Make the rename itself durable (best effort: some filesystems refuse fsync on a dir).
  const auto dir = tp.parent_path().empty() ? std::string(".") : tp.parent_path().string();
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

// ---------------------------------------------------------------- checksums

TensorChecksum checksum(const Tensor& t) {
  KERN_CHECK(t.defined(), "checksum: undefined tensor");
  NoGradGuard no_grad;
  const Tensor c = t.contiguous();
  TensorChecksum out;
  detail::dispatch_storage(c.dtype(), [&]<typename T>() {
    const T* p = static_cast<const T*>(c.raw_data());
    for (int64_t i = 0; i < c.numel(); ++i) {
      const double v = static_cast<double>(p[i]);
      out.sum += v;
      out.abs_sum += std::abs(v);
    }
  });
  const auto* bytes = static_cast<const Bytef*>(c.raw_data());
  size_t n = static_cast<size_t>(c.numel()) * dtype_size(c.dtype());
  uLong crc = ::crc32(0L, Z_NULL, 0);
  while (n > 0) {
    const uInt chunk = static_cast<uInt>(std::min<size_t>(n, size_t{1} << 30));
    crc = ::crc32(crc, bytes, chunk);
    bytes += chunk;
    n -= chunk;
  }
  out.crc32 = static_cast<uint32_t>(crc);
  return out;
}

}  // namespace kern::io
