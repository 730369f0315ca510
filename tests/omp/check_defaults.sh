#!/usr/bin/env bash
# Checks that an executable linked with kern::kern starts libgomp with kern's OpenMP default
# (OMP_WAIT_POLICY=passive: libgomp spins 0 times, framework/preinit/omp_defaults.cpp) and that the user's settings win.
# libgomp itself reports what it read (OMP_DISPLAY_ENV=verbose prints its ICVs to stderr),
# so this sees what libgomp saw, not what kern believes it set.
# Usage: check_defaults.sh EXECUTABLE [ARGS...]   (the program must start and exit 0)
set -uo pipefail
fail=0
spincount() {  # spincount ENV... -> the GOMP_SPINCOUNT libgomp reported
  env -u GOMP_SPINCOUNT -u OMP_WAIT_POLICY -u KERN_OMP_DEFAULTS "$@" OMP_DISPLAY_ENV=verbose "${prog[@]}" 2>&1 >/dev/null |
    sed -n "s/^ *GOMP_SPINCOUNT = '\([0-9]*\)'.*/\1/p" | head -n 1
}
expect() {  # expect WANT DESCRIPTION ENV...
  local want=$1 what=$2; shift 2
  local got
  got=$(spincount "$@")
  if [ "$got" = "$want" ]; then echo "ok: $what: GOMP_SPINCOUNT $got"
  else echo "FAIL: $what: libgomp read GOMP_SPINCOUNT '$got', want $want"; fail=1; fi
}
prog=("$@")
expect 0 "kern's default (passive)" X=1
expect 300000 "KERN_OMP_DEFAULTS=0 (libgomp's own default)" KERN_OMP_DEFAULTS=0
expect 30000000000 "the user's OMP_WAIT_POLICY=active wins" OMP_WAIT_POLICY=active
expect 300000 "the user's GOMP_SPINCOUNT=300000 wins" GOMP_SPINCOUNT=300000
expect 77 "the user's GOMP_SPINCOUNT wins" GOMP_SPINCOUNT=77
# the program still gets its arguments and exit status through the re-execution
if ! env -u GOMP_SPINCOUNT -u OMP_WAIT_POLICY "${prog[@]}" >/dev/null 2>&1; then
  echo "FAIL: ${prog[*]} exits non-zero with kern's default"; fail=1
fi
exit $fail
