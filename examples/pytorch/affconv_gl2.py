#!/usr/bin/python3
"""PyTorch peer of kern's affconv_gl2 (models/lie/, affine_conv.hpp), written from the
equations of Mironenco & Forre (ICLR 2024) as kern implements them, for a same-run timing of
forward + backward at batch 32 with 10 samples on 40x40 inputs:

    /usr/bin/python3 examples/pytorch/affconv_gl2.py [--threads 2] [--batch 32] [--samples 10]

Same shapes as kern's defaults: channels 16, 2 residual blocks, kernel 5, Siren 32 x 2 hidden
layers (omega0 10), a 2x2 max pool after the lifting conv (lift_pool) and after block 0, global
max, MLP head. bench/peer/affconv.py's affconv_train is the same network under kern's
parameter names (checked against kern there). Samples: log-normal P
(log std 0.2) times Haar rotations, weights 1.
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Siren(nn.Module):
    def __init__(self, fin, fout, hidden=32, layers=2, omega0=10.0):
        super().__init__()
        dims = [fin] + [hidden] * layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(hidden, fout)
        self.omega0 = omega0

    def forward(self, x):
        for lin in self.hidden:
            x = torch.sin(self.omega0 * lin(x))
        return self.out(x)


def kernel_grid(k):
    r = (k - 1) / 2
    i = (torch.arange(k, dtype=torch.float32) - r) / r
    return torch.stack(torch.meshgrid(i, i, indexing="ij"), -1).reshape(-1, 2)  # (row, col)


def sample_gl2(n, log_std=0.2):
    a, b, c = (torch.randn(n) * log_std for _ in range(3))
    t = (torch.rand(n) * 2 - 1) * math.pi
    B = torch.stack([torch.stack([b, c], -1), torch.stack([c, -b], -1)], -2)
    P = torch.matrix_exp(B) * torch.exp(a)[:, None, None]
    R = torch.stack([torch.stack([t.cos(), -t.sin()], -1), torch.stack([t.sin(), t.cos()], -1)], -2)
    g = P @ R
    return g, torch.linalg.inv(g)


def embedding(g):
    # (log P vee coordinates a, b, c, cos theta, sin theta) of g = P R
    x, y = g[..., 0, 0] + g[..., 1, 1], g[..., 1, 0] - g[..., 0, 1]
    s = torch.sqrt(x * x + y * y)
    cs, sn = x / s, y / s
    R = torch.stack([torch.stack([cs, -sn], -1), torch.stack([sn, cs], -1)], -2)
    P = g @ R.transpose(-1, -2)
    ev, V = torch.linalg.eigh(P)
    L = V @ torch.diag_embed(ev.log()) @ V.transpose(-1, -2)
    a = (L[..., 0, 0] + L[..., 1, 1]) / 2
    return torch.stack([a, (L[..., 0, 0] - L[..., 1, 1]) / 2, L[..., 0, 1], cs, sn], -1)


class Lift(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, k
        self.kernel = Siren(2, cin * cout)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x, g, gi):
        S, k = g.shape[0], self.k
        coords = kernel_grid(k)[None] @ gi.transpose(1, 2)  # [S, k*k, 2]
        w = self.kernel(coords).reshape(S, k, k, self.cout, self.cin).permute(3, 0, 4, 1, 2)
        w = w / torch.linalg.det(g).abs()[None, :, None, None, None] / math.sqrt(self.cin * k * k)
        y = F.conv2d(x, w.reshape(self.cout * S, self.cin, k, k), padding=k // 2)
        return y.reshape(x.shape[0], self.cout, S, *y.shape[2:]) + self.bias[None, :, None, None, None]


class GConv(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, k
        self.kernel = Siren(2 + 5, cin * cout)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x, g, gi):
        S, k = g.shape[0], self.k
        spatial = kernel_grid(k)[None] @ gi.transpose(1, 2)  # [S, k*k, 2]
        with torch.no_grad():
            emb = embedding(gi[:, None] @ g[None])  # [So, Si, 5]
        coords = torch.cat([spatial[:, None].expand(S, S, k * k, 2), emb[:, :, None].expand(S, S, k * k, 5)], -1)
        w = self.kernel(coords).reshape(S, S, k, k, self.cout, self.cin).permute(4, 0, 5, 1, 2, 3)
        f = 1.0 / torch.linalg.det(g).abs()[:, None] / S / math.sqrt(self.cin * k * k)
        w = w * f[None, :, None, :, None, None]
        N = x.shape[0]
        y = F.conv2d(x.reshape(N, self.cin * S, *x.shape[3:]), w.reshape(self.cout * S, self.cin * S, k, k),
                     padding=k // 2)
        return y.reshape(N, self.cout, S, *y.shape[2:]) + self.bias[None, :, None, None, None]


class Block(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.conv1, self.conv2 = GConv(c, c, k), GConv(c, c, k)

    @staticmethod
    def ln(m, x):
        return m(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)

    def forward(self, x, g, gi):
        h = self.conv1(F.gelu(self.ln(self.ln1, x)), g, gi)
        return x + self.conv2(F.gelu(self.ln(self.ln2, h)), g, gi)


class AffConvNet(nn.Module):
    def __init__(self, c=16, blocks=2, k=5, classes=10):
        super().__init__()
        self.lift = Lift(1, c, k)
        self.blocks = nn.ModuleList(Block(c, k) for _ in range(blocks))
        self.fc1, self.fc2 = nn.Linear(c, c), nn.Linear(c, classes)

    def forward(self, x, g, gi):
        y = self.lift(x, g, gi)
        N, C, S, H, W = y.shape
        y = F.max_pool2d(y.reshape(N, C * S, H, W), 2).reshape(N, C, S, H // 2, W // 2)
        for i, b in enumerate(self.blocks):
            y = b(y, g, gi)
            if i == 0:
                N, C, S, H, W = y.shape
                y = F.max_pool2d(y.reshape(N, C * S, H, W), 2).reshape(N, C, S, H // 2, W // 2)
        f = y.flatten(2).amax(2)
        return self.fc2(F.gelu(self.fc1(f)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--samples", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AffConvNet()
    x = torch.randn(args.batch, 1, 40, 40)
    y = torch.randint(0, 10, (args.batch,))
    params = sum(p.numel() for p in model.parameters())
    ms = []
    for _ in range(6):
        g, gi = sample_gl2(args.samples)
        t0 = time.perf_counter()
        F.cross_entropy(model(x, g, gi), y).backward()
        ms.append((time.perf_counter() - t0) * 1e3)
    ms = sorted(ms[1:])
    print(f"pytorch affconv_gl2: {params} parameters; forward+backward at batch {args.batch} on 40x40: "
          f"median {ms[len(ms) // 2]:.1f} ms (min {ms[0]:.1f}, {len(ms)} runs, {args.threads} threads)")


if __name__ == "__main__":
    main()
