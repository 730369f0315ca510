#pragma once
// Test helpers for files and programs: a temporary directory, whole-file reads and writes,
// and running a program (no shell) with its output captured and a timeout.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace kern::test {

namespace fs = std::filesystem;

/// A fresh directory under /tmp, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "kern_safetensors_XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

struct RunResult {
  bool exited = false;
  int status = -1;  // exit status when exited
  int signal = 0;   // terminating signal otherwise
  std::string out, err;
};

/// Runs a program (no shell) with stdout/stderr captured; kills it after 60 s. With
/// `stdout_to`, stdout goes to that file instead (and `out` stays empty).
inline RunResult run_program(const std::vector<std::string>& args, const TempDir& dir,
                             const std::string& stdout_to = "") {
  const std::string out_path = stdout_to.empty() ? dir.file("stdout.txt") : stdout_to;
  const std::string err_path = dir.file("stderr.txt");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  int ws = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (::waitpid(pid, &ws, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &ws, 0);
      FAIL("timed out (hang): " << args.back());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  RunResult r;
  r.exited = WIFEXITED(ws);
  r.status = r.exited ? WEXITSTATUS(ws) : -1;
  r.signal = WIFSIGNALED(ws) ? WTERMSIG(ws) : 0;
  if (stdout_to.empty()) r.out = read_bytes(out_path);
  r.err = read_bytes(err_path);
  return r;
}

/// The `kern` command-line tool of this build.
inline const std::string kKern = std::string(KERN_BINARY_DIR) + "/bin/kern";

}  // namespace kern::test
