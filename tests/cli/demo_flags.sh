#!/bin/sh
# The demo (examples/fashion_mnist) ends bad input with a non-zero status and a message that
# names the problem, never a crash. Usage: demo_flags.sh <path to fashion_mnist>
demo="$1"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail=0
expect() {  # expect <what the message must contain> <args...>
  want="$1"; shift
  "$demo" "$@" >"$tmp/out" 2>"$tmp/err"
  status=$?
  if [ "$status" -eq 0 ] || [ "$status" -ge 128 ]; then
    echo "FAIL: fashion_mnist $* exited with $status (want a non-zero exit, not a signal)"; fail=1
  elif ! grep -qF -- "$want" "$tmp/err"; then
    echo "FAIL: fashion_mnist $*: stderr lacks '$want':"; cat "$tmp/err"; fail=1
  else
    echo "ok: fashion_mnist $* -> $status: $(head -n 1 "$tmp/err")"
  fi
}
expect "--epochs: Value 0 not in range" --epochs 0
expect "--lr: expected a positive number, got 'abc'" --lr abc
expect "--lr: expected a positive number, got '-1'" --lr=-1
expect "--batch-size" --batch-size x
expect "--threads" --threads 0
expect "The following argument was not expected: --bogus" --bogus
mkdir -p "$tmp/empty"
expect "$tmp/empty/train-images-idx3-ubyte.gz': no such file" --data "$tmp/empty" --epochs 1
printf 'not gzip, not idx' > "$tmp/bad.gz"
mkdir -p "$tmp/corrupt"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  cp "$tmp/bad.gz" "$tmp/corrupt/$f.gz"
done
expect "train-images-idx3-ubyte.gz" --data "$tmp/corrupt" --epochs 1
expect "missing.safetensors: cannot open" --resume "$tmp/missing.safetensors" --epochs 1
exit $fail
