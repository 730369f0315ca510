#pragma once
// Subcommands of the `kern` command-line tool. Each add_* function registers its subcommand
// (options and help) on the top-level app and returns how to run it once parsed, so main.cpp
// stays a list of commands (later: plot, ...).
#include <CLI/CLI.hpp>
#include <functional>

namespace kern::cli {

struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;  // returns the process exit status
};

/// `kern inspect FILE.safetensors`: metadata, then per tensor name, dtype, shape, checksums.
/// Exit 0, or 2 (message "kern inspect: <what is wrong>" on stderr) for a bad file or when
/// the output cannot be written.
Command add_inspect(CLI::App& app);

/// `kern coord-check --model NAME --param mup --widths 8,16,32,64 ...`: the muP coordinate
/// check of a zoo model. Exit 0 when every verdict passes, 3 when one fails, 2 on an error.
Command add_coord_check(CLI::App& app);

/// The whole tool: parses argv (argv[0] is the program name), runs the chosen subcommand and
/// returns the exit status: 0 success, 1 usage error, 2 the subcommand failed. Never throws
/// and never calls exit(), so a fuzzer can call it in-process.
int run(int argc, const char* const* argv);

}  // namespace kern::cli
