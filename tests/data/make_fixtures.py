#!/usr/bin/python3
"""Regenerates the PyTorch-made fixtures of tests/data/ and compares them with the committed files.

    /usr/bin/python3 tests/data/make_fixtures.py [--out DIR] [--write]

Needs Debian's python3-torch (PyTorch 1.13; `make bench-deps` installs it) and numpy; timm is
optional (it is not packaged in Debian). Each fixture is written to DIR (default
build/fixtures/) and compared key by key with the committed file: the script prints the
largest absolute difference per key and exits with status 1 when one exceeds its tolerance.
--write also replaces the committed files, and only when every key agrees.

The fixtures and how they are made:

mlp_tanh.safetensors (float64; PyTorch only, fully reproducible from a seed)
    torch.manual_seed(0); the MLP Linear(6,16) Tanh Linear(16,16) Tanh Linear(16,3) is built
    with PyTorch's default (float32) init and converted with .double(); then
    x = randn(8, 6, float64), y = randn(8, 3, float64), labels = [0, 1, 2, 0, 1, 2, 1, 0].
    From those: the NTK on x[:4], the mse / cross-entropy losses, gradients, Hessians (with
    eigenvalues ascending and traces) over theta = all parameters flattened in state_dict
    order, and 20 full-batch steps of SGD / SGD(momentum, nesterov, wd) / Adam / AdamW.

timm_convnext_k7.safetensors (float32; made with timm 1.0.29 and PyTorch 2.11)
    NEEDS TIMM for its parameters and input: timm.create_model("convnext_atto",
    depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=10) (conv_mlp=True, kernel 7),
    layer scales and norm weights set to U(0.5, 1.5), biases to N(0, 0.1), input
    randn(2, 3, 64, 64), two labels; the seed and the order of those draws were not recorded.
    This script therefore keeps `state.*`, `input` and `labels` from the committed file and
    recomputes everything derived from them (output.eval, output.train, loss.train and the 56
    grad.* entries) with timm's model if timm is importable, else with ConvNeXtK7 below: a
    plain-PyTorch copy of timm's ConvNeXt code path for these options (same module tree and
    parameter names, loaded with strict=True, so the structure is checked too).

timm_variant_shapes.json (NEEDS TIMM to regenerate from timm itself)
    For convnext_atto / femto / tiny and inception_next_atto / tiny / small / base (timm
    defaults, 1000 classes): the parameter count and every state_dict key with its shape, in
    state_dict order. With timm the file is regenerated from timm.create_model; without it,
    the same numbers come from the plain-PyTorch copies below (ConvNeXt, MetaNeXt), which is a
    check of the committed file against the documented architectures, not a second source.

tests/data/malformed/ is made by make_malformed.py (standard library only, no PyTorch).
"""

import argparse
import json
import math
import os
import struct
import sys
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

try:
    import timm  # noqa: F401  (optional)
    HAVE_TIMM = True
except ImportError:
    HAVE_TIMM = False

# ------------------------------------------------------------------------------ safetensors

_DT = {"F64": (np.float64, torch.float64), "F32": (np.float32, torch.float32), "I64": (np.int64, torch.int64)}
_DT_NAME = {torch.float64: "F64", torch.float32: "F32", torch.int64: "I64"}


def load_safetensors(path):
    """(dict name -> torch tensor, metadata dict) of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for k, v in header.items():
        s, e = v["data_offsets"]
        arr = np.frombuffer(raw[8 + n + s:8 + n + e], dtype=_DT[v["dtype"]][0]).reshape(v["shape"])
        out[k] = torch.from_numpy(arr.copy())
    return out, meta


def save_safetensors(path, tensors, meta):
    header, blobs, at = {}, [], 0
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous()
        b = t.numpy().tobytes()
        header[k] = {"dtype": _DT_NAME[t.dtype], "shape": list(t.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ mlp_tanh

def make_mlp_tanh():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    y = torch.randn(8, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 1, 0])
    names = [k for k, _ in model.named_parameters()]  # 0.weight, 0.bias, 2.weight, ...
    params0 = [p.detach().clone() for p in model.parameters()]
    shapes = [p.shape for p in params0]
    sizes = [p.numel() for p in params0]

    def forward(ps, inp):
        h = torch.tanh(F.linear(inp, ps[0], ps[1]))
        h = torch.tanh(F.linear(h, ps[2], ps[3]))
        return F.linear(h, ps[4], ps[5])

    def unflat(theta):
        return [t.view(s) for t, s in zip(torch.split(theta, sizes), shapes)]

    losses = {
        "mse": lambda f: 0.5 * ((f - y) ** 2).sum(1).mean(),
        "ce": lambda f: F.cross_entropy(f, labels),
    }
    out = {f"param.{n}": p for n, p in zip(names, params0)}
    out.update(x=x, y=y, labels=labels)

    # NTK on x[:4]: J [4*3, P], ntk = J J^T reshaped [4, 3, 4, 3].
    theta0 = torch.cat([p.reshape(-1) for p in params0])
    J = torch.autograd.functional.jacobian(lambda th: forward(unflat(th), x[:4]).reshape(-1), theta0)
    out["ntk"] = (J @ J.T).reshape(4, 3, 4, 3)

    for name, loss_fn in losses.items():
        def loss_of(th, loss_fn=loss_fn):
            return loss_fn(forward(unflat(th), x))
        th = theta0.clone().requires_grad_(True)
        loss = loss_of(th)
        (g,) = torch.autograd.grad(loss, th)
        H = torch.autograd.functional.hessian(loss_of, theta0)
        out[f"loss.{name}"] = loss.detach().reshape(1)
        out[f"grad.{name}"] = g
        out[f"hessian.{name}"] = H
        out[f"hessian.{name}.eigvals"] = torch.linalg.eigvalsh(H)
        out[f"hessian.{name}.trace"] = torch.trace(H).reshape(1)

    optimizers = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
        "sgd_momentum_nesterov_wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                                               weight_decay=1e-3),
        "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    }
    for oname, make in optimizers.items():
        ps = [p.clone().requires_grad_(True) for p in params0]
        opt = make(ps)
        trace = []
        for _ in range(20):
            opt.zero_grad()
            loss = losses["mse"](forward(ps, x))
            trace.append(loss.item())
            loss.backward()
            opt.step()
        out[f"opt.{oname}.losses"] = torch.tensor(trace, dtype=torch.float64)
        for n, p in zip(names, ps):
            out[f"opt.{oname}.final.{n}"] = p.detach()
    return out


# ------------------------------------------------------------------------------ ConvNeXt (timm's code path)

class LayerNorm2d(nn.LayerNorm):
    """timm.layers.LayerNorm2d: LayerNorm over C of an NCHW tensor (eps 1e-6)."""

    def __init__(self, num_channels, eps=1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """timm.layers.Mlp (use_conv: 1x1 convolutions on NCHW, else Linear on NHWC)."""

    def __init__(self, dim, hidden, use_conv):
        super().__init__()
        layer = partial(nn.Conv2d, kernel_size=1) if use_conv else nn.Linear
        self.fc1 = layer(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = layer(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim, kernel_size, conv_mlp):
        super().__init__()
        self.conv_mlp = conv_mlp
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim) if conv_mlp else nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, conv_mlp)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x)
        if self.conv_mlp:
            x = self.mlp(self.norm(x))
        else:
            x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x.mul(self.gamma.reshape(1, -1, 1, 1)) + shortcut


class ConvNeXtStage(nn.Module):
    def __init__(self, cin, cout, stride, depth, kernel_size, conv_mlp):
        super().__init__()
        if cin != cout or stride > 1:
            self.downsample = nn.Sequential(LayerNorm2d(cin), nn.Conv2d(cin, cout, kernel_size=2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(cout, kernel_size, conv_mlp) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class NormMlpClassifierHead(nn.Module):
    """timm's head for ConvNeXt: global average pool, LayerNorm2d, flatten, Linear."""

    def __init__(self, dim, num_classes):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.norm(x.mean((2, 3), keepdim=True))
        return self.fc(x.flatten(1))


class ConvNeXt(nn.Module):
    """timm.models.convnext.ConvNeXt for patch_size 4, no GRN, no head hidden layer."""

    def __init__(self, depths, dims, conv_mlp, num_classes=1000, in_chans=3, kernel_size=7):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))
        stages, prev = [], dims[0]
        for i, (d, c) in enumerate(zip(depths, dims)):
            stages.append(ConvNeXtStage(prev, c, 1 if i == 0 else 2, d, kernel_size, conv_mlp))
            prev = c
        self.stages = nn.Sequential(*stages)
        self.head = NormMlpClassifierHead(prev, num_classes)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def ConvNeXtK7():
    return ConvNeXt((1, 1, 1, 1), (8, 16, 24, 32), conv_mlp=True, num_classes=10)


# ------------------------------------------------------------------------------ InceptionNeXt (timm's MetaNeXt)

class InceptionDWConv2d(nn.Module):
    def __init__(self, dim, band_kernel_size, square_kernel_size=3, branch_ratio=0.125):
        super().__init__()
        gc = int(dim * branch_ratio)
        self.dwconv_hw = nn.Conv2d(gc, gc, square_kernel_size, padding=square_kernel_size // 2, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, band_kernel_size), padding=(0, band_kernel_size // 2), groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (band_kernel_size, 1), padding=(band_kernel_size // 2, 0), groups=gc)


class ConvMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm = nn.Identity()
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)


class MetaNeXtBlock(nn.Module):
    def __init__(self, dim, mlp_ratio, band_kernel_size, branch_ratio):
        super().__init__()
        self.token_mixer = InceptionDWConv2d(dim, band_kernel_size, branch_ratio=branch_ratio)
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(mlp_ratio * dim))
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))


class MetaNeXtStage(nn.Module):
    def __init__(self, cin, cout, stride, depth, mlp_ratio, band_kernel_size, branch_ratio):
        super().__init__()
        if stride > 1:
            self.downsample = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, kernel_size=2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[MetaNeXtBlock(cout, mlp_ratio, band_kernel_size, branch_ratio)
                                      for _ in range(depth)])


class MlpClassifierHead(nn.Module):
    def __init__(self, dim, num_classes, mlp_ratio=3):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.fc2 = nn.Linear(hidden, num_classes)


class MetaNeXt(nn.Module):
    def __init__(self, depths, dims, band_kernel_size=11, branch_ratio=0.125, num_classes=1000,
                 mlp_ratios=(4, 4, 4, 3)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), nn.BatchNorm2d(dims[0]))
        stages, prev = [], dims[0]
        for i, (d, c) in enumerate(zip(depths, dims)):
            stages.append(MetaNeXtStage(prev, c, 1 if i == 0 else 2, d, mlp_ratios[i], band_kernel_size, branch_ratio))
            prev = c
        self.stages = nn.Sequential(*stages)
        self.head = MlpClassifierHead(prev, num_classes)


VARIANTS = {
    "convnext_atto": lambda: ConvNeXt((2, 2, 6, 2), (40, 80, 160, 320), conv_mlp=True),
    "convnext_femto": lambda: ConvNeXt((2, 2, 6, 2), (48, 96, 192, 384), conv_mlp=True),
    "convnext_tiny": lambda: ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), conv_mlp=False),
    "inception_next_atto": lambda: MetaNeXt((2, 2, 6, 2), (40, 80, 160, 320), band_kernel_size=9, branch_ratio=0.25),
    "inception_next_tiny": lambda: MetaNeXt((3, 3, 9, 3), (96, 192, 384, 768)),
    "inception_next_small": lambda: MetaNeXt((3, 3, 27, 3), (96, 192, 384, 768)),
    "inception_next_base": lambda: MetaNeXt((3, 3, 27, 3), (128, 256, 512, 1024)),
}


def make_variant_shapes(committed):
    models = {}
    for name in committed["models"]:
        if HAVE_TIMM:
            m = timm.create_model(name, pretrained=False)
        else:
            m = VARIANTS[name]()
        models[name] = {
            "params": sum(p.numel() for p in m.parameters()),
            "state": {k: list(v.shape) for k, v in m.state_dict().items()},
        }
    return {"timm": timm.__version__ if HAVE_TIMM else committed["timm"], "models": models}


def make_convnext_k7(committed):
    """Recomputes the derived entries from the committed parameters and input."""
    state = {k[len("state."):]: v for k, v in committed.items() if k.startswith("state.")}
    if HAVE_TIMM:
        model = timm.create_model("convnext_atto", pretrained=False, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
                                  num_classes=10)
    else:
        model = ConvNeXtK7()
    model.load_state_dict(state, strict=True)  # every key, every shape: the structure check
    x, labels = committed["input"], committed["labels"]
    out = {f"state.{k}": v for k, v in state.items()}
    out.update(input=x, labels=labels)
    model.eval()
    with torch.no_grad():
        out["output.eval"] = model(x)
    model.train()
    model.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    out["output.train"] = logits.detach()
    out["loss.train"] = loss.detach().reshape(1)
    for k, p in model.named_parameters():
        out[f"grad.{k}"] = p.grad.detach()
    return out


# ------------------------------------------------------------------------------ comparison

def tolerance(key, ref):
    """Absolute tolerance for agreement of a regenerated entry (PyTorch 1.13 here vs the 2.11 /
    timm run that made the file): float64 to rounding; float32 to float32 rounding of the
    entry's scale (convolution and GEMM summation orders differ between versions)."""
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    if ref.dtype == torch.float64:
        if key.startswith("opt."):
            return 1e-11 * scale  # 20 steps amplify rounding
        return 1e-12 * scale
    if ref.dtype == torch.float32:
        return 1e-5 * scale
    return 0


def compare_tensors(name, new, old):
    ok = True
    if sorted(new) != sorted(old):
        print(f"{name}: keys differ: only new {sorted(set(new) - set(old))}, only committed {sorted(set(old) - set(new))}")
        ok = False
    worst = (0.0, None)
    for k in sorted(set(new) & set(old)):
        a, b = new[k], old[k]
        if a.shape != b.shape or a.dtype != b.dtype:
            print(f"{name}: {k}: {a.dtype} {list(a.shape)} vs committed {b.dtype} {list(b.shape)}")
            ok = False
            continue
        d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        tol = tolerance(k, b)
        flag = "" if d <= tol else f"   EXCEEDS {tol:.1e}"
        print(f"  {name}: {k:48s} max |new - committed| = {d:.3e}{flag}")
        ok = ok and d <= tol
        if d > worst[0]:
            worst = (d, k)
    print(f"{name}: {'agrees' if ok else 'DISAGREES'}; largest difference {worst[0]:.3e} ({worst[1]})")
    return ok


def compare_shapes(new, old):
    ok = True
    for name, ref in old["models"].items():
        got = new["models"].get(name)
        same_keys = got is not None and list(got["state"]) == list(ref["state"])
        same_shapes = same_keys and all(got["state"][k] == ref["state"][k] for k in ref["state"])
        same_count = got is not None and got["params"] == ref["params"]
        print(f"  timm_variant_shapes.json: {name:22s} params {got['params'] if got else None} vs {ref['params']}; "
              f"keys in order {'same' if same_keys else 'DIFFER'}; shapes {'same' if same_shapes else 'DIFFER'}")
        ok = ok and same_keys and same_shapes and same_count
    print(f"timm_variant_shapes.json: {'agrees' if ok else 'DISAGREES'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "fixtures"), help="where regenerated files go")
    ap.add_argument("--write", action="store_true", help="also replace the committed files (only if all agree)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # deterministic reductions
    print(f"PyTorch {torch.__version__}, timm {'available' if HAVE_TIMM else 'not installed: plain-PyTorch copies of its models'}")

    results, writes = [], []

    old, meta = load_safetensors(os.path.join(HERE, "mlp_tanh.safetensors"))
    new = make_mlp_tanh()
    path = os.path.join(args.out, "mlp_tanh.safetensors")
    save_safetensors(path, new, meta)
    results.append(compare_tensors("mlp_tanh.safetensors", new, old))
    writes.append((path, "mlp_tanh.safetensors"))

    old, meta = load_safetensors(os.path.join(HERE, "timm_convnext_k7.safetensors"))
    new = make_convnext_k7(old)
    meta = dict(meta)
    if not HAVE_TIMM:
        meta["regenerated"] = (f"derived entries recomputed by tests/data/make_fixtures.py with PyTorch "
                               f"{torch.__version__} and its plain-PyTorch copy of timm's ConvNeXt")
    path = os.path.join(args.out, "timm_convnext_k7.safetensors")
    save_safetensors(path, new, meta)
    results.append(compare_tensors("timm_convnext_k7.safetensors", new, old))
    writes.append((path, "timm_convnext_k7.safetensors"))

    with open(os.path.join(HERE, "timm_variant_shapes.json")) as f:
        old_shapes = json.load(f)
    new_shapes = make_variant_shapes(old_shapes)
    path = os.path.join(args.out, "timm_variant_shapes.json")
    with open(path, "w") as f:
        json.dump(new_shapes, f, separators=(", ", ": "))
    results.append(compare_shapes(new_shapes, old_shapes))
    if HAVE_TIMM:
        writes.append((path, "timm_variant_shapes.json"))

    print(f"regenerated files: {args.out}")
    if not all(results):
        print("some regenerated values disagree with the committed fixtures: nothing replaced")
        return 1
    if args.write:
        for src, name in writes:
            os.replace(src, os.path.join(HERE, name))
            print(f"replaced tests/data/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
