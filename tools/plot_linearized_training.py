#!/usr/bin/python3
"""Plots examples/linearized_training's result (Lee et al. 2019): three panels,
(a) train loss of the width-w network and of its linearization, (b) the relative test-output
difference |f - f_lin| / |f| (max over checkpoints) against width, log-log, with its slope and a
width^-1/2 guide, (c) the infinite-width predicted mean of three test outputs against training
time (lines) and the trained ensemble's mean (dots; bars: the ensemble mean's standard error
predicted by the NTK-GP covariance; crosses: the ensemble mean with each network's own linear
prediction as a control variate, which removes the random initial outputs). With --also, a second run (e.g. the Erf network) is drawn
in panels (a) and (b) next to the first.

    plot_linearized_training.py run/linearized_training/linearized_training.json
        [--also run/linearized_training_erf/linearized_training.json]
        [-o docs/figures/linearized_training.png]
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


def load(path):
    try:
        with open(path) as f:
            d = json.load(f)
        for key in ("loss_net", "loss_lin", "widths", "sup_rel", "slope", "width", "train"):
            d[key]
        return d
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"plot_linearized_training: cannot read {path}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--also", default=None, help="a second run drawn in panels (a) and (b)")
    ap.add_argument("-o", "--out", default=None)
    args = ap.parse_args()
    d = load(args.json)
    runs = [d] + ([load(args.also)] if args.also else [])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))

    ax = axes[0]
    for k, r in enumerate(runs):
        name = {"relu": "ReLU", "erf": "Erf"}.get(r.get("activation", "relu"), r.get("activation"))
        steps = list(range(len(r["loss_net"])))
        ax.plot(steps, r["loss_net"], color=f"C{2 * k}", label=f"{name} network (width {r['width']})")
        ax.plot(steps, r["loss_lin"], "--", color=f"C{2 * k + 1}", label=f"{name} linearization")
    ax.set_yscale("log")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("train MSE")
    ax.set_title(f"(a) same SGD, {d['train']} Fashion-MNIST images")
    ax.legend()

    ax = axes[1]
    for k, r in enumerate(runs):
        name = {"relu": "ReLU", "erf": "Erf"}.get(r.get("activation", "relu"), r.get("activation"))
        widths, sup_rel = r["widths"], r["sup_rel"]
        ax.plot(widths, sup_rel, "o-", color=f"C{2 * k}", label=f"{name}: slope {r['slope']:.2f}")
        lx = sum(math.log(x) for x in widths) / len(widths)
        ly = sum(math.log(y) for y in sup_rel) / len(sup_rel)
        ax.plot(widths, [math.exp(ly - 0.5 * (math.log(x) - lx)) for x in widths], "--", color=f"C{2 * k}",
                alpha=0.5, linewidth=1, label="width$^{-1/2}$" if k == 0 else None)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel("max$_t$ |f - f$_{lin}$| / |f| on test")
    ax.set_title("(b) network vs linearization")
    ax.legend()

    ax = axes[2]
    grid = d["grid"]
    cps = d["checkpoints"]
    sds = d.get("ens_sd", [[0.0] * len(cps)] * 3)
    for k, (curve, pts, sd) in enumerate(zip(d["curves"], d["ens_points"], sds)):
        c = d["coords"][k]
        ax.plot(grid, curve, color=f"C{k}", label=f"test image {c // 10}, class {c % 10}")
        keep = [i for i, t in enumerate(cps) if t > 0]  # t = 0 has no place on a log axis
        ax.errorbar([cps[i] for i in keep], [pts[i] for i in keep], yerr=[sd[i] for i in keep], fmt="o",
                    color=f"C{k}", markersize=4, capsize=2, linewidth=0.8)
        if "cv_points" in d:
            cv = d["cv_points"][k]
            ax.plot([cps[i] for i in keep], [cv[i] for i in keep], "x", color=f"C{k}", markersize=5)
    ax.plot([], [], "o", color="gray", markersize=4, label="nets' mean (bars: s.e.)")
    if "cv_points" in d:
        ax.plot([], [], "x", color="gray", markersize=5, label="control-variate mean")
    ax.set_xscale("log")
    ax.set_xlabel("SGD step (= time t)")
    ax.set_ylabel("output")
    name = {"relu": "ReLU", "erf": "Erf"}.get(d.get("activation", "relu"), d.get("activation"))
    ax.set_title(f"(c) {name}: analytic prediction vs mean of {d['seeds']} nets (width {d['ens_width']})")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.45 * (hi - lo))  # room for the legend above the data
    ax.legend(loc="upper left", ncol=2, fontsize="small")
    fig.tight_layout()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.json)), "linearized_training.png")
    fig.savefig(out, dpi=150)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
