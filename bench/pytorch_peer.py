#!/usr/bin/python3
"""PyTorch peer for kern's benchmark suite (one workload per invocation).

Every workload is defined in ../shared/BENCHMARKS.md; this file is its PyTorch half:

    /usr/bin/python3 bench/pytorch_peer.py --workload ID --threads 2 --warmup 3 --iters 10 \
        --export DIR [--length L] [--export-only]

1. Builds the workload's inputs deterministically (torch.manual_seed(0)).
2. Unless DIR/ID.safetensors (longconv: DIR/longconv_train_L{L}.safetensors) already exists
   with the same workload parameters, writes it: every input the C++ side needs to reproduce
   the computation plus PyTorch's reference results, and in `__metadata__` the definition and
   a description of every tensor. This file is the contract with kern's bench binary, which
   reads its inputs from it and checks its results against it.
3. Times `warmup` + `iters` iterations (time.perf_counter) and prints exactly one JSON line
   on stdout: {"id", "median_s", "min_s", "max_s", "peak_rss_mb", extras...}. Logs go to
   stderr. With --export-only it exports (if needed) and prints {"id", "export", "written"}
   instead of timing, so the orchestrator's timed runs all do the same work.

Conventions of the exported files (same as ../shared/fixtures): float32 everywhere except
class labels and index permutations (int64); C-contiguous, PyTorch layouts (NCHW, Linear
weight [out, in], conv weight [C_out, C_in/groups, kH, kW]); scalars have shape [1];
module parameters are `param.<name>`, their gradients `grad.param.<name>`, the gradient of
an input `grad.<input>`. Norm weights and layer scales are drawn from U(0.5, 1.5) and norm
biases from N(0, 0.1) (instead of timm's 1 / 0 / 1e-6 inits) so that every path of a block
matters numerically in the check; timing does not depend on parameter values.
"""

import argparse
import copy
import ctypes
import gzip
import json
import math
import os
import resource
import statistics
import struct
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# Bump when a workload's inputs or reference change, so stale exports are rewritten.
SPEC_VERSION = 1
SEED = 0
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"

WORKLOADS = [
    "sgemm_peak", "matmul_2048", "dwconv7_train", "mlp_train", "convnext_block_train",
    "dwconv31_train", "inceptionnext_block_train", "longconv_train", "ntk_mlp", "ntk_cnn",
    "sharpness_mlp", "fmnist_epoch", "zoo_ntk_convnext", "zoo_sharpness_convnext",
    "cntk_gap", "cntk_gap_16",
    "ddp_mlp_train", "mlp_train_bf16", "convnext_block_bf16", "affconv_train",
]


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


# ----------------------------------------------------------------------------------------
# Matrix products
# ----------------------------------------------------------------------------------------

def build_matmul(n, what):
    a, b = torch.randn(n, n), torch.randn(n, n)  # [n, n] each, N(0, 1)
    c = torch.empty(n, n)

    def step():
        torch.mm(a, b, out=c)

    def reference():
        return [("a", a, "left operand, N(0,1)"), ("b", b, "right operand, N(0,1)"),
                ("out", a @ b, "a @ b")]

    flop = 2.0 * n ** 3
    return Bench(
        definition=f"{what}: out = a @ b, float32, a [{n},{n}], b [{n},{n}]; one timed "
                   f"iteration is one product. GFLOP/s = 2*{n}^3 / median_s / 1e9.",
        step=step, reference=reference,
        extras=lambda m: {"gflops": flop / m / 1e9})


# ----------------------------------------------------------------------------------------
# Block workloads: x [8,64,32,32] requires grad, loss = sum(block(x) * g), grads cleared
# before each iteration.
# ----------------------------------------------------------------------------------------

class ConvNeXtBlock(nn.Module):
    """timm ConvNeXtBlock, conv_mlp=False form, stride 1, in_chs == out_chs, no drop path:
    dw7x7 (bias) -> NHWC -> LayerNorm(eps 1e-6) -> Mlp(fc1 C->4C, GELU(erf), fc2 4C->C)
    -> * gamma -> NCHW -> + x. Parameter names are timm's."""

    def __init__(self, dim=64, kernel_size=7, mlp_ratio=4, ls_init_value=1e-6):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2,
                                 groups=dim, bias=True)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(OrderedDict(
            fc1=nn.Linear(dim, mlp_ratio * dim), act=nn.GELU(),
            fc2=nn.Linear(mlp_ratio * dim, dim)))
        # convnext_block_train re-draws gamma U(0.5,1.5); the zoo net keeps ls_init_value.
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim))

    def forward(self, x):                 # x: [N, C, H, W]
        shortcut = x
        x = self.conv_dw(x)               # [N, C, H, W]
        x = x.permute(0, 2, 3, 1)         # [N, H, W, C]
        x = self.norm(x)                  # LayerNorm over C
        x = self.mlp(x)                   # [N, H, W, C] (hidden [N, H, W, 4C])
        x = x.mul(self.gamma)             # layer scale, per channel
        x = x.permute(0, 3, 1, 2)         # [N, C, H, W]
        return x + shortcut


class InceptionDWConv2d(nn.Module):
    """timm InceptionDWConv2d: channels split (C - 3gc, gc, gc, gc), gc = int(C * 0.125);
    identity on the first part, depthwise 3x3 / 1x11 / 11x1 (bias, 'same' padding) on the
    others, concatenated back in the same order."""

    def __init__(self, in_chs=64, square_kernel_size=3, band_kernel_size=11,
                 branch_ratio=0.125):
        super().__init__()
        gc = int(in_chs * branch_ratio)
        sp, bp = square_kernel_size // 2, band_kernel_size // 2
        self.dwconv_hw = nn.Conv2d(gc, gc, square_kernel_size, padding=sp, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, band_kernel_size), padding=(0, bp), groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (band_kernel_size, 1), padding=(bp, 0), groups=gc)
        self.split_indexes = (in_chs - 3 * gc, gc, gc, gc)

    def forward(self, x):
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_indexes, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)),
                         dim=1)


class MetaNeXtBlock(nn.Module):
    """timm MetaNeXtBlock (InceptionNeXt): token_mixer (InceptionDWConv2d) -> BatchNorm2d
    (train mode: batch statistics, biased variance, eps 1e-5) -> ConvMlp (1x1 conv C->4C,
    GELU(erf), 1x1 conv 4C->C, both with bias) -> * gamma[1,C,1,1] -> + x."""

    def __init__(self, dim=64, mlp_ratio=4):
        super().__init__()
        self.token_mixer = InceptionDWConv2d(dim)
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = nn.Sequential(OrderedDict(
            fc1=nn.Conv2d(dim, mlp_ratio * dim, 1), act=nn.GELU(),
            fc2=nn.Conv2d(mlp_ratio * dim, dim, 1)))
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))  # re-drawn U(0.5,1.5) below

    def forward(self, x):                 # x: [N, C, H, W]
        shortcut = x
        x = self.token_mixer(x)
        x = self.norm(x)
        x = self.mlp(x)
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return x + shortcut


class ConvNeXtBlockBf16Casts(ConvNeXtBlock):
    """ConvNeXtBlock for convnext_block_bf16, run under torch.autocast(bfloat16). PyTorch
    1.13's CPU autocast fails on the plain block ("layer_norm: expected scalar type BFloat16
    but found Float": conv_dw returns bf16, LayerNorm is not on the CPU autocast lists and its
    weight is float32), so this forward casts explicitly, as a user would: the LayerNorm input
    goes back to float32. Same parameters and names as ConvNeXtBlock."""

    def forward(self, x):                 # x: [N, C, H, W]
        shortcut = x
        x = self.conv_dw(x)               # bf16 under autocast
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x.float())          # the explicit cast
        x = self.mlp(x)                   # fc1, fc2 in bf16 under autocast
        x = x.mul(self.gamma)             # bf16 * float32 -> float32
        x = x.permute(0, 3, 1, 2)
        return x + shortcut


def build_block(module, definition, shape=(8, 64, 32, 32), bf16=False):
    """Common harness of the block workloads. Seeded before `module` was built. bf16: the
    forward runs under torch.autocast("cpu", dtype=torch.bfloat16); exports are float32."""
    randomize_norms_and_scales(module)
    module.train()
    x = torch.randn(shape, requires_grad=True)   # [8, 64, 32, 32]
    g = torch.randn(shape)                       # [8, 64, 32, 32], d loss / d out

    def clear():
        x.grad = None
        module.zero_grad(set_to_none=True)

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return module(x)

    def step():
        clear()
        out = forward()
        (out * g).sum().backward()

    def reference():
        clear()
        # BatchNorm's running statistics are updated by this forward; they do not affect
        # train-mode outputs, so they are neither exported nor restored.
        out = forward().float()
        loss = (out * g).sum()
        loss.backward()
        e = Exports()
        e.add("x", x, "block input (requires grad)")
        e.add("g", g, "fixed random cotangent: loss = sum(out * g)")
        e.add_params("param.", module, "block parameter (timm name)")
        e.add("out", out, "block output (train mode)")
        e.add("loss", loss, "sum(out * g)")
        e.add("grad.x", x.grad, "d loss / d x")
        e.add_grads("grad.param.", module)
        clear()
        return e.entries()

    return Bench(definition=definition, step=step, reference=reference)


BLOCK_COMMON = ("Input x [8,64,32,32] (requires grad), fixed random g [8,64,32,32]; one timed "
                "iteration = clear grads, out = block(x), loss = sum(out * g), backward "
                "(grads of x and of every parameter). ")


def build_dwconv(k):
    conv = nn.Conv2d(64, 64, k, padding=k // 2, groups=64, bias=True)
    return build_block(conv, (
        f"dwconv{k}_train: depthwise Conv2d(64, 64, {k}x{k}, padding {k // 2}, groups 64, bias), "
        f"stride 1, PyTorch default init; param names 'weight' [64,1,{k},{k}] and 'bias' [64]. "
        + BLOCK_COMMON))


def build_convnext_block():
    return build_block(ConvNeXtBlock(64), (
        "convnext_block_train: timm ConvNeXtBlock(64, conv_mlp=False, kernel 7, mlp_ratio 4, "
        "no drop path): out = x + permute_NCHW(gamma * fc2(GELU_erf(fc1(LayerNorm_eps1e-6("
        "permute_NHWC(conv_dw(x))))))). conv_dw: depthwise 7x7 padding 3 with bias "
        "[64,1,7,7]; norm over channels; mlp.fc1 Linear 64->256, mlp.fc2 Linear 256->64 "
        "(weights [out,in]); gamma [64]. Conv/Linear: PyTorch default init; norm weight and "
        "gamma U(0.5,1.5), norm bias N(0,0.1). " + BLOCK_COMMON))


def build_convnext_block_bf16():
    return build_block(ConvNeXtBlockBf16Casts(64), (
        "convnext_block_bf16: convnext_block_train's block, inputs and step with the forward "
        "under bf16 autocast (PyTorch: torch.autocast('cpu', dtype=torch.bfloat16); its 1.13 "
        "autocast fails on this block at layer_norm, so the PyTorch side casts the LayerNorm "
        "input to float32 explicitly, as a user would; kern: kern::AutocastGuard). The "
        "references (out, grads) are PyTorch's autocast results in float32; bf16 sides agree "
        "to ~1e-2 relative. " + BLOCK_COMMON), bf16=True)


def build_inceptionnext_block():
    return build_block(MetaNeXtBlock(64), (
        "inceptionnext_block_train: timm MetaNeXtBlock(64) with InceptionDWConv2d (gc = 8: "
        "channels 0-39 identity, 40-47 depthwise 3x3 pad 1 (token_mixer.dwconv_hw, weight "
        "[8,1,3,3]), 48-55 depthwise 1x11 pad (0,5) (token_mixer.dwconv_w, [8,1,1,11]), "
        "56-63 depthwise 11x1 pad (5,0) (token_mixer.dwconv_h, [8,1,11,1]), all with bias, "
        "concatenated in that order) -> BatchNorm2d(64) in train mode (batch mean, biased "
        "batch variance, eps 1e-5) -> ConvMlp: mlp.fc1 1x1 conv 64->256 [256,64,1,1] + bias, "
        "GELU(erf), mlp.fc2 1x1 conv 256->64 [64,256,1,1] + bias -> * gamma[64] per channel "
        "-> + x. Conv: PyTorch default init; norm weight and gamma U(0.5,1.5), norm bias "
        "N(0,0.1). Note: grad.param.token_mixer.dwconv_*.bias is exactly 0 in exact "
        "arithmetic (BatchNorm cancels a per-channel constant); the exported values are "
        "float32 rounding noise (|.| < 1e-4), compare them with an absolute tolerance. "
        + BLOCK_COMMON))


# ----------------------------------------------------------------------------------------
# mlp_train
# ----------------------------------------------------------------------------------------

def redraw_relu_near_ties(x, layers, margin=1e-5):
    """Re-draws (from the seeded generator, so deterministically) every row of x that puts a
    pre-activation of one of the ReLU'd `layers` within `margin` of 0. Why: with 2 x 262k
    ReLUs, seed 0 gave one pre-activation of -2.8e-8 that float32 rounding turns positive;
    a correct implementation that rounds differently then flips that ReLU and misses 6% of
    max|grad fc1|, a false check failure. A few percent of rows are redrawn."""
    while True:
        with torch.no_grad():
            h, bad = x.double(), torch.zeros(x.shape[0], dtype=torch.bool)
            for layer in layers:
                h = F.linear(h, layer.weight.double(), layer.bias.double())
                bad |= (h.abs() < margin).any(dim=1)
                h = h.relu()
        if not bad.any():
            return
        x[bad] = torch.randn(int(bad.sum()), x.shape[1])


def build_mlp_train(bf16=False):
    """bf16: mlp_train_bf16, the forward and loss under torch.autocast(bfloat16)."""
    model = mlp([784, 1024, 1024, 10], nn.ReLU)
    x = torch.randn(256, 784)                    # [256, 784]
    redraw_relu_near_ties(x, [model.fc1, model.fc2])
    labels = torch.randint(0, 10, (256,))        # [256] int64
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def forward_loss(m):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = m(x)
            return logits, F.cross_entropy(logits, labels)

    def step():
        opt.zero_grad(set_to_none=True)
        _, loss = forward_loss(model)
        loss.backward()
        opt.step()

    def reference():
        m = copy.deepcopy(model)  # the timed model keeps its initial parameters
        e = Exports()
        e.add("x", x, "input batch, N(0,1), rows without ReLU near-ties")
        e.add("labels", labels, "class labels in [0,10)")
        e.add_params("param.", m, "initial parameter (PyTorch default init)")
        logits, loss = forward_loss(m)
        loss.backward()
        e.add("logits", logits.float(), "model(x) with the initial parameters")
        e.add("loss", loss, "mean cross-entropy of logits vs labels")
        e.add_grads("grad.param.", m)
        with torch.no_grad():
            for p in m.parameters():
                p.sub_(0.01 * p.grad)
        e.add_params("param_after.", m, "parameter after one SGD(lr 0.01) step:")
        return e.entries()

    if bf16:
        return Bench(
            definition="mlp_train_bf16: mlp_train's model, inputs and step with the forward "
                       "and the loss under bf16 autocast (PyTorch: torch.autocast('cpu', "
                       "dtype=torch.bfloat16); kern: kern::AutocastGuard(DType::BFloat16)): "
                       "the three Linears run in bf16 with float32 accumulation, parameters "
                       "and gradients stay float32. References are PyTorch's autocast results "
                       "(float32); bf16 sides agree to ~1e-2 relative.",
            step=step, reference=reference, extras=lambda m: {"gflops": 2.448 / m})
    return Bench(
        definition="mlp_train: MLP Linear(784,1024) ReLU Linear(1024,1024) ReLU "
                   "Linear(1024,10) (names fc1, fc2, fc3; weight [out,in]; PyTorch default "
                   "init), x [256,784] N(0,1) (rows redrawn until no hidden pre-activation "
                   "is within 1e-5 of 0, so rounding cannot flip a ReLU), labels [256]. One "
                   "timed iteration = zero grads, forward, mean cross-entropy, backward (x "
                   "needs no grad), SGD step p -= 0.01 * grad (no momentum, no weight "
                   "decay). GFLOP per iteration = 2.448 (forward, dW of the three layers, "
                   "dX of layers 2-3).",
        step=step, reference=reference,
        extras=lambda m: {"gflops": 2.448 / m})


# ----------------------------------------------------------------------------------------
# longconv_train
# ----------------------------------------------------------------------------------------

def build_longconv(L):
    B, H = 8, 64
    u = torch.randn(B, H, L, requires_grad=True)                         # [B, H, L]
    k = (torch.randn(H, L) / math.sqrt(L)).requires_grad_()              # [H, L]
    D = torch.randn(H, requires_grad=True)                               # [H]
    g = torch.randn(B, H, L)                                             # [B, H, L]

    def forward():
        n = 2 * L  # zero-pad to 2L: the circular convolution becomes a causal linear one
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]
        return y + D[:, None] * u                                         # [B, H, L]

    def clear():
        u.grad = k.grad = D.grad = None

    def step():
        clear()
        (forward() * g).sum().backward()

    def reference():
        clear()
        y = forward()
        loss = (y * g).sum()
        loss.backward()
        e = Exports()
        e.add("u", u, "input sequences [B,H,L], N(0,1), requires grad")
        e.add("k", k, "per-channel kernels [H,L], N(0,1)/sqrt(L), requires grad")
        e.add("D", D, "skip weights [H], N(0,1), requires grad")
        e.add("g", g, "fixed random cotangent: loss = sum(y * g)")
        e.add("y", y, "output [B,H,L]")
        e.add("loss", loss, "sum(y * g)")
        e.add("grad.u", u.grad, "d loss / d u")
        e.add("grad.k", k.grad, "d loss / d k")
        e.add("grad.D", D.grad, "d loss / d D")
        clear()
        return e.entries()

    return Bench(
        definition=f"longconv_train (L={L}): u [8,64,{L}], k [64,{L}], D [64], all require "
                   f"grad; y = irfft(rfft(u, n=2L) * rfft(k, n=2L), n=2L)[..., :L] + "
                   f"D[:,None] * u, i.e. the causal per-channel convolution "
                   f"y[b,h,t] = sum_(s<=t) k[h,s] u[b,h,t-s] + D[h] u[b,h,t]; loss = "
                   f"sum(y * g) with a fixed random g [8,64,{L}]. One timed iteration = "
                   f"clear grads, forward, backward (grads of u, k and D).",
        step=step, reference=reference)


# ----------------------------------------------------------------------------------------
# Empirical NTK (functorch recipe)
# ----------------------------------------------------------------------------------------

class SmallCNN(nn.Module):
    """Conv3x3(3->16) ReLU Conv3x3(16->32, s2) ReLU Conv3x3(32->32, s2) ReLU GAP Linear(32->10),
    every conv padding 1 with bias: [N,3,16,16] -> [N,16,16,16] -> [N,32,8,8] -> [N,32,4,4]
    -> mean over H,W [N,32] -> [N,10]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


def build_ntk(model, x, definition):
    from functorch import jacrev, make_functional, vmap

    fnet, fparams = make_functional(model)  # fparams in model.named_parameters() order
    n, n_out = x.shape[0], 10

    def f_single(params, xi):               # one sample, [*in] -> [10]
        return fnet(params, xi.unsqueeze(0)).squeeze(0)

    def ntk():
        # Jacobian of all n*10 outputs w.r.t. every parameter tensor, computed once:
        # a tuple of [n, 10, *p.shape]; K(X, X) = sum_p J_p J_p^T.
        jac = vmap(jacrev(f_single), (None, 0))(fparams, x)
        kernel = None
        for j in jac:
            j = j.flatten(2)                                      # [n, 10, P]
            k = torch.einsum("naf,mbf->namb", j, j)               # [n, 10, n, 10]
            kernel = k if kernel is None else kernel + k
        return kernel.reshape(n * n_out, n * n_out)

    def step():
        ntk()

    def reference():
        e = Exports()
        e.add("x", x, "inputs, N(0,1)")
        e.add_params("param.", model, "parameter (PyTorch default init)")
        with torch.no_grad():
            e.add("out", model(x), "model outputs f(x)")
        e.add("kernel", ntk(), f"empirical NTK [{n * n_out},{n * n_out}]: kernel[i*10+a, "
              f"j*10+b] = sum over all parameters p of df_a(x_i)/dp * df_b(x_j)/dp")
        return e.entries()

    return Bench(definition=definition, step=step, reference=reference)


def build_ntk_mlp():
    model = mlp([100, 256, 256, 10], nn.Tanh)
    x = torch.randn(64, 100)                     # [64, 100]
    return build_ntk(model, x, (
        "ntk_mlp: MLP Linear(100,256) Tanh Linear(256,256) Tanh Linear(256,10) (names fc1, "
        "fc2, fc3, PyTorch default init), x [64,100]. One timed iteration = the full "
        "empirical NTK K(X,X) [640,640] over all 10 outputs: functorch make_functional, "
        "vmap(jacrev(f_single), (None, 0)) once, then per parameter tensor einsum "
        "'naf,mbf->namb' of the flattened Jacobian with itself, summed, reshaped so that "
        "row/column index = sample*10 + output. Check: max|K_kern - K| <= 1e-4 * max|K|."))


def build_ntk_cnn():
    model = SmallCNN()
    x = torch.randn(32, 3, 16, 16)               # [32, 3, 16, 16]
    return build_ntk(model, x, (
        "ntk_cnn: Conv3x3(3->16, pad 1) ReLU Conv3x3(16->32, stride 2, pad 1) ReLU "
        "Conv3x3(32->32, stride 2, pad 1) ReLU GlobalAvgPool Linear(32->10) (names conv1, "
        "conv2, conv3, fc; all with bias; PyTorch default init), x [32,3,16,16]. One timed "
        "iteration = the full empirical NTK K(X,X) [320,320], same recipe as ntk_mlp "
        "(row/column index = sample*10 + output). Check: max|K_kern - K| <= 1e-4 * max|K|."))


# ----------------------------------------------------------------------------------------
# sharpness_mlp
# ----------------------------------------------------------------------------------------

def sharpness_bench(model, x, labels, definition, what="parameter (PyTorch default init)"):
    """PyHessian's eigenvalue() loop on mean cross-entropy: the gradient once with
    create_graph, then 20 x (hv = H v by double backward with retain_graph; eig = v.hv;
    v <- hv / ||hv||) from a seeded unit vector v0 (drawn here, after the caller's tensors)."""
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    v0 = [torch.randn_like(p) for p in params]   # one random direction over all parameters,
    norm0 = torch.sqrt(sum((v * v).sum() for v in v0))
    v0 = [v / norm0 for v in v0]                 # ... of unit norm as a whole

    def power_iteration():
        loss = F.cross_entropy(model(x), labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v, eigs, hv0 = v0, [], None
        for _ in range(20):
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)  # H v
            eigs.append(sum((a * b).sum() for a, b in zip(v, hv)))   # Rayleigh quotient v^T H v
            norm = torch.sqrt(sum((h * h).sum() for h in hv))
            hv0 = hv if hv0 is None else hv0
            v = [h / norm for h in hv]
        return loss, grads, torch.stack(eigs).detach(), hv0

    def step():
        power_iteration()

    def reference():
        loss, grads, eigs, hv0 = power_iteration()
        e = Exports()
        e.add("x", x, "input batch, N(0,1)")
        e.add("labels", labels, "class labels in [0,10)")
        e.add_params("param.", model, what)
        for n, v in zip(names, v0):
            e.add(f"v0.{n}", v, f"start vector, block of param.{n} (whole vector has norm 1)")
        e.add("loss", loss, "mean cross-entropy")
        for n, gr in zip(names, grads):
            e.add(f"grad.param.{n}", gr, f"d loss / d param.{n}")
        for n, h in zip(names, hv0):
            e.add(f"hv0.{n}", h, f"first Hessian-vector product H v0, block of param.{n}")
        e.add("eigenvalues", eigs, "Rayleigh quotient v_i^T H v_i of power iterations i=0..19")
        e.add("eigenvalue", eigs[-1], "top (largest-magnitude) Hessian eigenvalue estimate "
              "after 20 power iterations = eigenvalues[19]")
        return e.entries()

    return Bench(definition=definition, step=step, reference=reference)


def build_sharpness():
    model = mlp([784, 256, 256, 10], nn.Tanh)
    x = torch.randn(512, 784)                    # [512, 784]
    labels = torch.randint(0, 10, (512,))        # [512] int64
    return sharpness_bench(
        model, x, labels,
        "sharpness_mlp: MLP Linear(784,256) Tanh Linear(256,256) Tanh "
        "Linear(256,10) (names fc1, fc2, fc3, PyTorch default init), x [512,784], "
        "labels [512]; loss = mean cross-entropy. One timed iteration = forward, "
        "gradient with create_graph, then 20 x (hv = H v by double backward; "
        "eig = v.hv; v <- hv / ||hv||) from the unit vector v0 (exported per "
        "parameter as v0.<name>); the estimate is the last eig. Power iteration "
        "finds the largest-magnitude eigenvalue; the Rayleigh quotient keeps its sign.")


# ----------------------------------------------------------------------------------------
# Zoo-scale workloads on a ConvNeXt-atto-like net: zoo_ntk_convnext, zoo_sharpness_convnext
# ----------------------------------------------------------------------------------------

class LayerNorm2d(nn.LayerNorm):
    """timm LayerNorm2d: LayerNorm over C of an NCHW tensor (permute to NHWC and back)."""

    def forward(self, x):                 # x: [N, C, H, W]
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtStage(nn.Module):
    """timm ConvNeXtStage: downsample (Identity, or LayerNorm2d + Conv2d k2 s2) -> blocks."""

    def __init__(self, in_chs, out_chs, depth, kernel_size, ls_init_value):
        super().__init__()
        if in_chs != out_chs:
            self.downsample = nn.Sequential(LayerNorm2d(in_chs, eps=1e-6),
                                            nn.Conv2d(in_chs, out_chs, 2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(out_chs, kernel_size, 4, ls_init_value) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class NormMlpClassifierHead(nn.Module):
    """timm NormMlpClassifierHead without hidden layer: global average pool -> LayerNorm2d
    -> flatten -> (dropout 0) -> fc. [N, C, H, W] -> [N, num_classes]."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.norm = LayerNorm2d(in_features, eps=1e-6)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        x = x.mean(dim=(2, 3), keepdim=True)  # [N, C, 1, 1]
        return self.fc(self.norm(x).flatten(1))


class ConvNeXt(nn.Module):
    """timm's ConvNeXt (conv_mlp=False, patch stem, no drop path, head without hidden layer)
    with timm's module tree and parameter names (stem.0/1, stages.i.downsample.0/1,
    stages.i.blocks.j.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}, head.norm, head.fc) and timm's
    init: conv/linear weights trunc_normal(std 0.02, cut at +-2), biases 0, norms 1/0, gamma
    = ls_init_value. x [N, in_chans, H, W] -> [N, num_classes]."""

    def __init__(self, in_chans=1, num_classes=10, dims=(40, 80, 160, 320),
                 depths=(2, 2, 6, 2), kernel_size=7, ls_init_value=1.0, patch_size=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], patch_size, stride=patch_size),
                                  LayerNorm2d(dims[0], eps=1e-6))
        prev, stages = dims[0], []
        for dim, depth in zip(dims, depths):
            stages.append(ConvNeXtStage(prev, dim, depth, kernel_size, ls_init_value))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.head = NormMlpClassifierHead(prev, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)  # timm: a=-2, b=2 (absolute)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


ZOO_NET = ("ConvNeXt-atto-like net, timm structure and names (conv_mlp=False): stem.0 "
           "Conv 1->40 k4 s4, stem.1 LayerNorm2d; stages of dims 40/80/160/320, depths "
           "2/2/6/2 of ConvNeXtBlock (depthwise 7x7 pad 3, NHWC LayerNorm eps 1e-6, Linear "
           "C->4C, GELU(erf), Linear 4C->C, gamma, residual); stages 1-3 start with "
           "downsample.0 LayerNorm2d + downsample.1 Conv k2 s2; head: global average pool, "
           "head.norm LayerNorm2d, head.fc Linear 320->10. timm init (trunc_normal std 0.02, "
           "zero biases, norms 1/0) with layer scale init 1 (gamma = 1). Spatial sizes for "
           "32x32 inputs: 8, 8, 4, 2, 1. ")


def build_zoo_ntk():
    model = ConvNeXt().eval()
    x = torch.randn(16, 1, 32, 32)               # [16, 1, 32, 32]
    return build_ntk(model, x, (
        "zoo_ntk_convnext: " + ZOO_NET + "Eval mode, x [16,1,32,32] N(0,1). One timed "
        "iteration = the full empirical NTK K(X,X) [160,160] over all 10 outputs and all "
        "parameters, the ntk_mlp recipe (functorch vmap(jacrev(f_single)) once, einsum per "
        "parameter tensor, summed; row/column index = sample*10 + output). Check: "
        "max|K_kern - K| <= 1e-4 * max|K|."))


def build_zoo_sharpness():
    model = ConvNeXt().eval()  # no BatchNorm / dropout / drop path: eval == train
    x = torch.randn(64, 1, 32, 32)               # [64, 1, 32, 32]
    labels = torch.randint(0, 10, (64,))         # [64] int64
    return sharpness_bench(
        model, x, labels,
        "zoo_sharpness_convnext: " + ZOO_NET + "x [64,1,32,32] N(0,1), labels [64]; loss = "
        "mean cross-entropy. One timed iteration = forward, gradient with create_graph, "
        "then 20 x (hv = H v by double backward, retain_graph; eig = v.hv; v <- hv / ||hv||) "
        "from the unit vector v0 (exported per parameter as v0.<name>), as PyHessian's "
        "eigenvalue(); the estimate is the last eig (largest-magnitude eigenvalue, with sign).",
        what="parameter (timm init, gamma = 1)")


# ----------------------------------------------------------------------------------------
# fmnist_epoch
# ----------------------------------------------------------------------------------------

def read_idx(path):
    """Decodes a gzip'd IDX file of unsigned bytes into a uint8 tensor of its dimensions."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    with warnings.catch_warnings():  # read-only buffer: we never write through this view
        warnings.simplefilter("ignore", UserWarning)
        t = torch.frombuffer(data, dtype=torch.uint8, offset=4 + 4 * ndim,
                             count=math.prod(dims))
    return t.reshape(dims)


def load_fmnist(split):
    """-> images [N,1,28,28] float32 in [0,1] (pixel / 255), labels [N] int64."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(FMNIST_DIR, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(FMNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
    return images.to(torch.float32).div_(255.0).unsqueeze(1), labels.to(torch.int64)


class FmnistCNN(nn.Module):
    """Conv5x5(1->32) ReLU MaxPool2 Conv5x5(32->64) ReLU MaxPool2 Linear(1024->128) ReLU
    Linear(128->10), no padding: [N,1,28,28] -> [N,32,24,24] -> [N,32,12,12] -> [N,64,8,8]
    -> [N,64,4,4] -> flatten (C,H,W order) [N,1024] -> [N,128] -> [N,10]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(1024, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def build_fmnist():
    BATCH, LR, MOMENTUM = 128, 0.05, 0.9
    model = FmnistCNN()
    init_state = copy.deepcopy(model.state_dict())
    # The shuffling order of the one epoch, from its own generator (seed 0), exported so
    # that kern can visit the examples in the same order.
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(SEED))

    def train_epoch(m):
        """Reads and decodes the IDX files, then one epoch of SGD with momentum on `m`."""
        x, y = load_fmnist("train")
        opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM)
        m.train()
        for i in range(0, x.shape[0], BATCH):  # 469 batches, the last has 96 examples
            idx = perm[i:i + BATCH]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x[idx]), y[idx]).backward()
            opt.step()

    def test_accuracy(m):
        x, y = load_fmnist("test")
        m.eval()
        with torch.no_grad():
            correct = sum(int((m(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum())
                          for i in range(0, x.shape[0], 1000))
        return correct / x.shape[0]

    def step():
        model.load_state_dict(init_state)  # every timed epoch starts from the same init
        train_epoch(model)

    def reference():
        m = copy.deepcopy(model)
        m.load_state_dict(init_state)
        e = Exports()
        e.add_params("param.", m, "initial parameter (PyTorch default init)")
        e.add("train.perm", perm, "order in which the epoch visits the 60000 training "
              "examples: batch b = examples perm[128*b : 128*(b+1)]")
        x, y = load_fmnist("train")
        xb, yb = x[perm[:BATCH]], y[perm[:BATCH]]
        logits = m(xb)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        e.add("first_batch.logits", logits, "model(first batch) with the initial parameters")
        e.add("first_batch.loss", loss, "mean cross-entropy of the first batch")
        for n, p in m.named_parameters():
            e.add(f"first_batch.grad.param.{n}", p.grad, f"d first_batch.loss / d param.{n}")
        m.load_state_dict(init_state)
        log("fmnist_epoch: running one untimed reference epoch for ref.test_accuracy")
        train_epoch(m)
        acc = test_accuracy(m)
        e.add("ref.test_accuracy", torch.tensor(acc, dtype=torch.float32),
              "PyTorch's test accuracy (10000 test images) after the epoch; varies by ~0.01 "
              "with threading nondeterminism")
        return e.entries()

    return Bench(
        definition="fmnist_epoch: Fashion-MNIST from /usr/share/datasets/fashion-mnist "
                   "(gzip'd IDX), pixels as float32 / 255 (no other normalization), images "
                   "[N,1,28,28]. Model (names conv1, conv2, fc1, fc2; PyTorch default init): "
                   "Conv5x5(1->32) ReLU MaxPool2 Conv5x5(32->64) ReLU MaxPool2 flatten "
                   "(C,H,W) Linear(1024->128) ReLU Linear(128->10), no padding. One timed "
                   "iteration = reset parameters to param.*, read + decode the training IDX "
                   "files, one epoch of SGD (lr 0.05, momentum 0.9, dampening 0, no weight "
                   "decay; PyTorch's momentum: buf = 0.9 buf + grad, p -= 0.05 buf) on mean "
                   "cross-entropy, batch 128 in train.perm order (469 batches, last of 96). "
                   "Test accuracy on the 10000 test images is measured untimed afterwards.",
        step=step, reference=reference,
        after=lambda: {"accuracy": test_accuracy(model)})


# ----------------------------------------------------------------------------------------
# cntk_gap: the analytic infinite-width CNTK with global average pooling (kern::limits)
# ----------------------------------------------------------------------------------------

CNTK_BLOCK = 4  # images per block side (both sides compute the same blocks)


def cntk_gap_kernel(x, block=CNTK_BLOCK):
    """NNGP and NTK [N, N] of Conv3x3 SAME (W_std^2 = 2, b_std = 0, NTK param.) ReLU x3, GAP,
    Dense (W_std = 1, b_std = 0), neural-tangents' conventions, float64, K(x, x): blocks of
    `block` x `block` images on and above the diagonal (mirrored below), each carrying the
    full [H, W, H, W] pixel-pixel covariances of its pairs and of its images with themselves."""
    n, c, h, w = x.shape
    x = x.to(torch.float64).reshape(n, c, h * w)
    w2 = 2.0
    nngp_out = torch.empty(n, n, dtype=torch.float64)
    ntk_out = torch.empty(n, n, dtype=torch.float64)

    def conv(k):  # [..., H, W, H, W] -> 1/9 sum_d k[p + d, q + d], zero padding
        kp = F.pad(k, (0, 0, 1, 1, 0, 0, 1, 1))              # pad both H dims
        k = (kp[..., 0:h, :, 0:h, :] + kp[..., 1:h + 1, :, 1:h + 1, :]
             + kp[..., 2:h + 2, :, 2:h + 2, :]) / 3
        kp = F.pad(k, (1, 1, 0, 0, 1, 1, 0, 0))              # pad both W dims
        return (kp[..., :, 0:w, :, 0:w] + kp[..., :, 1:w + 1, :, 1:w + 1]
                + kp[..., :, 2:w + 2, :, 2:w + 2]) / 3

    def relu(k, v1, v2):  # arc-cosine maps; v1 [b1, P], v2 [b2, P] pixel variances
        shape = k.shape
        k = k.reshape(v1.shape[0], v2.shape[0], h * w, h * w)
        r = torch.sqrt(v1[:, None, :, None] * v2[None, :, None, :])
        s = torch.sqrt(torch.clamp((r - k) * (r + k), min=0))
        theta = torch.atan2(s, k)
        kdot = (math.pi - theta) / (2 * math.pi)
        return ((s + (math.pi - theta) * k) / (2 * math.pi)).reshape(shape), kdot.reshape(shape)

    def diag(cov):  # [b, H, W, H, W] -> [b, P]
        return cov.reshape(cov.shape[0], h * w, h * w).diagonal(dim1=1, dim2=2)

    for r1 in range(0, n, block):
        for r2 in range(r1, n, block):
            a, b = x[r1:r1 + block], x[r2:r2 + block]
            kk = torch.einsum("icp,jcq->ijpq", a, b).reshape(len(a), len(b), h, w, h, w) / c
            c1 = torch.einsum("icp,icq->ipq", a, a).reshape(len(a), h, w, h, w) / c
            c2 = torch.einsum("icp,icq->ipq", b, b).reshape(len(b), h, w, h, w) / c
            ntk = torch.zeros_like(kk)
            for layer in range(3):
                if layer > 0:  # ReLU before the 2nd and 3rd conv
                    v1, v2 = diag(c1), diag(c2)
                    kk, kdot = relu(kk, v1, v2)
                    ntk = ntk * kdot
                    c1 = _self_relu(c1, v1, relu)
                    c2 = _self_relu(c2, v2, relu)
                kk = w2 * conv(kk)
                ntk = kk + w2 * conv(ntk)
                c1, c2 = w2 * conv(c1), w2 * conv(c2)
            v1, v2 = diag(c1), diag(c2)
            kk, kdot = relu(kk, v1, v2)
            ntk = ntk * kdot
            g_nngp = kk.mean(dim=(2, 3, 4, 5))               # GAP
            g_ntk = ntk.mean(dim=(2, 3, 4, 5))
            out_nngp, out_ntk = g_nngp, g_nngp + g_ntk       # Dense(W_std = 1, b_std = 0)
            nngp_out[r1:r1 + block, r2:r2 + block] = out_nngp
            ntk_out[r1:r1 + block, r2:r2 + block] = out_ntk
            nngp_out[r2:r2 + block, r1:r1 + block] = out_nngp.T
            ntk_out[r2:r2 + block, r1:r1 + block] = out_ntk.T
    return nngp_out, ntk_out


def _self_relu(cov, v, relu):
    """ReLU map of each image's own covariance [b, H, W, H, W] (pixel p of the image with its
    pixel q): the pairwise map restricted to the diagonal pairs (i, i)."""
    out = torch.empty_like(cov)
    for i in range(cov.shape[0]):
        out[i] = relu(cov[i][None, None], v[i:i + 1], v[i:i + 1])[0][0, 0]
    return out


def _keep_freed_memory():
    """glibc returns every freed block above its mmap threshold (at most 32 MB by default) to
    the kernel, so each of the recursion's ~80 MB temporaries [4, 4, 28, 28, 28, 28] is a fresh
    mmap whose pages fault in again (20k faults per tensor): 26 s per 4x4 block, 75% of it in
    page faults. A PyTorch user would preload jemalloc/tcmalloc or raise the thresholds, as
    here (mallopt M_MMAP_THRESHOLD -3, M_TRIM_THRESHOLD -1): 3 s per block."""
    libc = ctypes.CDLL("libc.so.6")
    ok = libc.mallopt(-3, 1 << 30) == 1 and libc.mallopt(-1, (1 << 31) - 1) == 1
    if not ok:
        print("pytorch_peer: mallopt failed; cntk_gap runs with glibc's default thresholds",
              file=sys.stderr)


def build_cntk_gap(n):
    _keep_freed_memory()
    x = torch.randn(n, 1, 28, 28)                 # [n, 1, 28, 28]

    def step():
        cntk_gap_kernel(x)

    def reference():
        e = Exports()
        e.add("x", x, "inputs, N(0,1)")
        nngp, ntk = cntk_gap_kernel(x)
        e.add("nngp", nngp.float(), f"analytic NNGP K(x, x) [{n},{n}] (computed in float64)")
        e.add("ntk", ntk.float(), f"analytic NTK K(x, x) [{n},{n}] (computed in float64)")
        return e.entries()

    return Bench(definition=(
        f"cntk_gap{'' if n == 64 else '_' + str(n)}: analytic infinite-width NNGP and NTK "
        f"K(x, x) [{n},{n}] (neural-tangents' conventions, NTK parameterization) of "
        "Conv3x3 SAME (W_std^2 = 2, b_std = 0) ReLU, three times, GlobalAvgPool, Dense "
        f"(W_std = 1, b_std = 0), x [{n},1,28,28] N(0,1), float64, full 784x784 pixel-pixel "
        f"covariances; blocks of {CNTK_BLOCK}x{CNTK_BLOCK} images on and above the diagonal, "
        "each with its images' own covariances. PyTorch: the same recursion with torch ops "
        "(pad + shifted slices for the conv map, atan2 arc-cosine ReLU map). Check: "
        "max|K_kern - K| <= 1e-6 * max|K| (the export is float32)."), step=step, reference=reference)
# ddp_mlp_train: mlp_train over 2 processes x `threads` threads, DDP over gloo
# ----------------------------------------------------------------------------------------

DDP_RANKS = 2


def _ddp_worker(rank, world, port, state, x, labels, warmup, iters, threads, queue):
    """One rank: DDP(mlp) over gloo on 127.0.0.1, training on rows
    [rank*B/world, (rank+1)*B/world) of the global batch. Every step starts after a barrier
    (untimed); rank 0 reports its step times, every rank its peak RSS."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    model = mlp([784, 1024, 1024, 10], nn.ReLU)
    model.load_state_dict(state)
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    b = x.shape[0] // world
    xs, ys = x[rank * b:(rank + 1) * b].contiguous(), labels[rank * b:(rank + 1) * b].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(xs), ys).backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        dist.barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    queue.put((rank, times if rank == 0 else None,
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    dist.barrier()
    dist.destroy_process_group()


def build_ddp_mlp_train():
    base = build_mlp_train()  # same seed: the same model, x, labels and reference as mlp_train

    def run(warmup, iters, threads):
        import socket
        import torch.multiprocessing as mp
        # the initial parameters, as build_mlp_train drew them (reference() deep-copies)
        entries = {k: t.detach() for k, t, _ in base.reference()}
        state = {k[len("param."):]: t for k, t in entries.items() if k.startswith("param.")}
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_ddp_worker,
                             args=(r, DDP_RANKS, port, state, entries["x"], entries["labels"],
                                   warmup, iters, threads, queue))
                 for r in range(DDP_RANKS)]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"ddp_mlp_train: a rank exited with {p.exitcode}")
        times = next(t for r, t, _ in results if r == 0)
        return times, max(rss for _, _, rss in results)

    return Bench(
        definition="ddp_mlp_train: mlp_train's model, batch and SGD step (its definition "
                   "applies) over 2 processes x 1 thread, DistributedDataParallel over gloo "
                   "(PyTorch) / MPI (kern) on one machine: rank r trains on rows "
                   "[128 r, 128 r + 128) of x, gradients averaged over ranks, so one step "
                   "equals mlp_train's step on the global batch of 256 (the reference, "
                   "param_after.*). Time per step on rank 0, each step after an untimed "
                   "barrier.",
        step=None, reference=base.reference, extras=base.extras, run=run)



# ----------------------------------------------------------------------------------------
# affconv_train: kern's affconv_gl2 (models/lie, affine_conv.hpp), written from the equations
# of Mironenco & Forre (ICLR 2024) as kern implements them (examples/pytorch/affconv_gl2.py is
# the same layer). Parameter names are kern's, so the state dict loads strictly on its side.
# ----------------------------------------------------------------------------------------

class AffSiren(nn.Module):
    """SIREN: h = sin(omega0 (W h + b)) per hidden layer, linear readout; kern's init (first
    layer U(-1/in, 1/in), later hidden U(+-sqrt(6/in)/omega0), readout Linear's default)."""

    def __init__(self, fin, fout, hidden=32, hidden_layers=2, omega0=10.0):
        super().__init__()
        dims = [fin] + [hidden] * hidden_layers + [fout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.omega0 = omega0
        with torch.no_grad():
            for i, lin in enumerate(self.layers[:-1]):
                bound = 1.0 / lin.in_features if i == 0 else math.sqrt(6.0 / lin.in_features) / omega0
                lin.weight.uniform_(-bound, bound)

    def forward(self, x):
        for lin in self.layers[:-1]:
            x = torch.sin(self.omega0 * lin(x))
        return self.layers[-1](x)


def aff_kernel_grid(k):
    """The k x k offsets (row, col) / ((k - 1) / 2) in [-1, 1]^2: [k*k, 2], row-major."""
    r = (k - 1) / 2
    i = (torch.arange(k, dtype=torch.float32) - r) / r
    return torch.stack(torch.meshgrid(i, i, indexing="ij"), -1).reshape(-1, 2)


def aff_embedding(g):
    """e(xi^-1(g)) for g = P R [..., 2, 2]: (a, b, c) of log P = a I + [[b, c], [c, -b]],
    cos theta, sin theta -> [..., 5]."""
    x, y = g[..., 0, 0] + g[..., 1, 1], g[..., 1, 0] - g[..., 0, 1]
    s = torch.sqrt(x * x + y * y)
    cs, sn = x / s, y / s
    R = torch.stack([torch.stack([cs, -sn], -1), torch.stack([sn, cs], -1)], -2)
    P = g @ R.transpose(-1, -2)
    ev, V = torch.linalg.eigh(P)
    L = V @ torch.diag_embed(ev.log()) @ V.transpose(-1, -2)
    return torch.stack([(L[..., 0, 0] + L[..., 1, 1]) / 2, (L[..., 0, 0] - L[..., 1, 1]) / 2,
                        L[..., 0, 1], cs, sn], -1)


class AffLift(nn.Module):
    """R^2 -> G: out[n, o, s] = conv(x, K_s) + bias, K_s[o, c](u) = kappa(h_s^-1 u) / |det h_s|
    / sqrt(C_in k^2); one conv with C_out S filters."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, k
        self.kernel = AffSiren(2, cout * cin)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x, g, gi, w):
        S, k = g.shape[0], self.k
        coords = aff_kernel_grid(k)[None].expand(S, k * k, 2) @ gi.transpose(1, 2)  # [S, k*k, 2]
        f = self.kernel(coords).reshape(S, k, k, self.cout, self.cin).permute(3, 0, 4, 1, 2)
        f = f * (1.0 / torch.linalg.det(g).abs() / math.sqrt(self.cin * k * k)).reshape(1, S, 1, 1, 1)
        y = F.conv2d(x, f.reshape(self.cout * S, self.cin, k, k), padding=k // 2)
        return y.reshape(x.shape[0], self.cout, S, *y.shape[2:]) + self.bias.reshape(1, -1, 1, 1, 1)


class AffGroupConv(nn.Module):
    """G -> G: K_sj[o, c](u) = kappa(h_s^-1 u, e(xi^-1(h_s^-1 g_j))) w_j / (S_in |det h_s|)
    / sqrt(C_in k^2); one conv with C_in S_in -> C_out S_out channels."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, k
        self.kernel = AffSiren(2 + 5, cout * cin)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x, g, gi, w):
        S, k, K2 = g.shape[0], self.k, self.k * self.k
        spatial = aff_kernel_grid(k)[None].expand(S, K2, 2) @ gi.transpose(1, 2)  # [S, k*k, 2]
        with torch.no_grad():
            emb = aff_embedding(gi[:, None] @ g[None])  # [S_out, S_in, 5]
        coords = torch.cat([spatial[:, None].expand(S, S, K2, 2), emb[:, :, None].expand(S, S, K2, 5)], -1)
        f = self.kernel(coords).reshape(S, S, k, k, self.cout, self.cin).permute(4, 0, 5, 1, 2, 3)
        scale = (w.reshape(1, S) / torch.linalg.det(g).abs().reshape(S, 1)) / (S * math.sqrt(self.cin * k * k))
        f = f * scale.reshape(1, S, 1, S, 1, 1)
        N = x.shape[0]
        y = F.conv2d(x.reshape(N, self.cin * S, *x.shape[3:]), f.reshape(self.cout * S, self.cin * S, k, k),
                     padding=k // 2)
        return y.reshape(N, self.cout, S, *y.shape[2:]) + self.bias.reshape(1, -1, 1, 1, 1)


class AffResBlock(nn.Module):
    """y = x + conv2(gelu(ln2(conv1(gelu(ln1(x)))))), LayerNorm over channels."""

    def __init__(self, c, k):
        super().__init__()
        self.ln1, self.conv1 = nn.LayerNorm(c), AffGroupConv(c, c, k)
        self.ln2, self.conv2 = nn.LayerNorm(c), AffGroupConv(c, c, k)

    @staticmethod
    def ln(m, x):  # [N, C, S, H, W]
        return m(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)

    def forward(self, x, g, gi, w):
        h = self.conv1(F.gelu(self.ln(self.ln1, x)), g, gi, w)
        return x + self.conv2(F.gelu(self.ln(self.ln2, h)), g, gi, w)


def aff_pool(y):
    N, C, S, H, W = y.shape
    return F.max_pool2d(y.reshape(N, C * S, H, W), 2).reshape(N, C, S, H // 2, W // 2)


class AffConvNet(nn.Module):
    """kern's affconv_gl2 defaults: lift (1 -> 16, k 5), 2x2 max pool, block 0, 2x2 max pool,
    block 1, global max over samples and space, fc1 (16 -> 16), GELU, fc2 (16 -> 10)."""

    def __init__(self, c=16, blocks=2, k=5, classes=10):
        super().__init__()
        self.lift = AffLift(1, c, k)
        self.blocks = nn.ModuleList(AffResBlock(c, k) for _ in range(blocks))
        self.fc1, self.fc2 = nn.Linear(c, c), nn.Linear(c, classes)

    def forward(self, x, g, gi, w):
        y = aff_pool(self.lift(x, g, gi, w))
        for i, b in enumerate(self.blocks):
            y = b(y, g, gi, w)
            if i == 0:
                y = aff_pool(y)
        return self.fc2(F.gelu(self.fc1(y.flatten(2).amax(2))))


def aff_sample_gl2(n, log_std=0.2):
    """log-normal P (a, b, c ~ N(0, log_std^2)) times Haar rotations; weights 1."""
    a, b, c = (torch.randn(n) * log_std for _ in range(3))
    t = (torch.rand(n) * 2 - 1) * math.pi
    B = torch.stack([torch.stack([b, c], -1), torch.stack([c, -b], -1)], -2)
    P = torch.matrix_exp(B) * torch.exp(a)[:, None, None]
    R = torch.stack([torch.stack([t.cos(), -t.sin()], -1), torch.stack([t.sin(), t.cos()], -1)], -2)
    g = P @ R
    return g, torch.linalg.inv(g), torch.ones(n)


def build_affconv_train():
    model = AffConvNet()
    model.train()
    g, gi, w = aff_sample_gl2(10)
    x = torch.randn(32, 1, 40, 40)
    y = torch.randint(0, 10, (32,))

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x, g, gi, w), y).backward()

    def reference():
        model.zero_grad(set_to_none=True)
        out = model(x, g, gi, w)
        loss = F.cross_entropy(out, y)
        loss.backward()
        e = Exports()
        e.add("x", x, "input images")
        e.add("y", y, "labels")
        e.add("samples.g", g, "the GL+(2) sample set h_s (all layers)")
        e.add("samples.g_inv", gi, "h_s^-1")
        e.add("samples.weight", w, "Monte-Carlo weights")
        e.add_params("param.", model, "parameter (kern's name)")
        e.add("out", out, "logits")
        e.add("loss", loss, "mean cross-entropy")
        e.add_grads("grad.param.", model)
        model.zero_grad(set_to_none=True)
        return e.entries()

    params = sum(p.numel() for p in model.parameters())
    return Bench(definition=(
        f"affconv_train: forward + backward of affconv_gl2 ({params} parameters: lifting conv 1 -> 16, "
        "k 5, Siren 32 x 2 hidden, omega0 10; 2x2 max pool; 2 residual blocks of two 16 -> 16 "
        "group convs with LayerNorm + GELU, a 2x2 max pool after block 0; global max; MLP head) "
        "at batch 32 on 40x40 inputs with one fixed GL+(2) sample set of 10 elements (log-normal "
        "P, log std 0.2, Haar rotations, weights 1); filters generated from the Siren every "
        "iteration. One timed iteration = clear grads, logits, mean cross-entropy, backward "
        "(grads of every parameter)."), step=step, reference=reference)

# ----------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------

def build(workload, length):
    torch.manual_seed(SEED)  # every workload draws its parameters, then inputs, from seed 0
    if workload == "sgemm_peak":
        return build_matmul(4096, "sgemm_peak")
    if workload == "matmul_2048":
        return build_matmul(2048, "matmul_2048")
    if workload == "dwconv7_train":
        return build_dwconv(7)
    if workload == "dwconv31_train":
        return build_dwconv(31)
    if workload == "mlp_train":
        return build_mlp_train()
    if workload == "mlp_train_bf16":
        return build_mlp_train(bf16=True)
    if workload == "convnext_block_bf16":
        return build_convnext_block_bf16()
    if workload == "ddp_mlp_train":
        return build_ddp_mlp_train()
    if workload == "convnext_block_train":
        return build_convnext_block()
    if workload == "inceptionnext_block_train":
        return build_inceptionnext_block()
    if workload == "longconv_train":
        return build_longconv(length)
    if workload == "ntk_mlp":
        return build_ntk_mlp()
    if workload == "ntk_cnn":
        return build_ntk_cnn()
    if workload == "sharpness_mlp":
        return build_sharpness()
    if workload == "fmnist_epoch":
        return build_fmnist()
    if workload == "zoo_ntk_convnext":
        return build_zoo_ntk()
    if workload == "zoo_sharpness_convnext":
        return build_zoo_sharpness()
    if workload == "cntk_gap":
        return build_cntk_gap(64)
    if workload == "cntk_gap_16":
        return build_cntk_gap(16)
    if workload == "affconv_train":
        return build_affconv_train()
    raise ValueError(workload)


def export_path(export_dir, workload, length):
    name = f"longconv_train_L{length}" if workload == "longconv_train" else workload
    return os.path.join(export_dir, name + ".safetensors")


def result_id(workload, length):
    """The id in results.jsonl: longconv_train (L=4096) and longconv_train_<L> otherwise."""
    if workload == "longconv_train" and length != 4096:
        return f"longconv_train_{length}"
    return workload


def workload_params(workload, length):
    """What identifies an export: if any of it differs, the file is rewritten."""
    p = {"spec_version": SPEC_VERSION, "workload": workload, "seed": SEED}
    if workload == "longconv_train":
        p["length"] = length
    return json.dumps(p, sort_keys=True)


def export_if_needed(bench, workload, length, path):
    """Writes the workload's safetensors unless an identical one exists. Returns True if
    it wrote the file."""
    params = workload_params(workload, length)
    meta = read_safetensors_metadata(path)
    if meta is not None and meta.get("params") == params \
            and meta.get("definition") == bench.definition:
        log(f"{path}: up to date, reused")
        return False
    t0 = time.perf_counter()
    entries = bench.reference()
    tensors = OrderedDict((name, t) for name, t, _ in entries)
    metadata = {"workload": workload, "params": params, "definition": bench.definition,
                "generator": f"bench/pytorch_peer.py, torch {torch.__version__}",
                "conventions": "float32 (labels/permutations int64), C-contiguous, PyTorch "
                               "layouts, scalars shape [1]; param.<name> are module "
                               "parameters, grad.<t> = d loss / d <t>",
                "tensors": ",".join(tensors)}
    for name, _, desc in entries:
        metadata[f"tensor.{name}"] = desc
    write_safetensors(path, tensors, metadata)
    log(f"{path}: written ({len(tensors)} tensors, {time.perf_counter() - t0:.2f} s)")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", required=True, choices=WORKLOADS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--export", required=True, metavar="DIR",
                    help="directory of the <id>.safetensors inputs/references")
    ap.add_argument("--length", type=int, default=4096, help="longconv_train: L")
    ap.add_argument("--export-only", action="store_true",
                    help="write the export if needed, do not time")
    args = ap.parse_args()
    if args.iters < 1 or args.warmup < 0 or args.threads < 1 or args.length < 1:
        ap.error("need --iters >= 1, --warmup >= 0, --threads >= 1, --length >= 1")

    torch.set_num_threads(args.threads)
    rid = result_id(args.workload, args.length)
    path = export_path(args.export, args.workload, args.length)

    bench = build(args.workload, args.length)  # cheap: random tensors and modules
    written = export_if_needed(bench, args.workload, args.length, path)
    if args.export_only:
        print(json.dumps({"id": rid, "export": path, "written": written}), flush=True)
        return

    log(f"{rid}: {args.warmup} warm-up + {args.iters} timed iterations, "
        f"{torch.get_num_threads()} threads")
    if bench.run is not None:  # multi-process: the ranks time themselves
        times, peak_rss = bench.run(args.warmup, args.iters, args.threads)
    else:
        for _ in range(args.warmup):
            bench.step()
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            bench.step()
            times.append(time.perf_counter() - t0)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median = statistics.median(times)
    result = {"id": rid, "median_s": median, "min_s": min(times), "max_s": max(times),
              "peak_rss_mb": peak_rss, "threads": args.threads, "iters": args.iters}
    if args.workload == "longconv_train":
        result["length"] = args.length
    result.update(bench.extras(median))
    result.update(bench.after())  # untimed (fmnist accuracy)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
