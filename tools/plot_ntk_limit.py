#!/usr/bin/python3
"""Plots examples/ntk_limit's result: the relative Frobenius distance between the finite
twin's empirical NTK and the analytic infinite-width NTK against width (log-log), one series
per network (mean over seeds, seeds as dots), with the fitted slope and a width^-1/2 guide.

    plot_ntk_limit.py run/ntk_limit/ntk_limit.json [-o docs/figures/ntk_limit.png]
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.style.use(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kern.mplstyle"))

LABELS = {"mlp": "MLP (3 Dense, ReLU)", "cnn_gap": "CNN (2 conv 3x3, ReLU, GAP)"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("-o", "--out", default=None)
    args = ap.parse_args()
    try:
        with open(args.json) as f:
            data = json.load(f)
        series = data["series"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"plot_ntk_limit: cannot read {args.json}: {e}")
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, s in enumerate(series):
        color = f"C{i}"
        w, m = s["widths"], s["mean"]
        for wi, ds in zip(w, s["dist"]):
            ax.scatter([wi] * len(ds), ds, s=8, color=color, alpha=0.35, linewidths=0)
        ax.plot(w, m, "o-", color=color,
                label=f"{LABELS.get(s['name'], s['name'])}: slope {s['slope']:.2f}")
        # width^-1/2 guide through the series' geometric centre
        lx = sum(math.log(x) for x in w) / len(w)
        ly = sum(math.log(y) for y in m) / len(m)
        ax.plot(w, [math.exp(ly - 0.5 * (math.log(x) - lx)) for x in w], "--", color=color,
                alpha=0.5, linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel(r"$\|\Theta_{width} - \Theta_\infty\|_F \,/\, \|\Theta_\infty\|_F$")
    ax.set_title(f"empirical NTK -> analytic limit ({data.get('seeds', '?')} seeds; dashed: width$^{{-1/2}}$)")
    ax.legend()
    fig.tight_layout()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.json)), "ntk_limit.png")
    fig.savefig(out, dpi=150)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
