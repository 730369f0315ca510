// The `kern` command-line tool: `kern <subcommand> ...` (see commands.hpp).
// Exit status: 0 success, 1 usage error, 2 the subcommand failed (e.g. a malformed file).
#include <cstdio>
#include <vector>

#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"kern: tools for kern checkpoints and training runs"};
  app.require_subcommand(1);
  app.fallthrough(false);
  std::vector<kern::cli::Command> commands = {
      kern::cli::add_inspect(app),
      kern::cli::add_coord_check(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help prints and exits 0; every other parse problem is a usage error (exit 1).
    return app.exit(e) == 0 ? 0 : 1;
  }
  for (auto& c : commands)
    if (c.app->parsed()) return c.run();
  return 1;
}
