#!/usr/bin/python3
"""Plots examples/affine_fmnist's results: clean and affine test accuracy after the last epoch
of each model (bars, with the drop under the affine maps written above each pair), and the
time per epoch (right panel).

    plot_affine_fmnist.py runs/affine_fmnist.jsonl [-o docs/figures/affine_fmnist.png]

The input has one JSON line per model and epoch ({"model", "params", "epoch", "epoch_s",
"clean", "affine", "train_images", "test_images", ...}), as `affine_fmnist --out` appends.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# kern's shared style (tools/kern.mplstyle, installed next to this script).
plt.style.use(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kern.mplstyle"))

ORDER = ["cnn", "p4cnn", "affconv_sl2", "affconv_gl2"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl")
    ap.add_argument("-o", "--out", default=None)
    args = ap.parse_args()
    last, times = {}, {}
    try:
        with open(args.jsonl) as f:
            for line in f:
                if not line.strip():
                    continue
                r = json.loads(line)
                m = r["model"]
                if m not in last or r["epoch"] >= last[m]["epoch"]:
                    last[m] = r
                times.setdefault(m, []).append(r["epoch_s"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"plot_affine_fmnist: cannot read {args.jsonl}: {e}")
    if not last:
        sys.exit(f"plot_affine_fmnist: no results in {args.jsonl}")
    models = [m for m in ORDER if m in last] + sorted(m for m in last if m not in ORDER)
    fig, (ax, axt) = plt.subplots(1, 2, figsize=(9.0, 3.4), gridspec_kw={"width_ratios": [2.2, 1]})
    w = 0.38
    for i, m in enumerate(models):
        r = last[m]
        ax.bar(i - w / 2, r["clean"], w, color="C0", label="clean test" if i == 0 else None)
        ax.bar(i + w / 2, r["affine"], w, color="C1", label="affine test" if i == 0 else None)
        ax.text(i, max(r["clean"], r["affine"]) + 0.02, f"-{100 * (r['clean'] - r['affine']):.1f} pts",
                ha="center", fontsize=8)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([f"{m}\n{last[m]['params'] / 1000:.1f}k params" for m in models], fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.axhline(0.1, color="0.5", lw=0.8, ls="--")  # chance
    ax.legend(loc="upper right", fontsize=8)
    r0 = last[models[0]]
    ax.set_title(f"Fashion-MNIST on a 40x40 canvas: {r0['train_images']} training images, "
                 f"{r0['epoch']} epochs; {r0['test_images']} test images", fontsize=9)
    med = [sorted(times[m])[len(times[m]) // 2] for m in models]
    axt.barh(range(len(models)), med, color="C2")
    axt.set_yticks(range(len(models)))
    axt.set_yticklabels(models, fontsize=8)
    axt.set_xscale("log")
    axt.set_xlabel("s / epoch (shared 2 cores)")
    fig.tight_layout()
    out = args.out or os.path.splitext(args.jsonl)[0] + ".png"
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
