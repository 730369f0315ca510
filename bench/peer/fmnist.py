"""fmnist_epoch: one SGD epoch of a small CNN on Fashion-MNIST (Debian's
dataset-fashion-mnist), data loading included, and the IDX reader it times."""

import copy
import gzip
import math
import os
import struct
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import SEED, Bench, Exports, log

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


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
