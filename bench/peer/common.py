"""Shared plumbing of the PyTorch peer: the seed and spec version, the hand-written
safetensors writer and reader (the export format kern's bench binary parses), `Bench` (one
built workload), `Exports` (the tensors a workload exports, with descriptions), `log`, and the
small model helpers several workloads use (`mlp`, `randomize_norms_and_scales`)."""

import json
import os
import struct
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

# Bump when a workload's inputs or reference change, so stale exports are rewritten.
SPEC_VERSION = 1
SEED = 0


def log(*args):
    print("[pytorch_peer]", *args, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# safetensors, written by hand (the format is tiny and the C++ side parses it the same way):
#   u64 little-endian header length N | N bytes of JSON header (space-padded so that
#   8 + N is a multiple of 8) | raw little-endian tensor bytes, no holes.
# The header maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end]} (offsets
# relative to the start of the byte buffer) plus "__metadata__": {str: str}.
# ----------------------------------------------------------------------------------------

_DTYPES = {torch.float32: ("F32", 4), torch.float64: ("F64", 8), torch.int64: ("I64", 8)}


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_safetensors(path, tensors, metadata):
    """Writes `tensors` (name -> torch.Tensor) and `metadata` (str -> str) to `path`
    atomically: a temp file in the same directory, fsync, then os.replace."""
    assert sys.byteorder == "little", "raw bytes are written in native (little-endian) order"
    arrays = {}
    for name, t in tensors.items():
        t = t.detach()
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        arrays[name] = t.contiguous().numpy()
    # Wider dtypes first (then by name) so every tensor starts at an offset that is a
    # multiple of its element size (the safetensors library orders them the same way).
    order = sorted(arrays, key=lambda n: (-_DTYPES[tensors[n].dtype][1], n))
    header, offset = {"__metadata__": metadata}, 0
    for name in order:
        nbytes = arrays[name].nbytes
        header[name] = {"dtype": _DTYPES[tensors[name].dtype][0],
                        "shape": list(arrays[name].shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hdr)))
            f.write(hdr)
            for name in order:
                f.write(memoryview(arrays[name]).cast("B"))  # no copy of large tensors
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_safetensors_metadata(path):
    """Returns the `__metadata__` of a complete safetensors file, or None if the file is
    missing, truncated or not safetensors."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                return None
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
        if os.path.getsize(path) != 8 + n + end:
            return None
        return header.get("__metadata__", {})
    except (OSError, ValueError, struct.error, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------------------
# Workload plumbing
# ----------------------------------------------------------------------------------------

@dataclass
class Bench:
    """One built workload. `step` is one timed iteration. `reference` (called once, before
    timing, only when exporting) returns [(name, tensor, description)] — inputs and PyTorch's
    results — and must leave the state `step` uses as it found it. `extras(median_s)` adds
    workload figures to the JSON line; `after()` runs untimed after timing (accuracy)."""
    definition: str
    step: Callable[[], None]
    reference: Callable[[], list]
    extras: Callable[[float], dict] = lambda median_s: {}
    after: Callable[[], dict] = lambda: {}
    # Multi-process workloads (ddp_mlp_train): run(warmup, iters, threads) times the steps
    # itself and returns (times in s, peak RSS in MB); `step` is then unused.
    run: Callable[[int, int, int], tuple] = None


class Exports:
    """Ordered (name -> tensor, description) collection with shape-annotated descriptions."""

    def __init__(self):
        self.tensors, self.desc = OrderedDict(), OrderedDict()

    def add(self, name, t, description):
        t = t.detach()
        if t.dtype not in (torch.float32, torch.int64):
            raise TypeError(f"{name}: exported tensors are float32 (or int64 labels)")
        if t.dim() == 0:
            t = t.reshape(1)  # scalars as [1], like ../shared/fixtures
        assert name not in self.tensors, name
        self.tensors[name] = t.contiguous().clone()
        dtype = str(t.dtype).replace("torch.", "")
        self.desc[name] = f"{dtype} {list(t.shape)}: {description}"

    def entries(self):
        return [(n, self.tensors[n], self.desc[n]) for n in self.tensors]

    def add_params(self, prefix, module, what):
        for n, p in module.named_parameters():
            self.add(f"{prefix}{n}", p, f"{what} {n}")

    def add_grads(self, prefix, module):
        for n, p in module.named_parameters():
            self.add(f"{prefix}{n}", p.grad, f"d loss / d param.{n}")


def randomize_norms_and_scales(module):
    """Norm weights and layer scales ~ U(0.5, 1.5), norm biases ~ N(0, 0.1): see module doc."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = ".norm." in f".{name}"  # norm.weight, stage.norm.bias, ...
            if leaf == "gamma" or (is_norm and leaf == "weight"):
                p.uniform_(0.5, 1.5)
            elif is_norm and leaf == "bias":
                p.normal_(0.0, 0.1)


def mlp(sizes, act):
    """Linear layers named fc1..fcK with `act` between them (not after the last)."""
    layers = OrderedDict()
    for i in range(len(sizes) - 1):
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        if i < len(sizes) - 2:
            layers[f"act{i + 1}"] = act()
    return nn.Sequential(layers)
