#!/usr/bin/python3
"""Plots examples/limits_regression's result: test accuracy of NNGP and NTK kernel regression
on Fashion-MNIST against the training-set size (log x), one colour per kernel (MLP, CNN-GAP),
solid NNGP, dashed NTK.

    plot_limits_regression.py run/limits_regression.json [-o docs/figures/limits_regression.png]
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.style.use(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kern.mplstyle"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="one or more result files (their rows are merged)")
    ap.add_argument("-o", "--out", default=None)
    args = ap.parse_args()
    rows = []
    try:
        for path in args.json:
            with open(path) as f:
                rows += json.load(f)["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"plot_limits_regression: cannot read {args.json}: {e}")
    kernels = []
    for r in rows:
        if r["kernel"] not in kernels:
            kernels.append(r["kernel"])
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, k in enumerate(kernels):
        rs = sorted((r for r in rows if r["kernel"] == k), key=lambda r: r["n"])
        n = [r["n"] for r in rs]
        ax.plot(n, [r["nngp"] for r in rs], "o-", color=f"C{i}", label=f"{k}, NNGP")
        ax.plot(n, [r["ntk"] for r in rs], "s--", color=f"C{i}", label=f"{k}, NTK")
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("test accuracy")
    ax.set_title("infinite-width kernel regression, Fashion-MNIST")
    ax.legend()
    fig.tight_layout()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.json[0])), "limits_regression.png")
    fig.savefig(out, dpi=150)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
