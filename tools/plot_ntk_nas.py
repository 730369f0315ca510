#!/usr/bin/python3
"""Plots examples/ntk_nas's result: each NTK metric (columns) at init and after the early
steps (rows) against the final test accuracy, one point per architecture, with Kendall's
tau-b and its p-value in each panel's title.

    plot_ntk_nas.py run/ntk_nas/ntk_nas.json [-o ntk_nas.png]
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# kern's shared style (tools/kern.mplstyle, installed next to this script).
plt.style.use(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kern.mplstyle"))

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*"]
METRICS = [("lga", "label-gradient alignment", False),
           ("condition_number", "condition number", True),
           ("trace", "trace", True),
           ("effective_rank", "effective rank", False)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("-o", "--out", default=None)
    args = ap.parse_args()
    try:
        with open(args.json) as f:
            data = json.load(f)
        archs = data["architectures"]
        kendall = {(k["metric"], k["when"]): k for k in data["kendall"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"plot_ntk_nas: cannot read {args.json}: {e}")
    whens = [("init", "at init"), ("early", f"after {data.get('early_steps', '?')} steps")]
    fig, axes = plt.subplots(len(whens), len(METRICS), figsize=(3.2 * len(METRICS), 3.0 * len(whens)),
                             sharey=True, squeeze=False)
    acc = [a["test_accuracy"] for a in archs]
    for r, (when, when_label) in enumerate(whens):
        for c, (key, label, log) in enumerate(METRICS):
            ax = axes[r][c]
            xs = [a[when][key] for a in archs]
            pts = [(x, y, a["name"]) for x, y, a in zip(xs, acc, archs)
                   if x is not None and y is not None and math.isfinite(x) and (not log or x > 0)]
            # the same architecture keeps its colour and marker in every panel: index by name
            order = {a["name"]: i for i, a in enumerate(archs)}
            for x, y, name in pts:
                i = order[name]
                ax.scatter([x], [y], s=26, color=f"C{i % 10}", marker=MARKERS[i % len(MARKERS)], zorder=3,
                           label=name)
            if log:
                ax.set_xscale("log")
            k = kendall.get((key, when), {})
            tau, p = k.get("tau"), k.get("p")
            title = f"{label} {when_label}"
            if tau is not None and p is not None:
                title += f"\n$\\tau$ = {tau:+.2f}, p = {p:.3f}"
            ax.set_title(title, fontsize=8)
            ax.set_xlabel(label)
            if c == 0:
                ax.set_ylabel("final test accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"NTK metrics of {len(archs)} architectures vs trained accuracy "
                 f"(Fashion-MNIST, {data.get('probes', '?')} probes)", fontsize=10)
    fig.tight_layout()
    out = args.out or os.path.splitext(args.json)[0] + ".png"
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
