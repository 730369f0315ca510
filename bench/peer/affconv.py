"""affconv_train: forward + backward of kern's affconv_gl2 (the GL+(2) affine G-ResNet),
re-implemented with torch ops: Siren kernels, lifting and group convolutions, residual
blocks, the sample set."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import Bench, Exports


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
