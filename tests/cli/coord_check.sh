#!/bin/sh
# `kern coord-check` on p4cnn: muP passes (exit 0) and writes coord.jsonl and coord.png; SP's
# logits grow with width (exit 3); bad input is a message and exit 1 (usage) or 2 (error).
# Usage: coord_check.sh <path to the kern tool>
kern="$1"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail=0
run() {  # run <expected status> <what stdout+stderr must contain> <args...>
  want_status="$1"; want="$2"; shift 2
  "$kern" coord-check "$@" >"$tmp/out" 2>&1
  status=$?
  if [ "$status" -ne "$want_status" ]; then
    echo "FAIL: kern coord-check $* exited with $status, want $want_status:"; cat "$tmp/out"; fail=1
  elif ! grep -qF -- "$want" "$tmp/out"; then
    echo "FAIL: kern coord-check $*: output lacks '$want':"; cat "$tmp/out"; fail=1
  else
    echo "ok: kern coord-check $* -> $status"
  fi
}
small="--model p4cnn --widths 4,8,16,32 --size 8 --batch 4 --in-chans 1 --steps 3"
run 0 "verdict: PASS" $small --param mup --out "$tmp/mup"
for f in coord.jsonl coord.png; do
  [ -s "$tmp/mup/$f" ] || { echo "FAIL: $tmp/mup/$f missing or empty"; fail=1; }
done
run 3 "verdict: FAIL" $small --param sp
run 2 "unknown model 'p4cnn_nope'" --model p4cnn_nope --widths 4,8,16,32
run 2 "give at least 4 widths" --model p4cnn --widths 4,8
run 1 "--param" --model p4cnn --widths 4,8,16,32 --param bogus
exit $fail
