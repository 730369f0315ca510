// libFuzzer target: the `kern` command line, in-process (kern::cli::run). The input is text:
// one argument per line up to the first empty line; the rest is the content of a file whose
// path replaces every "{file}" in the arguments (so `inspect {file}` fuzzes the tool on any
// bytes). run() must return 0, 1 or 2 and never throw, crash or exit. (coord-check is left
// out: see below.)
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "../tools/cli/commands.hpp"
#include "fuzz_util.hpp"

namespace {

// The tool's output goes to /dev/null (a real stream, so write checks behave as in use);
// sanitizer reports still reach the terminal (they write to file descriptor 2 directly).
struct Silence {
  std::ofstream null_out{"/dev/null"}, null_err{"/dev/null"};
  FILE* null_file = std::fopen("/dev/null", "w");
  FILE *saved_stdout = stdout, *saved_stderr = stderr;
  std::streambuf *saved_cout = std::cout.rdbuf(), *saved_cerr = std::cerr.rdbuf();
  Silence() {
    if (!null_file) kern::fuzz::invariant_failed("cannot open /dev/null");
    stdout = stderr = null_file;
    std::cout.rdbuf(null_out.rdbuf());
    std::cerr.rdbuf(null_err.rdbuf());
  }
  ~Silence() {
    stdout = saved_stdout;
    stderr = saved_stderr;
    std::cout.rdbuf(saved_cout);
    std::cerr.rdbuf(saved_cerr);
    std::fclose(null_file);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = kern::fuzz::as_chars(data, size);
  const size_t blank = text.find("\n\n");
  const std::string_view arg_text = text.substr(0, blank);
  const std::string_view content =
      blank == std::string_view::npos ? std::string_view() : text.substr(blank + 2);
  const kern::fuzz::MemFile file(reinterpret_cast<const uint8_t*>(content.data()), content.size());

  std::vector<std::string> args = {"kern"};
  for (size_t begin = 0; begin <= arg_text.size() && !arg_text.empty();) {
    const size_t end = std::min(arg_text.find('\n', begin), arg_text.size());
    std::string arg(arg_text.substr(begin, end - begin));
    for (size_t at; (at = arg.find("{file}")) != std::string::npos;) arg.replace(at, 6, file.path());
    args.push_back(std::move(arg));
    begin = end + 1;
  }
  // coord-check builds and trains zoo models at the widths asked for: seconds to hours per
  // input, and exit 3 for a failing verdict. Its argument errors are tested by
  // tests/cli/coord_check.sh; the fuzzer covers the parser and inspect.
  for (const auto& a : args)
    if (a.find("coord") != std::string::npos) return -1;  // libFuzzer: not added to the corpus
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);

  int status;
  {
    Silence quiet;
    status = kern::cli::run(static_cast<int>(args.size()), argv.data());
  }
  if (status < 0 || status > 2) kern::fuzz::invariant_failed("kern returned an unknown status");
  return 0;
}
