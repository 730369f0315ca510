#!/usr/bin/env python3
"""Generates tests/data/malformed/: small safetensors files that are each wrong in one way.

Every file must be rejected by kern::io::load_safetensors with a kern::Error whose message
contains the substring recorded in malformed/expected.json, and `kern inspect` must exit 2 on
it -- except the files whose only fault is a dtype kern cannot hold (unknown_dtype,
unsupported_dtype_c64): they are valid files, which `kern inspect` lists. Standard library only; deterministic output. Run: python3 tests/data/make_malformed.py
"""
import json
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "malformed")
expected = {}


def raw(name, data, expect):
    """Writes `data` verbatim as malformed/<name>.safetensors."""
    assert name not in expected, name
    with open(os.path.join(OUT, name + ".safetensors"), "wb") as f:
        f.write(data)
    expected[name + ".safetensors"] = expect


def st(name, header, data=b"", expect="", length=None):
    """A file from a header (dict -> compact JSON, or str/bytes verbatim) and a data section.
    `length` overrides the 8-byte header length prefix."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    n = len(header) if length is None else length
    raw(name, struct.pack("<Q", n) + header + data, expect)


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


os.makedirs(OUT, exist_ok=True)
for old in os.listdir(OUT):
    if old.endswith(".safetensors"):
        os.remove(os.path.join(OUT, old))

TWO = f32(1.0, 2.0)  # the 8 data bytes of a valid F32 [2] tensor

# ---- the length prefix and the header bytes
raw("empty", b"", "shorter than the 8-byte")
raw("truncated_prefix", b"\x10\x00\x00", "shorter than the 8-byte")
st("header_length_beyond_file", {"a": entry()}, TWO, "runs past the end of the file", length=4096)
st("header_length_huge", {"a": entry()}, TWO, "exceeds the 100 MB limit", length=2**64 - 1)
st("header_length_200mb", {"a": entry()}, TWO, "exceeds the 100 MB limit", length=200_000_000)
st("header_length_zero", b"", b"", "not valid JSON")
good = json.dumps({"a": entry()}, separators=(",", ":")).encode()
raw("truncated_data", struct.pack("<Q", len(good)) + good + TWO[:5], "run past the end of the data section")
st("invalid_json", b'{"a": {"dtype": "F32", "shape": [2], ', TWO, "not valid JSON")
st("trailing_garbage", good + b" xyz", TWO, "not valid JSON")
st("non_utf8_header", b'{"a\xff\xfe": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', TWO,
   "not valid UTF-8")
st("overlong_utf8", b'{"\xc0\xaf": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', TWO,
   "not valid UTF-8")
st("header_is_array", b"[1, 2, 3]", b"", "not a JSON object")
st("header_is_string", b'"safetensors"', b"", "not a JSON object")
st("deep_nesting", b'{"a": ' + b"[" * 10000 + b"]" * 10000 + b"}", b"", "nested more than")
st("duplicate_key", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
   b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', TWO, "more than once")

# ---- __metadata__
st("metadata_not_object", {"__metadata__": "v1", "a": entry()}, TWO, "__metadata__ must be a map")
st("metadata_value_not_string", {"__metadata__": {"epoch": 3}, "a": entry()}, TWO,
   "__metadata__ must be a map")

# ---- entry structure and types
st("entry_not_object", {"a": [0, 8]}, TWO, "entry is not a JSON object")
st("missing_dtype", {"a": {"shape": [2], "data_offsets": [0, 8]}}, TWO, 'missing "dtype"')
st("missing_shape", {"a": {"dtype": "F32", "data_offsets": [0, 8]}}, TWO, 'missing "shape"')
st("missing_data_offsets", {"a": {"dtype": "F32", "shape": [2]}}, TWO, 'missing "data_offsets"')
st("dtype_not_string", {"a": entry(dtype=4)}, TWO, '"dtype" is not a string')
st("unknown_dtype", {"a": entry(dtype="F17")}, TWO, "unknown dtype")
# F16 and BF16 are read since issue 14; C64 has no kern storage type. These two files are
# valid for `kern inspect` (it lists them): UNLOADABLE_ONLY below.
st("unsupported_dtype_c64", {"a": entry(dtype="C64", offsets=(0, 8))}, TWO, "C64 is not supported")
st("wrong_byte_size_bf16", {"a": entry(dtype="BF16", shape=(3,), offsets=(0, 8))}, TWO, "wrong byte size")
st("shape_not_array", {"a": entry() | {"shape": "2"}}, TWO, '"shape" is not an array')
st("shape_float", {"a": entry(shape=(2.0,))}, TWO, "non-integer dimension")
st("negative_shape", {"a": entry(shape=(-1, 2))}, TWO, "negative dimension")
st("shape_overflow_numel", {"a": entry(shape=(2**40, 2**40), offsets=(0, 8))}, TWO, "overflows")
st("shape_overflow_bytes", {"a": entry(dtype="F64", shape=(2**61,), offsets=(0, 8))}, TWO, "overflows")
st("shape_dim_beyond_int64", {"a": entry(shape=(2**63,))}, TWO, "overflows int64")
st("shape_overflow_with_zero", {"a": entry(shape=(0, 2**40, 2**40), offsets=(0, 0))}, b"", "overflows")

# ---- data_offsets
st("offsets_one_value", {"a": entry(offsets=(8,))}, TWO, "must be [begin, end]")
st("offsets_three_values", {"a": entry(offsets=(0, 4, 8))}, TWO, "must be [begin, end]")
st("offsets_not_array", {"a": entry() | {"data_offsets": 8}}, TWO, "must be [begin, end]")
st("offsets_negative", {"a": entry(offsets=(-8, 0))}, TWO, "non-negative integers")
st("offsets_float", {"a": entry(offsets=(0.0, 8.0))}, TWO, "non-negative integers")
st("offsets_begin_after_end", {"a": entry(offsets=(8, 0))}, TWO, "begin > end")
st("offsets_out_of_bounds", {"a": entry(offsets=(0, 8)), "b": entry(offsets=(8, 16))}, TWO,
   "run past the end of the data section")
st("offsets_huge", {"a": entry(offsets=(2**64 - 9, 2**64 - 1))}, TWO, "run past the end")
st("wrong_byte_size", {"a": entry(shape=(3,), offsets=(0, 8))}, TWO, "wrong byte size")
st("wrong_byte_size_dtype", {"a": entry(dtype="F64", shape=(2,), offsets=(0, 8))}, TWO, "wrong byte size")
st("overlapping", {"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, TWO + TWO[:4], "overlap")
st("same_offsets_twice", {"a": entry(), "b": entry()}, TWO, "overlap")
st("hole", {"a": entry(offsets=(0, 8)), "b": entry(offsets=(12, 20))}, TWO + b"\0" * 4 + TWO, "hole")
st("trailing_bytes", {"a": entry()}, TWO + b"\0" * 8, "trailing bytes")

with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)
    f.write("\n")
print(f"wrote {len(expected)} malformed files to {OUT}")
