#!/usr/bin/python3
"""Plots JSON lines written by kern's coordinate check and muP transfer example.

  plot_coord_check.py coord.jsonl -o coord.png [--title T]

Records with "kind": "coord" (tools::CoordCheckResult::write_jsonl): one row of panels per
label (e.g. SP, muP), one panel per step t, mean |x| of each module's output against width on
log-log axes, one line per module (verdicts marked in the legend).

Records with "kind": "transfer" (examples/mup_transfer): one panel per parameterization,
final training loss against learning rate (log x), one line per width, the optimum marked.
"""
import argparse
import json
import os
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# kern's shared style (tools/kern.mplstyle, installed next to this script).
plt.style.use(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kern.mplstyle"))


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_coord(records, out, title):
    """One row of panels per label, one panel per step. Up to 8 modules get a legend entry
    each; deeper models are coloured by module depth (a colour bar), with the model's own
    output (the logits, "(model)") drawn in red and every failing curve dashed."""
    coords = [r for r in records if r.get("kind") == "coord"]
    verdicts = {(r["label"], r["module"], r["t"]): r for r in records if r.get("kind") == "verdict"}
    labels = list(dict.fromkeys(r["label"] for r in coords))
    steps = sorted({r["t"] for r in coords})
    fig, axes = plt.subplots(len(labels), len(steps), figsize=(4.0 * len(steps) + 1.2, 3.4 * len(labels)),
                             squeeze=False)
    for i, label in enumerate(labels):
        rows = [r for r in coords if r["label"] == label]
        modules = list(dict.fromkeys(r["module"] for r in rows))
        few = len(modules) <= 8
        cmap = plt.get_cmap("viridis", max(len(modules), 2))
        named_output = False
        for j, t in enumerate(steps):
            ax = axes[i][j]
            nfail = 0
            for k, m in enumerate(modules):
                pts = sorted((r["width"], r["l1"]) for r in rows if r["module"] == m and r["t"] == t)
                pts = [(w, v) for w, v in pts if v > 0]
                if not pts:
                    continue
                v = verdicts.get((label, m, t))
                failed = v is not None and not v["pass"]
                nfail += failed
                output = m == "(model)"
                color = "tab:red" if output and not few else cmap(k)
                style = "--" if failed else "-"
                name = None
                if few:
                    typ = next(r["type"] for r in rows if r["module"] == m)
                    slope = "" if v is None else f" s={v['slope']:+.2f}"
                    name = f"{m} {typ}{slope}{' FAIL' if failed else ''}"
                elif output and not named_output:
                    name = "logits (model output)"
                    named_output = True
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=color,
                        ms=2.5, lw=1.8 if output else 1.0, label=name, zorder=3 if output else 2)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            head = f"{label}\n" if len(labels) > 1 else ""
            ax.set_title(f"{head}t = {t}: {nfail} of {len(modules)} outputs not flat", fontsize=9)
            ax.set_xlabel("width")
            if j == 0:
                ax.set_ylabel("mean |x| of the output")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6 if few else 7, loc="best")
        if not few:
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(modules) - 1))
            fig.colorbar(sm, ax=list(axes[i]), label="module (model order)", fraction=0.02, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=11, y=1.0 if len(labels) > 1 else 1.04)
    if len(modules) <= 8:
        fig.tight_layout()
    fig.savefig(out, bbox_inches="tight")


def plot_transfer(records, out, title):
    """One panel per parameterization (shared y), loss against lr per width, optima starred.
    Losses above the clip level (2.5, or 4 x the best loss when lower) are drawn as triangles
    on the top edge instead of stretching the axis; diverged runs (NaN/Inf) as crosses there."""
    rows = [r for r in records if r.get("kind") == "transfer"]
    params = list(dict.fromkeys(r["param"] for r in rows))
    fig, axes = plt.subplots(1, len(params), figsize=(4.8 * len(params) + 1.4, 3.8), squeeze=False,
                             sharey=True)
    widths = sorted({r["width"] for r in rows})
    cmap = plt.get_cmap("viridis", max(len(widths), 2))
    ys = [r["loss"] for r in rows if math.isfinite(r["loss"])]
    lo = min(ys) if ys else 0.0
    top = min(max(ys), 2.5, 4.0 * lo) if ys and lo > 0 else (min(max(ys), 2.5) if ys else 1.0)
    diverged = False
    clipped = False
    for i, p in enumerate(params):
        ax = axes[0][i]
        for w in widths:
            k = widths.index(w)
            pts = sorted((r["lr"], r["loss"]) for r in rows if r["param"] == p and r["width"] == w)
            finite = [(lr, v) for lr, v in pts if math.isfinite(v)]
            bad = [lr for lr, v in pts if not math.isfinite(v)]
            if bad:  # diverged (NaN/Inf): an x on the top edge
                diverged = True
                ax.plot(bad, [top] * len(bad), "x", color=cmap(widths.index(w)), ms=6, mew=1.5, clip_on=False)
            if not finite:
                continue
            inside = [(lr, v if v <= top else math.nan) for lr, v in finite]
            ax.plot([q[0] for q in inside], [q[1] for q in inside], "o-", color=cmap(k), ms=3, label=f"width {w}")
            over = [lr for lr, v in finite if v > top]
            if over:
                clipped = True
                ax.plot(over, [top] * len(over), "^", color=cmap(k), ms=5, clip_on=False)
            best = min(finite, key=lambda q: q[1])
            ax.plot([best[0]], [best[1]], "*", color=cmap(k), ms=11)
        ax.set_xscale("log", base=2)
        ax.set_title(p)
        ax.set_xlabel("learning rate")
        if i == 0:
            ax.set_ylabel("training loss")
    if ys:
        axes[0][0].set_ylim(lo - 0.05 * abs(lo), top + 0.02 * abs(top))
    handles, labels = [], []
    for ax in axes[0]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:  # one entry per width, not one per panel
                handles.append(h)
                labels.append(l)
    from matplotlib.lines import Line2D
    handles.append(Line2D([], [], color="0.3", marker="*", ls="", ms=9))
    labels.append("optimum")
    if clipped:
        handles.append(Line2D([], [], color="0.3", marker="^", ls=""))
        labels.append(f"loss > {top:.3g}: clipped")
    if diverged:
        handles.append(Line2D([], [], color="0.3", marker="x", ls="", mew=1.5))
        labels.append("diverged (NaN)")
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, bbox_inches="tight")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    records = read(a.jsonl)
    kinds = {r.get("kind") for r in records}
    if "transfer" in kinds:
        plot_transfer(records, a.out, a.title)
    elif "coord" in kinds:
        plot_coord(records, a.out, a.title)
    else:
        sys.exit(f"{a.jsonl}: no 'coord' or 'transfer' records")


if __name__ == "__main__":
    main()
