#pragma once
// Shared by the libFuzzer targets of fuzz/: fuzz input as a file without touching the disk,
// and the one rule every target checks: bad input may only ever raise kern::Error. Any other
// exception escapes LLVMFuzzerTestOneInput and libFuzzer reports it as a crash, as it does
// ASan/UBSan reports, timeouts and out-of-memory.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace kern::fuzz {

/// The bytes in an anonymous in-memory file (memfd), reachable by path as /proc/self/fd/N,
/// for readers that take a path (mmap, gzopen and pread work on it as on a disk file).
class MemFile {
 public:
  MemFile(const uint8_t* data, size_t size) : fd_(::memfd_create("kern-fuzz", MFD_CLOEXEC)) {
    if (fd_ < 0) die("memfd_create failed");
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::write(fd_, data + done, size - done);
      if (n <= 0) die("write to memfd failed");
      done += static_cast<size_t>(n);
    }
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_;
  [[noreturn]] static void die(const char* what) {
    std::perror(what);
    std::abort();
  }
};

/// A broken invariant: report and abort, so that libFuzzer saves the input.
[[noreturn]] inline void invariant_failed(const char* what) {
  std::fprintf(stderr, "kern fuzz: invariant failed: %s\n", what);
  std::abort();
}

inline std::string_view as_chars(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace kern::fuzz
