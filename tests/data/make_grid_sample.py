#!/usr/bin/python3
"""Writes tests/data/grid_sample.safetensors: PyTorch's grid_sample / affine_grid on seeded
float64 inputs, for tests/test_grid_sample.cpp.

    /usr/bin/python3 tests/data/make_grid_sample.py [OUT]

Needs Debian's python3-torch. torch.manual_seed(0); input = randn(2, 3, 4, 5), grid =
U(-1.2, 1.2) of [2, 3, 6, 2] (some points outside the image), v = randn(2, 3, 3, 6) the
cotangent, theta = randn(2, 2, 3) * 0.5; for align in (0, 1): out.{align},
grad_input.{align} and grad_grid.{align} of sum(out * v), affine_grid.{align} for theta and
size (2, 3, 4, 5).
"""
import json
import os
import struct
import sys

import torch
import torch.nn.functional as F


def save_safetensors(path, tensors):
    header, blobs, at = {}, [], 0
    for k in sorted(tensors):
        b = tensors[k].detach().contiguous().numpy().tobytes()
        header[k] = {"dtype": "F64", "shape": list(tensors[k].shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    header["__metadata__"] = {"script": "tests/data/make_grid_sample.py", "torch": torch.__version__}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(path + ".tmp", path)


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "grid_sample.safetensors")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    grid = torch.rand(2, 3, 6, 2, dtype=torch.float64) * 2.4 - 1.2
    v = torch.randn(2, 3, 3, 6, dtype=torch.float64)
    theta = torch.randn(2, 2, 3, dtype=torch.float64) * 0.5
    t = {"input": x, "grid": grid, "v": v, "theta": theta}
    for align in (0, 1):
        xi = x.clone().requires_grad_(True)
        gi = grid.clone().requires_grad_(True)
        out = F.grid_sample(xi, gi, mode="bilinear", padding_mode="zeros", align_corners=bool(align))
        gx, gg = torch.autograd.grad((out * v).sum(), [xi, gi])
        t[f"out.{align}"] = out
        t[f"grad_input.{align}"] = gx
        t[f"grad_grid.{align}"] = gg
        t[f"affine_grid.{align}"] = F.affine_grid(theta, [2, 3, 4, 5], align_corners=bool(align))
    save_safetensors(out_path, t)


if __name__ == "__main__":
    main()
