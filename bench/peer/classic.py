"""The first-round workloads with plain training steps: the matrix products (sgemm_peak,
matmul_2048), the block workloads (dwconv7_train, dwconv31_train, convnext_block_train,
convnext_block_bf16, inceptionnext_block_train) with their timm-structured blocks,
mlp_train / mlp_train_bf16, and longconv_train."""

import copy
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import Bench, Exports, mlp, randomize_norms_and_scales


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
