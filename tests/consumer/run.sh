#!/usr/bin/env bash
# The install test. Installs the built kern into a temporary prefix, moves the prefix (an
# installed tree must not depend on where it was installed), then, with LD_LIBRARY_PATH
# unset:
#   1. runs the installed bin/kern (found its libraries through RUNPATH $ORIGIN/../lib),
#   2. checks the plotting scripts are in share/kern/,
#   3. configures, builds and runs the consumer project against it with find_package(kern),
#   4. checks that the consumer starts libgomp with kern's OpenMP default (tests/omp).
# Usage: run.sh BUILD_DIR
set -euo pipefail
build_dir=$1
src_dir=$(cd "$(dirname "$0")" && pwd)
data_dir=$(cd "$src_dir/../data" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unset LD_LIBRARY_PATH
cmake --install "$build_dir" --prefix "$work/staging" >/dev/null
mv "$work/staging" "$work/prefix"
prefix=$work/prefix

fail() { echo "install test FAILED: $*" >&2; exit 1; }

# 1. the installed tool
[ -x "$prefix/bin/kern" ] || fail "no bin/kern"
"$prefix/bin/kern" --help >/dev/null || fail "bin/kern --help: $("$prefix/bin/kern" --help 2>&1 | tail -n 1)"
"$prefix/bin/kern" inspect "$data_dir/mlp_tanh.safetensors" >"$work/inspect.txt" ||
  fail "bin/kern inspect exited $?"
grep -q "float" "$work/inspect.txt" || fail "bin/kern inspect printed no tensors"
echo "ok: installed bin/kern runs without LD_LIBRARY_PATH"

# 2. the plotting scripts
for s in "$src_dir"/../../tools/*.py "$src_dir"/../../tools/kern.mplstyle; do
  [ -f "$prefix/share/kern/$(basename "$s")" ] || fail "share/kern/$(basename "$s") not installed"
done
# every script loads the style from its own directory: one must run from the installed tree
if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
  printf '{"step": 0, "loss": 1.0, "sharpness": 2.0, "two_over_lr": 4.0}\n{"step": 1, "loss": 0.5, "sharpness": 3.0, "two_over_lr": 4.0}\n' >"$work/run.jsonl"
  /usr/bin/python3 "$prefix/share/kern/plot_dynamics.py" "$work/run.jsonl" --figure "$work/run.png" >/dev/null ||
    fail "installed plot_dynamics.py --figure failed"
  [ -s "$work/run.png" ] || fail "installed plot_dynamics.py wrote no figure"
fi
echo "ok: plotting scripts and kern.mplstyle in share/kern/"

# 3. a downstream project
cmake -S "$src_dir" -B "$work/build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/build" >/dev/null
"$work/build/consumer" "$prefix"
"$src_dir/../omp/check_defaults.sh" "$work/build/consumer" "$prefix"
