#!/bin/sh
# The fault test of issue 15: rank 1 throws in the middle of DDP training while rank 0 waits
# in a collective. The job must end with a non-zero status within 30 s, and its output must
# name the rank and the error. `timeout 60` only guards this script: a run that needs it fails.
#   fault.sh MPIRUN KERN_DIST_TESTS
mpirun="$1"; bin="$2"
start=$(date +%s)
out=$(OMP_NUM_THREADS=1 timeout 60 "$mpirun" -np 2 --oversubscribe --allow-run-as-root "$bin" fault_injected 2>&1)
rc=$?
elapsed=$(( $(date +%s) - start ))
echo "$out" | tail -20
echo "fault.sh: exit status $rc after ${elapsed} s"
[ "$rc" -ne 0 ] || { echo "fault.sh: FAIL: the job exited 0"; exit 1; }
[ "$rc" -ne 124 ] || { echo "fault.sh: FAIL: the job hung (killed by timeout after 60 s)"; exit 1; }
[ "$elapsed" -le 30 ] || { echo "fault.sh: FAIL: took ${elapsed} s (> 30 s)"; exit 1; }
echo "$out" | grep -q "kern::dist: rank 1 of 2 failed: injected failure at step 3" ||
  { echo "fault.sh: FAIL: the output does not name rank 1 and the error"; exit 1; }
echo "fault.sh: PASS"
