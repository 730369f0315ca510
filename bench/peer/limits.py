"""cntk_gap and cntk_gap_16: the analytic infinite-width NNGP / NTK of a conv net with global
average pooling (kern::limits' counterpart), the recursion written with torch ops in
float64."""

import ctypes
import math
import sys

import torch
import torch.nn.functional as F

from .common import Bench, Exports


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
