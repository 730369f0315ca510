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

# Datasets without images (valid IDX files with N = 0) and with two blank 28x28 images.
idx_images() {  # idx_images <file> <count 0 or 2>: uncompressed IDX (gzread reads it as is)
  printf '\000\000\010\003\000\000\000\'"$(printf '%03o' "$2")"'\000\000\000\034\000\000\000\034' > "$1"
  head -c $(($2 * 784)) /dev/zero >> "$1"
}
idx_labels() {  # idx_labels <file> <count 0 or 2>
  printf '\000\000\010\001\000\000\000\'"$(printf '%03o' "$2")" > "$1"
  head -c "$2" /dev/zero >> "$1"
}
dataset() {  # dataset <dir> <train count> <test count>
  mkdir -p "$1"
  idx_images "$1/train-images-idx3-ubyte.gz" "$2"; idx_labels "$1/train-labels-idx1-ubyte.gz" "$2"
  idx_images "$1/t10k-images-idx3-ubyte.gz" "$3"; idx_labels "$1/t10k-labels-idx1-ubyte.gz" "$3"
}
dataset "$tmp/no_test" 2 0
dataset "$tmp/no_train" 0 2
# An empty test set is an error before training (it printed "test accuracy: -nan", exit 0).
expect "the test set in '$tmp/no_test' has 0 images" --data "$tmp/no_test" --epochs 1 --out "$tmp/run"
if grep -q "nan" "$tmp/out" "$tmp/err"; then echo "FAIL: empty test set printed nan"; fail=1; fi
# No training images: a clear message, not the LR scheduler's.
expect "the training set in '$tmp/no_train' has 0 images" --data "$tmp/no_train" --epochs 1 --out "$tmp/run"
# An --out that cannot be written is found before training, not at the first checkpoint.
printf 'x' > "$tmp/a_file"
expect "--out '$tmp/a_file/run': cannot create the directory" --data "$tmp/no_test" --out "$tmp/a_file/run"
expect "--out '/proc': the directory is not writable" --data "$tmp/no_test" --out /proc
if [ "$(id -u)" -ne 0 ]; then  # permissions do not stop root
  mkdir -p "$tmp/read_only" && chmod 555 "$tmp/read_only"
  expect "--out '$tmp/read_only': the directory is not writable" --data "$tmp/no_test" --out "$tmp/read_only"
fi
# Each of these must fail before any training output.
if grep -q "epoch" "$tmp/out"; then echo "FAIL: training started despite a bad --out"; fail=1; fi
exit $fail
