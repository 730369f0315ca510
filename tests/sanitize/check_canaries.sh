#!/bin/sh
# The sanitizer job sees bugs: each planted bug of canary.cpp must end the canary with a
# non-zero status and the sanitizer's report, under the ASAN_OPTIONS / UBSAN_OPTIONS /
# LSAN_OPTIONS that `make test-sanitize` exports (with its suppression files); the bug-free
# mode must exit 0. Usage: check_canaries.sh CANARY_EXECUTABLE
set -u
canary=$1
case "${ASAN_OPTIONS:-}" in
  *suppressions=*) ;;
  *) echo "check_canaries: ASAN_OPTIONS lacks make test-sanitize's options; run through" \
          "\`make test-sanitize\` (it sets ASAN_OPTIONS, UBSAN_OPTIONS, LSAN_OPTIONS)" >&2
     exit 1 ;;
esac
status=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
expect() {  # MODE REPORT_SUBSTRING
  "$canary" "$1" >"$out" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ] || ! grep -q -- "$2" "$out"; then
    echo "FAILED: canary $1 exited $rc without \"$2\":" >&2
    tail -n 20 "$out" >&2
    status=1
  else
    echo "ok: $1 reported (exit $rc): $(grep -m1 -- "$2" "$out")"
  fi
}
if ! "$canary" none >"$out" 2>&1 || [ -s "$out" ]; then
  echo "FAILED: canary none (no bug) did not exit 0 silently:" >&2
  cat "$out" >&2
  status=1
else
  echo "ok: none exits 0 without a report"
fi
expect heap-overflow "AddressSanitizer: heap-buffer-overflow"
expect stack-use-after-return "AddressSanitizer: stack-use-after-return"
expect signed-overflow "runtime error: signed integer overflow"
expect float-cast-overflow "is outside the range of representable values"
expect leak "LeakSanitizer: detected memory leaks"
expect vector-bounds "__n < this->size()"
exit $status
