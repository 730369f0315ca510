#!/usr/bin/python3
"""PyTorch twin of examples/mup_transfer_zoo.cpp: the same recipe, to tell the setup from kern.

A ConvNeXt with depths (1, 1, 2, 1) and dims w * (1, 2, 4, 8) (timm's block: depthwise 7x7,
LayerNorm, Linear x4, GELU, Linear, layer scale 1e-6; patchify stem 4x4 + LayerNorm2d;
downsample LayerNorm2d + 2x2 conv; head: global average pool, LayerNorm, Linear), Adam, the
first N Fashion-MNIST training images normalized (0.286, 0.353) and zero-padded to 32x32,
batch 128, score = mean training loss over the last epoch, averaged over seeds.

SP: PyTorch's default init, one lr. muP: the mup library's Table 8 written out by hand (the mup
package is not in Debian), as kern::param::Preset::mup(base, delta).zero_readout() gives it,
with m = w / base_width:
  - hidden weights (downsample convs, fc1, fc2): default init, Adam lr / m;
  - hidden biases (their biases): init U(+-1/sqrt(base fan_in)), lr unchanged;
  - input-like weights (stem conv, depthwise convs) and their biases, LayerNorm gains and
    biases, layer scales: as in SP;
  - readout (head.fc): weight and bias start at zero, the weight's output is divided by m,
    lr unchanged.
Data order differs from kern's DataLoader: compare optima, not individual losses.

  /usr/bin/python3 examples/pytorch/mup_transfer_zoo.py --params muP --seeds 0,1 \\
      [--widths 8,16,32,64 --lr-min -13 --lr-max -6 --epochs 3 --subsample 3000 --out DIR]
Writes DIR/transfer_pytorch.jsonl ({"kind": "transfer", ...}, mean over seeds) and prints the
optimum per width (grid argmin and parabola vertex, log2 lr) and its spread in grid steps.
"""
import argparse
import gzip
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    b = gzip.open(path).read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims)


def fashion_mnist(n, folder="/usr/share/datasets/fashion-mnist/"):
    x = torch.tensor(read_idx(folder + "train-images-idx3-ubyte.gz")[:n], dtype=torch.float32) / 255
    x = F.pad((x - 0.286) / 0.353, (2, 2, 2, 2)).unsqueeze(1)  # [N, 1, 32, 32]
    y = torch.tensor(read_idx(folder + "train-labels-idx1-ubyte.gz")[:n].astype(np.int64))
    return x, y


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of [N, C, H, W]."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))

    def forward(self, x):
        h = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        h = self.fc2(F.gelu(self.fc1(h))) * self.gamma
        return x + h.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, w, depths=(1, 1, 2, 1), classes=10, readout_mult=1.0):
        super().__init__()
        dims = [w, 2 * w, 4 * w, 8 * w]
        self.stem = nn.Sequential(nn.Conv2d(1, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.downsample = nn.ModuleList(
            [nn.Identity()] + [nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
                               for i in range(1, 4)])
        self.stages = nn.ModuleList([nn.Sequential(*[Block(dims[i]) for _ in range(depths[i])]) for i in range(4)])
        self.norm = nn.LayerNorm(dims[3], eps=1e-6)
        self.fc = nn.Linear(dims[3], classes)
        self.readout_mult = readout_mult

    def forward(self, x):
        x = self.stem(x)
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean((2, 3)))
        return F.linear(x, self.fc.weight * self.readout_mult, self.fc.bias)

    def hidden_layers(self):
        """The layers whose weight has both dims growing with width."""
        out = [d[1] for d in self.downsample[1:]]
        for stage in self.stages:
            for b in stage:
                out += [b.fc1, b.fc2]
        return out


def build(param, w, base_width):
    model = ConvNeXt(w)  # PyTorch's default init
    hidden = model.hidden_layers()
    if param == "SP":
        return model, [{"params": list(model.parameters())}]
    m = w / base_width
    model.readout_mult = 1.0 / m
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        for layer in hidden:  # bias init from the base model's fan_in
            fan_in = layer.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in / m)
            layer.bias.uniform_(-bound, bound)
    hidden_weights = {id(layer.weight) for layer in hidden}
    rest = [p for p in model.parameters() if id(p) not in hidden_weights]
    return model, [{"params": [layer.weight for layer in hidden], "lr_mult": 1.0 / m}, {"params": rest}]


def train_one(param, w, lr, seed, x, y, epochs, base_width, batch=128):
    torch.manual_seed(seed)
    model, groups = build(param, w, base_width)
    for g in groups:
        g["lr"] = lr * g.pop("lr_mult", 1.0)
    opt = torch.optim.Adam(groups, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    last = float("nan")
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total, steps = 0.0, 0
        for s in range(0, n, batch):
            i = perm[s:s + batch]
            loss = F.cross_entropy(model(x[i]), y[i])
            value = loss.item()
            if not math.isfinite(value) or value > 1e3:
                return float("nan")
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + value, steps + 1
        last = total / steps
    return last


def optimum(v):
    """Grid argmin and the parabola vertex through it and its neighbours (grid index units)."""
    best = min(range(len(v)), key=lambda i: v[i] if math.isfinite(v[i]) else float("inf"))
    x = float(best)
    if 0 < best < len(v) - 1 and math.isfinite(v[best - 1]) and math.isfinite(v[best + 1]):
        a, b, c = v[best - 1], v[best], v[best + 1]
        den = a - 2 * b + c
        if den > 0:
            x += 0.5 * (a - c) / den
    return best, x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="SP,muP")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--widths", default="8,16,32,64")
    ap.add_argument("--lr-min", type=int, default=-13)
    ap.add_argument("--lr-max", type=int, default=-6)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--subsample", type=int, default=3000)
    ap.add_argument("--base-width", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="run/mup_transfer_zoo")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    widths = sorted(int(s) for s in a.widths.split(","))
    base_width = a.base_width or widths[0]
    seeds = [int(s) for s in a.seeds.split(",")]
    grid = list(range(2 * a.lr_min, 2 * a.lr_max + 1))  # half steps
    x, y = fashion_mnist(a.subsample)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "transfer_pytorch.jsonl"), "a") as f:
        for param in a.params.split(","):
            arg, vertex = [], []
            for w in widths:
                curve = []
                for k in grid:
                    lr = 2.0 ** (0.5 * k)
                    loss = sum(train_one(param, w, lr, s, x, y, a.epochs, base_width) for s in seeds) / len(seeds)
                    curve.append(loss)
                    f.write(json.dumps({"kind": "transfer", "param": param, "width": w, "lr": lr,
                                        "loss": loss if math.isfinite(loss) else None}) + "\n")
                    f.flush()
                    print(f"{param:>4} width {w:>4} lr 2^{0.5 * k:<5} loss {loss:.4f}", flush=True)
                best, xv = optimum(curve)
                arg.append(0.5 * grid[best])
                vertex.append(0.5 * (grid[0] + xv))
            print(f"{param} argmin (log2 lr) per width {widths}: {arg}, spread {(max(arg) - min(arg)) / 0.5:.0f} grid steps")
            print(f"{param} vertex (log2 lr) per width {widths}: {[round(v, 2) for v in vertex]}, "
                  f"spread {(max(vertex) - min(vertex)) / 0.5:.2f} grid steps", flush=True)


if __name__ == "__main__":
    main()
