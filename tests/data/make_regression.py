#!/usr/bin/env python3
"""Generates tests/data/regression/: one small input file per defect found by fuzzing and by
the hardening review (issue 12), and regression/expected.json describing what each must do.

tests/test_regression_inputs.cpp feeds every file to its reader:
  "reader": "idx"         kern::data::read_idx
            "safetensors" kern::io::load_safetensors (and `kern inspect`)
            "checkpoint"  kern::io::load_checkpoint into REGRESSION_MODEL with Adam (see the
                          test): on an error the model, the optimizer and the RNG must be
                          unchanged
  "error":  a substring the kern::Error message must contain; "" when the file must load.

Standard library only; deterministic output. Run: python3 tests/data/make_regression.py
Files found by a fuzzer are copied in verbatim (see FUZZ_FINDINGS below) and kept.
"""
import json
import math
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regression")
os.makedirs(OUT, exist_ok=True)
expected = {}

# Crash inputs a fuzzer (fuzz/, `make fuzz`) found, copied here verbatim: name -> (reader,
# error substring, what went wrong). The script keeps them and lists them in expected.json.
FUZZ_FINDINGS = {
    # [2147538646, 0, 2^32 - 1]: no elements, but select(0, last) computed the view's offset
    # 2147538645 * (2^32 - 1), a signed overflow (UBSan; movement.cpp narrow).
    "fuzz_idx_last_row_offset_overflow.idx": ("idx", "", "select of the last row of an empty "
                                              "tensor overflowed its offset"),
    # [2147483903, 4294967168, 0]: sum over all dims multiplied the reduced sizes before
    # reaching the 0 (signed overflow in reduce.cpp's sum_kernel).
    "fuzz_idx_sum_reduced_size_overflow.idx": ("idx", "", "sum of an empty tensor with huge "
                                               "sizes overflowed the reduced count"),
}


def write(name, data, reader, error, note):
    assert name not in expected, name
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    expected[name] = {"reader": reader, "error": error, "note": note}


# ---------------------------------------------------------------- IDX headers that overflow
def idx_header(*sizes):
    return bytes([0, 0, 8, len(sizes)]) + b"".join(struct.pack(">I", s) for s in sizes)


# 2^31 * 2^31 * 4 = 2^64 wrapped to 0: a "valid" empty tensor of that shape, then SIGSEGV.
write("idx_sizes_2p31_2p31_4.idx", idx_header(2**31, 2**31, 4), "idx",
      "more elements than int64 can count", "numel wrapped to 0; select(0,0).sum() crashed")
# 2^31 * 2^31 * 2 = 2^63 wrapped negative: std::length_error from vector::reserve.
write("idx_sizes_2p31_2p31_2.idx", idx_header(2**31, 2**31, 2), "idx",
      "more elements than int64 can count", "std::length_error instead of kern::Error")
# The largest sizes, no overflow (2^32-1 cubed overflows, so one size 0): an empty tensor.
write("idx_sizes_max_max_0.idx", idx_header(2**32 - 1, 2**32 - 1, 0), "idx", "",
      "zero elements with huge outer sizes: loads instantly as an empty tensor")


# ---------------------------------------------------------------- safetensors
def safetensors(header, data=b""):
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


# The file on which `kern inspect` hung (the was 79 bytes, this one 82): [2^62, 0] was non-contiguous and copying
# it walked 2^62 empty rows.
zero = safetensors({"a": {"dtype": "F32", "shape": [2**62, 0], "data_offsets": [0, 0]}})

write("zero_numel_2p62x0.safetensors", zero, "safetensors", "",
      "kern inspect hung (copy loop over 2^62 empty rows)")


# ---------------------------------------------------------------- checkpoints
# REGRESSION_MODEL: nn::Sequential(nn::Linear(2, 3), nn::BatchNorm2d(3)) with Adam over its
# parameters (0.weight [3, 2], 0.bias [3], 1.weight [3], 1.bias [3]), stepped once.
PARAMS = [("0.weight", (3, 2)), ("0.bias", (3,)), ("1.weight", (3,)), ("1.bias", (3,))]
BUFFERS = [("1.running_mean", "F32", (3,)), ("1.running_var", "F32", (3,)),
           ("1.num_batches_tracked", "I64", ())]
FMT = {"F32": "<%df", "F64": "<%dd", "I64": "<%dq"}


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


# A valid mt19937_64 text state (any 312 words and an index are valid), as Generator::state().
RNG_STATE = "42 0 0x0p+0 " + " ".join(str((i * 6364136223846793005 + 1442695040888963407) % 2**64)
                                     for i in range(312)) + " 312"


def checkpoint(overrides=None, meta=None, drop=()):
    """A checkpoint of REGRESSION_MODEL: every tensor holds 0.25 * (its index + 1), except the
    `overrides` (name -> (dtype, shape, values)); `meta` overrides __metadata__ entries."""
    tensors = {}
    for i, (name, shape) in enumerate(PARAMS):
        tensors["model." + name] = ("F32", shape, [0.25 * (i + 1)] * numel(shape))
    for name, dtype, shape in BUFFERS:
        tensors["model." + name] = (dtype, shape, [1] * numel(shape))
    tensors["optim.group.0.lr"] = ("F64", (), [0.001])
    tensors["optim.group.0.weight_decay"] = ("F64", (), [0.0])
    for i, (name, shape) in enumerate(PARAMS):
        tensors[f"optim.state.{i}.step"] = ("F64", (), [1.0])
        tensors[f"optim.state.{i}.exp_avg"] = ("F32", shape, [0.5] * numel(shape))
        tensors[f"optim.state.{i}.exp_avg_sq"] = ("F32", shape, [0.125] * numel(shape))
    tensors.update(overrides or {})
    for d in drop:
        del tensors[d]
    metadata = {"kern.format": "kern-checkpoint-1", "kern.step": "5", "kern.rng_state": RNG_STATE}
    metadata.update(meta or {})
    header, data = {"__metadata__": metadata}, b""
    for name in sorted(tensors):
        dtype, shape, values = tensors[name]
        raw = struct.pack(FMT[dtype] % len(values), *values)
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return safetensors(header, data)


def ck(name, error, note, **kw):
    write(name, checkpoint(**kw), "checkpoint", error, note)


ck("ckpt_good.safetensors", "", "loads: every parameter = 0.25 * (index + 1), kern.step 5")
ck("ckpt_adam_step_1e300.safetensors", "not a whole step count",
   "float -> int64 cast of 1e300 was undefined behaviour",
   overrides={"optim.state.0.step": ("F64", (), [1e300])})
ck("ckpt_adam_step_nan.safetensors", "not a whole step count", "NaN step count",
   overrides={"optim.state.1.step": ("F64", (), [math.nan])})
ck("ckpt_adam_step_negative.safetensors", "not a whole step count", "negative step count",
   overrides={"optim.state.2.step": ("F64", (), [-3.0])})
ck("ckpt_adam_step_fraction.safetensors", "not a whole step count", "step 2.5",
   overrides={"optim.state.3.step": ("F64", (), [2.5])})
ck("ckpt_lr_inf.safetensors", "not a finite non-negative number", "lr = inf",
   overrides={"optim.group.0.lr": ("F64", (), [math.inf])})
ck("ckpt_kern_step_negative.safetensors", "is negative", "kern.step -5 was accepted",
   meta={"kern.step": "-5"})
ck("ckpt_kern_step_not_integer.safetensors", "is not an integer", "kern.step ' 5x'",
   meta={"kern.step": " 5x"})
ck("ckpt_rng_malformed.safetensors", "kern.rng_state", "the message named neither file nor field",
   meta={"kern.rng_state": "not a generator state"})
ck("ckpt_rng_truncated.safetensors", "kern.rng_state", "engine state cut short",
   meta={"kern.rng_state": RNG_STATE[:200]})
ck("ckpt_model_shape_mismatch.safetensors", "shape mismatches", "model rejected",
   overrides={"model.0.weight": ("F32", (2, 3), [0.0] * 6)})
# The model part is fine; the old load copied it into the model and only then rejected the
# optimizer part (or the RNG state): a half-overwritten model.
ck("ckpt_good_model_bad_optimizer.safetensors", "has shape", "model was half-overwritten",
   overrides={"optim.state.1.exp_avg": ("F32", (4,), [0.0] * 4)})
ck("ckpt_good_model_and_optimizer_bad_rng.safetensors", "kern.rng_state",
   "model and optimizer were overwritten before the RNG state failed",
   meta={"kern.rng_state": RNG_STATE + " trailing"})
ck("ckpt_nan_into_int64_buffer.safetensors", "cannot convert nan",
   "NaN copied into the int64 num_batches_tracked: UB, and after other tensors were copied",
   overrides={"model.1.num_batches_tracked": ("F32", (), [math.nan])})

for name, (reader, error, note) in FUZZ_FINDINGS.items():
    assert os.path.exists(os.path.join(OUT, name)), name
    assert name not in expected, name
    expected[name] = {"reader": reader, "error": error, "note": "fuzzer finding: " + note}

with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)
    f.write("\n")
print(f"wrote {len(expected)} regression files to {OUT}")
