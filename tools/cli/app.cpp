// The `kern` command line as a function (main.cpp calls it; fuzz/fuzz_cli.cpp drives it
// in-process). Exit status: 0 success, 1 usage error, 2 the subcommand failed (e.g. a
// malformed file, or its output could not be written).
#include <cstdio>
#include <iostream>
#include <vector>

#include "commands.hpp"

namespace kern::cli {

namespace {
// CLI11 prints help and usage errors through iostreams: a failed write (a full disk,
// /dev/full) must show in the exit status too.
int checked_exit(int status) {
  std::cout.flush();
  if (!std::cout) {
    std::fprintf(stderr, "kern: cannot write to standard output\n");
    std::cout.clear();
    return 2;
  }
  return status;
}
}  // namespace

int run(int argc, const char* const* argv) {
  CLI::App app{"kern: tools for kern checkpoints and training runs"};
  app.require_subcommand(1);
  app.fallthrough(false);
  std::vector<Command> commands = {
      add_inspect(app),
      add_coord_check(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help prints and exits 0; every other parse problem is a usage error (exit 1).
    return checked_exit(app.exit(e) == 0 ? 0 : 1);
  }
  for (auto& c : commands)
    if (c.app->parsed()) return checked_exit(c.run());
  return 1;
}

}  // namespace kern::cli
