#!/usr/bin/python3
"""Plots examples/sharpness_depth's tracker files: sharpness * lr / 2 against the training step,
one panel per depth scaling (depth-muP, none), one line per depth L.

  plot_depth.py -o sharpness_depth.png --lr LR run/sharpness_depth/{depth_mup,none}/L*.jsonl

Each file is a tools::Tracker JSON-lines file whose "run" label reads "<scaling> L=<depth>".
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# kern's shared style (tools/kern.mplstyle, installed next to this script).
plt.style.use(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kern.mplstyle"))

CLIP = 3.0  # sharpness x lr / 2 above this is clipped (a diverged run)
TITLES = {"depth_mup": "depth-muP (branches x 1/sqrt(L))", "none": "no depth scaling"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--lr", type=float, required=True)
    a = ap.parse_args()
    runs = {}  # scaling -> [(depth, steps, values)]
    for path in a.files:
        with open(path) as f:
            recs = [json.loads(line) for line in f if line.strip()]
        recs = [r for r in recs if r.get("sharpness") is not None]
        if not recs:
            continue
        scaling, depth = recs[0]["run"].rsplit(" L=", 1)
        runs.setdefault(scaling, []).append(
            (int(depth), [r["step"] for r in recs], [r["sharpness"] * a.lr / 2 for r in recs]))
    order = [s for s in TITLES if s in runs] + [s for s in runs if s not in TITLES]
    fig, axes = plt.subplots(1, len(order), figsize=(5.2 * len(order), 3.8), sharey=True, squeeze=False)
    depths = sorted({d for s in runs.values() for d, _, _ in s})
    cmap = plt.get_cmap("viridis", max(len(depths), 2))
    for ax, scaling in zip(axes[0], order):
        for depth, steps, values in sorted(runs[scaling]):
            # Diverged runs: values above CLIP are marked on the top edge, not allowed to stretch the axis.
            inside = [v if v <= CLIP else float("nan") for v in values]
            ax.plot(steps, inside, "-", color=cmap(depths.index(depth)), lw=1.6, label=f"L = {depth}")
            over = [s for s, v in zip(steps, values) if v > CLIP]
            if over:
                ax.plot(over, [CLIP] * len(over), "^", color=cmap(depths.index(depth)), ms=4, clip_on=False)
        ax.axhline(1.0, color="0.4", ls=":", lw=1, label="2 / lr (edge of stability)")
        ax.set_title(TITLES.get(scaling, scaling))
        ax.set_xlabel("gradient descent step")
    axes[0][0].set_ylabel(r"preconditioned sharpness $\lambda_{max}(D^{1/2} H D^{1/2})$ x lr / 2")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Residual tanh MLP on Fashion-MNIST: preconditioned sharpness across depths", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    fig.savefig(a.out)


if __name__ == "__main__":
    main()
