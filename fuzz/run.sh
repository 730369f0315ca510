#!/bin/sh
# Runs every libFuzzer target of fuzz/ for a bounded time from its seed corpus and fails if
# any of them finds something (a crash, a sanitizer report, an uncaught exception other than
# kern::Error, a timeout, running out of memory, or a broken invariant).
# Usage: fuzz/run.sh BUILD_DIR [SECONDS_PER_TARGET (default 60)] [TARGET...]
# New inputs go to BUILD_DIR/fuzz/runs/<target>/corpus (the seeds in fuzz/corpus stay
# small); a finding is saved as BUILD_DIR/fuzz/runs/<target>/crash-* (or leak-, timeout-,
# oom-), ready to be copied into tests/data/regression/ (see tests/data/make_regression.py).
set -u
build=$1
shift
seconds=60
if [ $# -gt 0 ]; then seconds=$1; shift; fi
root=$(cd "$(dirname "$0")/.." && pwd)
targets=${*:-safetensors idx checkpoint cli}
status=0
# Symbolized stack traces in reports (make fuzz installs llvm-16).
symbolizer=/usr/lib/llvm-16/bin/llvm-symbolizer
[ -x "$symbolizer" ] && export ASAN_SYMBOLIZER_PATH="$symbolizer"
for t in $targets; do
  exe="$build/fuzz/fuzz_$t"
  work="$build/fuzz/runs/$t"
  rm -rf "$work" && mkdir -p "$work/corpus"
  cp "$root/fuzz/corpus/$t/"* "$work/corpus/"
  dict=""
  [ -f "$root/fuzz/dict/$t.dict" ] && dict="-dict=$root/fuzz/dict/$t.dict"
  case $t in checkpoint) max_len=16384 ;; *) max_len=4096 ;; esac
  # One thread: libFuzzer runs inputs one after another; OpenMP pools only add noise.
  OMP_NUM_THREADS=1 \
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:handle_abort=1:symbolize=1" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    "$exe" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$work/" $dict "$work/corpus" >"$work/log" 2>&1
  rc=$?
  # libFuzzer's last status line: "#<runs> DONE cov: <edges> ft: <features> corp: <inputs>/<bytes> ... exec/s: <n>"
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$work/log" | tail -n 1)
  findings=$(ls "$work" | grep -E '^(crash|leak|timeout|oom)-' || true)
  if [ "$rc" -ne 0 ] || [ -n "$findings" ]; then
    echo "fuzz_$t: FAILED (exit $rc) after ${seconds}s; log: $work/log"
    tail -n 40 "$work/log"
    for f in $findings; do echo "  finding: $work/$f"; done
    status=1
  else
    echo "fuzz_$t: ok, ${seconds}s, no finding: ${done_line:-?}"
  fi
done
exit $status
