// Reading and writing under stress: a 100k-entry safetensors header in linear time,
// copy-on-request loads (and the SIGBUS they avoid), temp files orphaned by killed writers
// removed by the next save (but never a live writer's), and `kern` exit codes when its
// output cannot be written.
#include <sys/file.h>
#include <sys/resource.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <ctime>
#include <kern/io/safetensors.hpp>
#include <kern/kern.hpp>

#include "io_test_util.hpp"

using namespace kern;
using namespace kern::test;

namespace {

/// A safetensors image of n F32 [1] tensors "t0000000".. holding 0, 1, 2, ..., with the
/// header written by hand (not by kern's writer). With `duplicate`, the last name repeats
/// the first.
std::string many_tensors(int n, bool duplicate = false) {
  std::string header = "{";
  std::string data;
  for (int i = 0; i < n; ++i) {
    const int id = duplicate && i == n - 1 ? 0 : i;
    header += fmt::format(R"({}"t{:07d}":{{"dtype":"F32","shape":[1],"data_offsets":[{},{}]}})",
                          i ? "," : "", id, 4 * i, 4 * i + 4);
    const float v = static_cast<float>(i);
    data.append(reinterpret_cast<const char*>(&v), 4);
  }
  header += "}";
  std::string out(8, '\0');
  const uint64_t len = header.size();
  std::memcpy(out.data(), &len, 8);
  return out + header + data;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// CPU seconds this thread has used: what a parse costs, whatever else the machine runs
/// (the tests share 2 cores with other jobs; wall time there says little).
double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Sanitizer builds run several times slower; the bound is about linear vs quadratic time
// (quadratic took 530 s for 100k entries), not about a fast machine.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr double kSlowdown = 4.0;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr double kSlowdown = 4.0;
#else
constexpr double kSlowdown = 1.0;
#endif
#else
constexpr double kSlowdown = 1.0;
#endif

/// The temp files of kern's pattern (".<name>.tmp-...") in `dir`.
std::vector<std::string> temp_files(const TempDir& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir.path))
    if (e.path().filename().string().find(".tmp-") != std::string::npos)
      out.push_back(e.path().filename().string());
  return out;
}

}  // namespace

TEST_CASE("a 100k-entry safetensors header parses, and a far duplicate key is found", "[safetensors]") {
  const io::SafetensorsFile f = io::load_safetensors_from_bytes(many_tensors(100'000));
  REQUIRE(f.tensors.size() == 100'000);
  REQUIRE(f.tensors.front().first == "t0000000");
  REQUIRE(f.tensors.back().first == "t0099999");
  REQUIRE(f.tensors.back().second.item() == 99999.0);
  REQUIRE_THROWS_WITH(io::load_safetensors_from_bytes(many_tensors(100'000, /*duplicate=*/true)),
                      Catch::Contains("'t0000000' more than once"));
}

// Timing only (the test above checks the results). [perf] tests get the ctest label `perf`,
// which `make test-sanitize` leaves out: under ASan + UBSan they time the sanitizers.
TEST_CASE("a 100k-entry safetensors header parses in under a second", "[safetensors][perf]") {
  const std::string image = many_tensors(100'000);
  REQUIRE(image.size() > 7'000'000);  // ~7 MB of header
  const auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = thread_cpu_seconds();
  const io::SafetensorsFile f = io::load_safetensors_from_bytes(image);
  const double cpu = thread_cpu_seconds() - cpu0;
  WARN("100k-entry header parsed in " << cpu << " s of CPU (" << seconds_since(t0) << " s wall)");
  REQUIRE(cpu < 1.0 * kSlowdown);
  REQUIRE(f.tensors.size() == 100'000);

  // A duplicate key far from its twin is found in the same linear pass.
  const std::string dup = many_tensors(100'000, /*duplicate=*/true);
  const double cpu1 = thread_cpu_seconds();
  REQUIRE_THROWS_AS(io::load_safetensors_from_bytes(dup), Error);
  REQUIRE(thread_cpu_seconds() - cpu1 < 1.0 * kSlowdown);
}

TEST_CASE("LoadOptions::copy gives tensors that do not depend on the file", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  const std::vector<double> values = {1.5, -2.0, 4.25};
  io::save_safetensors(path, {{"w", from_vector(values, {3})}, {"i", arange(4)}});

  const io::SafetensorsFile copied = io::load_safetensors(path, {.copy = true});
  const Tensor w = copied.get("w");
  // Owned memory: the storage's keepalive is its own allocation, not a file mapping.
  REQUIRE(w.impl().storage->keepalive.get() == w.impl().storage->data);
  REQUIRE(::truncate(path.c_str(), 0) == 0);  // the file changes under the loaded tensors
  REQUIRE(w.to_vector<double>() == values);
  REQUIRE(copied.get("i").to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3});

  // The same validation as the mapped path: the now empty file is rejected by both.
  REQUIRE_THROWS_WITH(io::load_safetensors(path, {.copy = true}), Catch::Contains("shorter than"));
  REQUIRE_THROWS_WITH(io::load_safetensors(path), Catch::Contains("shorter than"));
  for (const char* bad : {"hole.safetensors", "duplicate_key.safetensors", "truncated_data.safetensors"}) {
    const std::string p = std::string(KERN_TEST_DATA_DIR) + "/malformed/" + bad;
    INFO(p);
    REQUIRE_THROWS_AS(io::load_safetensors(p, {.copy = true}), Error);
  }
}

TEST_CASE("mapped tensors: truncating the file under them raises SIGBUS (documented)",
          "[safetensors]") {
  // The behaviour kern/io/safetensors.hpp documents, and the reason for LoadOptions::copy.
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  io::save_safetensors(path, {{"w", full({1024}, 3.0, DType::Float32)}});
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // child: no OpenMP, no Catch2, only raw reads
    ::signal(SIGBUS, SIG_DFL);  // a sanitizer's handler would turn the signal into an exit
    const io::SafetensorsFile f = io::load_safetensors(path);
    const float* p = static_cast<const float*>(f.get("w").raw_data());
    if (::truncate(path.c_str(), 0) != 0) ::_exit(3);
    volatile float v = p[0];  // the page is gone: SIGBUS
    (void)v;
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGBUS);
}

TEST_CASE("a save removes temp files of writers that were killed", "[safetensors][tempfiles]") {
  TempDir dir;
  const std::string path = dir.file("ck.safetensors");
  io::save_safetensors(path, {{"w", ones({4})}});
  // A writer killed mid-write: the file-size limit kills the child with SIGXFSZ after 64 KB
  // of its 4 MB tensor, as kill -9 would (no handler runs, the kernel drops its flock).
  // Each killed save leaves one orphan; the next save (here the next child's) removes it.
  std::vector<std::string> seen;
  for (int i = 0; i < 3; ++i) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      struct rlimit no_core = {0, 0}, lim = {64 * 1024, 64 * 1024};
      ::setrlimit(RLIMIT_CORE, &no_core);
      ::setrlimit(RLIMIT_FSIZE, &lim);
      try {
        io::save_safetensors(path, {{"w", ones({1024 * 1024})}});
      } catch (...) {
      }
      ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFSIGNALED(status));
    REQUIRE(WTERMSIG(status) == SIGXFSZ);
    const auto now = temp_files(dir);
    REQUIRE(now.size() == 1);
    REQUIRE(now[0].find(fmt::format(".ck.safetensors.tmp-{}-", pid)) == 0);
    seen.push_back(now[0]);
  }
  REQUIRE(io::load_safetensors(path).get("w").numel() == 4);  // the old file is intact
  // Files that are not kern's to remove: wrong pattern or another target's.
  const std::vector<std::string> foreign = {
      ".ck.safetensors.tmp-999999999-0-zzzzzzzz",        // not 8 hex digits
      ".ck.safetensors.tmp-999999999-0",                 // incomplete
      ".other.safetensors.tmp-999999999-0-0123abcd",     // another target's
      "ck.safetensors.tmp-999999999-0-0123abcd",         // no leading dot
      ".ck.safetensors.tmp-999999999-0-0123abcd.keep"};  // trailing text
  for (const auto& f : foreign) write_bytes(dir.file(f), "x");

  io::save_safetensors(path, {{"w", full({4}, 2.0)}});
  REQUIRE(temp_files(dir).size() == foreign.size());
  for (const auto& o : seen) REQUIRE_FALSE(fs::exists(dir.path / o));
  for (const auto& f : foreign) REQUIRE(fs::exists(dir.path / f));
  REQUIRE(io::load_safetensors(path).get("w").to_vector<float>() == std::vector<float>(4, 2.0f));
}

TEST_CASE("a save never removes a live writer's temp file", "[safetensors][tempfiles]") {
  TempDir dir;
  const std::string path = dir.file("ck.safetensors");
  // A concurrent writer (another process) in the middle of its save: kern's name pattern,
  // its pid, and the flock it holds until its rename.
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  struct Child {  // killed however the test ends
    pid_t pid = -1;
    ~Child() {
      if (pid > 0 && ::kill(pid, SIGKILL) == 0) ::waitpid(pid, nullptr, 0);
    }
  } child;
  child.pid = ::fork();
  REQUIRE(child.pid >= 0);
  const pid_t pid = child.pid == 0 ? ::getpid() : child.pid;
  const std::string live = dir.file(fmt::format(".ck.safetensors.tmp-{}-0-0123abcd", pid));
  if (child.pid == 0) {
    const int fd = ::open(live.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0 || ::flock(fd, LOCK_EX) != 0 || ::write(fd, "partial", 7) != 7) ::_exit(1);
    if (::write(ready[1], "r", 1) != 1) ::_exit(1);
    for (;;) ::pause();
  }
  char c;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  io::save_safetensors(path, {{"w", ones({4})}});
  REQUIRE(fs::exists(live));  // locked by a live writer: kept

  // Unlocked but its pid is alive (pid reuse, or a writer without flock): kept while fresh,
  // removed once it has not been written for a day.
  const std::string reused = dir.file(fmt::format(".ck.safetensors.tmp-{}-7-89abcdef", pid));
  write_bytes(reused, "old");
  io::save_safetensors(path, {{"w", ones({4})}});
  REQUIRE(fs::exists(reused));
  const struct timespec two_days_ago[2] = {{::time(nullptr) - 2 * 86400, 0},
                                           {::time(nullptr) - 2 * 86400, 0}};
  REQUIRE(::utimensat(AT_FDCWD, reused.c_str(), two_days_ago, 0) == 0);
  io::save_safetensors(path, {{"w", ones({4})}});
  REQUIRE_FALSE(fs::exists(reused));
  REQUIRE(fs::exists(live));  // still locked, however old it is
  REQUIRE(::utimensat(AT_FDCWD, live.c_str(), two_days_ago, 0) == 0);
  io::save_safetensors(path, {{"w", ones({4})}});
  REQUIRE(fs::exists(live));

  // The writer dies (kill -9): its lock goes with it, and the next save removes the file.
  REQUIRE(::kill(pid, SIGKILL) == 0);
  REQUIRE(::waitpid(pid, nullptr, 0) == pid);
  child.pid = -1;
  io::save_safetensors(path, {{"w", ones({4})}});
  REQUIRE_FALSE(fs::exists(live));
  REQUIRE(temp_files(dir).empty());
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_CASE("kern exits non-zero with a message when its output cannot be written", "[cli][errors]") {
  REQUIRE(fs::exists("/dev/full"));  // Linux always has it
  TempDir dir;
  // Small output (fits the stdio buffer: the error shows at fflush) and large output (the
  // buffer overflows: the error shows at fputs, and fflush then succeeds).
  const std::string small = dir.file("small.safetensors"), large = dir.file("large.safetensors");
  io::save_safetensors(small, {{"w", ones({2})}});
  std::vector<std::pair<std::string, Tensor>> many;
  for (int i = 0; i < 2000; ++i) many.emplace_back(fmt::format("tensor.{:05d}", i), ones({1}));
  io::save_safetensors(large, many);
  for (const auto& file : {small, large}) {
    INFO(file);
    const RunResult ok = run_program({kKern, "inspect", file}, dir);
    REQUIRE(ok.status == 0);
    const RunResult r = run_program({kKern, "inspect", file}, dir, "/dev/full");
    REQUIRE(r.exited);
    REQUIRE(r.status == 2);
    REQUIRE_THAT(r.err, Catch::Contains("kern inspect: cannot write the output") &&
                            Catch::Contains("No space left on device"));
  }
  REQUIRE(run_program({kKern, "inspect", large}, dir).out.size() > 65536);
  const RunResult help = run_program({kKern, "--help"}, dir, "/dev/full");
  REQUIRE(help.status == 2);
  REQUIRE_THAT(help.err, Catch::Contains("cannot write"));
}

TEST_CASE("kern inspect shows the [2^62, 0] file at once", "[cli][sizes]") {
  TempDir dir;
  const std::string file = std::string(KERN_TEST_DATA_DIR) + "/regression/zero_numel_2p62x0.safetensors";
  const auto t0 = std::chrono::steady_clock::now();
  const RunResult r = run_program({kKern, "inspect", file}, dir);
  REQUIRE(seconds_since(t0) < 10.0);  // before: an endless copy over 2^62 empty rows
  REQUIRE(r.status == 0);
  REQUIRE_THAT(r.out, Catch::Contains("[4611686018427387904, 0]") && Catch::Contains("sum=0 ") &&
                          Catch::Contains("crc32=00000000"));
}
