#!/usr/bin/python3
"""Plots examples/hessian_outliers' JSON: per model (columns), the top eigenvalues of the
Hessian H, the Gauss-Newton matrix G, its class-means part G_means (exact, from the Gram
matrix of the C^2 class-mean vectors) and its within-class part G_within against their
index (top row, log scale), and the spectral densities of H and G (SLQ) and of G_means (its
exact eigenvalues, smoothed with G's SLQ width) (bottom row).

  plot_hessian_outliers.py run/hessian_outliers/hessian_outliers.json -o hessian_outliers.png
"""
import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# kern's shared style (tools/kern.mplstyle, installed next to this script).
plt.style.use(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kern.mplstyle"))

COLORS = {"H": "tab:blue", "G": "tab:orange", "G_means": "tab:green", "G_within": "tab:red"}
TITLES = {"mlp": "ReLU MLP 784-64-64-10", "cnn": "small CNN (2 conv + 2 fc)"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    with open(a.json) as f:
        run = json.load(f)
    models = run["models"]
    fig, axes = plt.subplots(2, len(models), figsize=(5.2 * len(models), 7.0), squeeze=False)
    for col, m in enumerate(models):
        C = m["classes"]
        sp = m["spectra"]
        ax = axes[0][col]
        for name in ("H", "G", "G_within"):
            top = [v for v in sp[name]["top"] if v > 0]
            ax.semilogy(range(1, len(top) + 1), top, ".-", ms=3, lw=0.8, color=COLORS[name],
                        label=f"{name} (separated: {sp[name]['separated']})")
        exact = [v for v in m["class_means_exact"] if v > 1e-5 * m["class_means_exact"][0]]
        ax.semilogy(range(1, len(exact) + 1), exact, "o", ms=2.5, mfc="none", color=COLORS["G_means"],
                    label=f"G_means exact (separated: {m['class_means_exact_separated']}, rank {len(exact)})")
        for x, txt in ((C, "C"), (C * (C - 1), "C(C-1)")):
            ax.axvline(x + 0.5, color="gray", ls=":", lw=0.8)
            ax.text(x + 1, ax.get_ylim()[1], txt, va="top", fontsize=8, color="gray")
        ax.set_xlabel("index j")
        ax.set_ylabel("eigenvalue lambda_j")
        ax.set_title(f"{TITLES.get(m['model'], m['model'])}: P = {m['params']}, N = {m['samples']}, "
                     f"acc {m['train_accuracy']:.3f}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        ax = axes[1][col]
        for name in ("H", "G"):
            grid, dens = sp[name]["density_grid"], sp[name]["density"]
            pts = [(g, d) for g, d in zip(grid, dens) if d > 1e-12]
            if pts:
                ax.semilogy([p[0] for p in pts], [p[1] for p in pts], lw=0.9, color=COLORS[name], label=f"{name} (SLQ)")
        # G_means exactly: its C^2 Gram eigenvalues and P - C^2 zeros, smoothed with G's SLQ width.
        grid = sp["G"]["density_grid"]
        sigma = sp["G"].get("density_sigma") or (grid[-1] - grid[0]) / 116.0
        P, ev = m["params"], m["class_means_exact"]
        dens = []
        for t in grid:
            g = sum(math.exp(-0.5 * ((t - e) / sigma) ** 2) for e in ev)
            g += (P - len(ev)) * math.exp(-0.5 * (t / sigma) ** 2)
            dens.append(g / (P * sigma * math.sqrt(2 * math.pi)))
        pts = [(g, d) for g, d in zip(grid, dens) if d > 1e-12]
        ax.semilogy([p[0] for p in pts], [p[1] for p in pts], lw=0.9, color=COLORS["G_means"],
                    label="G_means (exact eigenvalues)")
        ax.set_ylim(bottom=1e-8)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("spectral density")
        ax.legend(fontsize=7)
    fig.suptitle("Hessian outliers on Fashion-MNIST (trained to zero error): H, GGN G = G_means + G_within", fontsize=10)
    fig.tight_layout()
    fig.savefig(a.out, dpi=72)


if __name__ == "__main__":
    main()
