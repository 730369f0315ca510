# PyTorch twin of examples/mup_transfer.cpp, to tell kern's behaviour from the setup's:
# MLP 784-w-w-10 ReLU, Adam, first 8000 Fashion-MNIST images (normalized 0.286/0.353), 6 epochs
# (or argv[3]) of batch 128, lrs 2^-14..2^-4, widths 128..2048; score = mean training loss over the last
# epoch. muP is the mup library's Table 8 form with base width 128, written out by hand (the
# mup package is not in Debian): hidden weight Adam lr x 128/w, readout input multiplied by
# 128/w with the readout zero-initialized, everything else as in PyTorch's defaults.
# Data order differs from kern's DataLoader, so compare optima, not individual losses.
#
#   /usr/bin/python3 examples/pytorch/mup_transfer.py muP 0,1 [6]   # parameterization, seeds, epochs
#   -> one line per width: grid argmin, parabola vertex (log2 lr), the mean losses
import gzip, math, sys, numpy as np, torch
torch.set_num_threads(1)
def idx(path):
    b = gzip.open(path).read()
    nd = b[3]; dims = [int.from_bytes(b[4+4*i:8+4*i], 'big') for i in range(nd)]
    return np.frombuffer(b, np.uint8, offset=4+4*nd).reshape(dims)
d = '/usr/share/datasets/fashion-mnist/'
X = torch.tensor(idx(d+'train-images-idx3-ubyte.gz')[:8000].reshape(8000, 784), dtype=torch.float32) / 255
X = (X - 0.286) / 0.353
Y = torch.tensor(idx(d+'train-labels-idx1-ubyte.gz')[:8000].astype(np.int64))
base = 128
def run(param, w, lr, seed):
    torch.manual_seed(seed)
    l0, l2, l4 = torch.nn.Linear(784, w), torch.nn.Linear(w, w), torch.nn.Linear(w, 10)
    mult = 1.0
    groups = [{'params': [l0.weight, l0.bias, l2.bias, l4.bias], 'lr': lr},
              {'params': [l2.weight], 'lr': lr * (base / w if param == 'muP' else 1.0)},
              {'params': [l4.weight], 'lr': lr}]
    if param == 'muP':
        mult = base / w
        with torch.no_grad(): l4.weight.zero_(); l4.bias.zero_()
    opt = torch.optim.Adam(groups, lr=lr)
    g = torch.Generator().manual_seed(seed)
    last = float('nan')
    for e in range(epochs):
        perm = torch.randperm(8000, generator=g)
        tot, n = 0.0, 0
        for s in range(0, 8000, 128):
            i = perm[s:s+128]
            h = torch.relu(l2(torch.relu(l0(X[i]))))
            loss = torch.nn.functional.cross_entropy(l4(h * mult), Y[i])
            if not math.isfinite(loss.item()) or loss.item() > 1e3: return float('nan')
            opt.zero_grad(); loss.backward(); opt.step()
            tot += loss.item(); n += 1
        last = tot / n
    return last
param = sys.argv[1]; seeds = [int(s) for s in sys.argv[2].split(',')]
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 6
widths = [128, 256, 512, 1024, 2048]; lrs = [2.0**k for k in range(-14, -3)]
for w in widths:
    v = []
    for lr in lrs:
        v.append(sum(run(param, w, lr, s) for s in seeds) / len(seeds))
    b = min(range(len(v)), key=lambda i: v[i] if v[i] == v[i] else 1e9); x = b
    if 0 < b < len(v) - 1:
        a, bb, c = v[b-1], v[b], v[b+1]; den = a - 2*bb + c
        if den > 0: x += 0.5 * (a - c) / den
    print(param, w, 'argmin 2^%d' % (b - 14), 'vertex %.2f' % (x - 14), ' '.join('%.4f' % t for t in v), flush=True)
