// The `kern` command-line tool: `kern <subcommand> ...` (see commands.hpp and app.cpp).
#include "commands.hpp"

int main(int argc, char** argv) { return kern::cli::run(argc, argv); }
