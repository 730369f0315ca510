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
/// Exit 0, or 2 (message "kern inspect: <what is wrong>" on stderr) for a bad file.
Command add_inspect(CLI::App& app);

/// `kern coord-check --model NAME --param mup --widths 8,16,32,64 ...`: the muP coordinate
/// check of a zoo model. Exit 0 when every verdict passes, 3 when one fails, 2 on an error.
Command add_coord_check(CLI::App& app);

}  // namespace kern::cli
