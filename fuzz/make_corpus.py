#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/: a few small valid and invalid inputs per
target (libFuzzer mutates from them; `make fuzz` copies them into the build folder and adds
what it finds there, so these stay small). Standard library only; deterministic.
Run: python3 fuzz/make_corpus.py
"""
import gzip
import json
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
DATA = os.path.join(ROOT, "tests", "data")


def target_dir(target):
    d = os.path.join(CORPUS, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def safetensors(tensors, metadata=None):
    """tensors: name -> (dtype, shape, raw bytes); 8-byte dtypes first, header padded to 8."""
    header = {"__metadata__": metadata} if metadata else {}
    data = b""
    order = sorted(tensors, key=lambda n: (tensors[n][0] not in ("F64", "I64"), n))
    for name in order:
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


VALID = {
    "small.safetensors": safetensors({
        "w": ("F32", [2, 3], struct.pack("<6f", 1, -2, 3.5, 0, 1e-3, -7)),
        "b": ("F64", [2], struct.pack("<2d", 0.25, -1)),
        "labels": ("I64", [3], struct.pack("<3q", 0, 9, -1)),
    }, {"format": "pt", "epoch": "3"}),
    "scalar_and_empty.safetensors": safetensors({
        "s": ("F64", [], struct.pack("<d", 2.5)),
        "e": ("F32", [0, 4], b""),
    }),
    "zero_numel_2p62x0.safetensors": safetensors({"a": ("F32", [2**62, 0], b"")}),
    "nan_inf.safetensors": safetensors({"x": ("F32", [4], struct.pack("<4f", float("nan"), float("inf"), -float("inf"), 3e38))}),
    "nothing.safetensors": safetensors({}),
}


def write(d, name, data):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors: valid files and a few of the malformed corpus
d = target_dir("safetensors")
for name, data in VALID.items():
    write(d, name, data)
for name in ["duplicate_key", "hole", "overlapping", "shape_overflow_numel", "non_utf8_header",
             "offsets_huge", "metadata_value_not_string", "unsupported_dtype_bf16"]:
    shutil.copy(os.path.join(DATA, "malformed", name + ".safetensors"), d)

# ---- idx: plain and gzip'd labels and images, and an overflowing header
d = target_dir("idx")
labels = bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + bytes([0, 1, 2, 9, 255])
images = bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 2, 3) + bytes(range(12))
write(d, "labels.idx", labels)
write(d, "images.idx", images)
write(d, "images.idx.gz", gzip.compress(images, mtime=0))
write(d, "labels.idx.gz", gzip.compress(labels, mtime=0))
write(d, "sizes_2p31_2p31_4.idx", bytes([0, 0, 8, 3]) + struct.pack(">III", 2**31, 2**31, 4))
write(d, "empty_images.idx", bytes([0, 0, 8, 3]) + struct.pack(">III", 0, 28, 28))

# ---- checkpoint: checkpoints of the fuzz target's model (tests/data/make_regression.py)
d = target_dir("checkpoint")
for name in ["ckpt_good", "ckpt_adam_step_1e300", "ckpt_good_model_bad_optimizer",
             "ckpt_rng_truncated", "ckpt_nan_into_int64_buffer"]:
    shutil.copy(os.path.join(DATA, "regression", name + ".safetensors"), d)

# ---- cli: argument lines, an empty line, then the content of {file}
d = target_dir("cli")
write(d, "inspect_small", b"inspect\n{file}\n\n" + VALID["small.safetensors"])
write(d, "inspect_zero", b"inspect\n{file}\n\n" + VALID["zero_numel_2p62x0.safetensors"])
write(d, "inspect_bad", b"inspect\n{file}\n\n" + open(os.path.join(DATA, "malformed", "hole.safetensors"), "rb").read())
write(d, "inspect_two_files", b"inspect\n{file}\n{file}\n\n" + VALID["nothing.safetensors"])
write(d, "help", b"--help\n")
write(d, "inspect_help", b"inspect\n--help\n")
write(d, "inspect_missing", b"inspect\n")
write(d, "unknown", b"frobnicate\n--bogus\n")
write(d, "no_args", b"")
print("seed corpora written to", CORPUS)
