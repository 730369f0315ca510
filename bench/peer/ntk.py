"""Kernel and curvature workloads: the empirical NTK by the functorch recipe (ntk_mlp,
ntk_cnn), the Hessian's top eigenvalue by power iteration (sharpness_mlp), and both at zoo
scale on a ConvNeXt-atto-like net (zoo_ntk_convnext, zoo_sharpness_convnext)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .classic import ConvNeXtBlock
from .common import Bench, Exports, mlp


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
