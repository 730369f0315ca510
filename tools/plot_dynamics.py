#!/usr/bin/python3
"""Render training dynamics recorded by kern::tools::Tracker (JSON lines) as PNGs.

    python3 tools/plot_dynamics.py run/lr0.02.jsonl run/lr0.04.jsonl -o run/plots

Several files are overlaid (one colour per run, labelled by the records' "run" field or the
file name). Written, when the data is there:
  sharpness.png       sharpness vs step, with 2/lr dashed in the same colour (the edge of
                      stability of gradient descent), and sharpness * lr / 2 below it
  loss.png            training loss and probe loss (log scale when positive)
  ntk_rel_change.png  scalar NTK series: relative change, alignment, ... (keys with "ntk")
  ntk_spectrum.png    list-valued NTK series (eigenvalues over time), one panel per run
  <key>.png           any other list-valued series (e.g. hessian_top_k)
  metrics.png         every other numeric series, one small panel each

With --figure PATH it writes instead ONE figure for the experiment (what the examples commit):
one column of panels per group of runs (the files' directories, e.g. mup/ and ntk/: the
parameterizations side by side), rows (each sharing its y-axis across the columns):
  sharpness and its threshold (dashed; 2/lr, or Adam's 38/lr for the preconditioned
  sharpness), log axis when the values span more than a factor 10;
  sharpness / threshold (1 = edge of stability), points above --clip drawn at the clip line;
  the training loss (log axis); the relative NTK change when recorded.
One legend for the figure, one entry per run.
Lines that are not valid JSON (a run still being written) are skipped with a warning.
Needs matplotlib (Debian: python3-matplotlib).
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

# Keys that are bookkeeping, not dynamics.
SKIP = {"step", "run", "lr", "two_over_lr", "wall_s", "overhead_total_s"}
LOSS_KEYS = ["loss", "probe_loss"]
SHARPNESS_KEYS = {"sharpness", "sharpness_x_lr_over_2", "preconditioned_sharpness", "preconditioned_threshold",
                  "preconditioned_sharpness_ratio"}
SKIP |= {"overhead_share", "overhead_warning"}
# Directory names of runs -> panel titles.
GROUP_TITLES = {"mup": "muP", "ntk": "NTK parameterization", "sp": "standard parameterization",
                "depth_mup": "depth-muP", "none": "no depth scaling"}


def load(path):
    records, bad = [], 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict) and "step" in rec:
                records.append(rec)
    if bad:
        print(f"plot_dynamics: {path}: skipped {bad} unreadable line(s)", file=sys.stderr)
    label = next((r["run"] for r in records if "run" in r), None)
    if label is None:
        label = os.path.splitext(os.path.basename(path))[0]
    return label, records


def num(v):
    """A float for a JSON number, NaN for null or anything else."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def series(records, key):
    pts = [(r["step"], num(r[key])) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def is_list_key(runs, key):
    return any(isinstance(r.get(key), list) for _, recs in runs for r in recs)


def save(fig, out_dir, name, written):
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)


def positive(values):
    finite = [v for v in values if not math.isnan(v)]
    return bool(finite) and min(finite) > 0


def plot_sharpness(runs, colors, out_dir, written, ylabel=None):
    if not any("sharpness" in r for _, recs in runs for r in recs):
        return
    has_ratio = any("sharpness_x_lr_over_2" in r for _, recs in runs for r in recs)
    fig, axes = plt.subplots(2 if has_ratio else 1, 1, figsize=(8, 7 if has_ratio else 4.5), squeeze=False,
                             sharex=True)
    ax = axes[0][0]
    for (label, recs), c in zip(runs, colors):
        x, y = series(recs, "sharpness")
        ax.plot(x, y, "o-", color=c, ms=3, label=f"{label}: sharpness")
        x2, y2 = series(recs, "two_over_lr")
        if x2:
            ax.plot(x2, y2, "--", color=c, lw=1.2, label=f"{label}: 2/lr")
    ax.set_ylabel(ylabel or r"sharpness $\lambda_{max}(H)$")
    ax.set_title("Sharpness vs 2/lr")
    ax.legend(fontsize=8)
    if has_ratio:
        ax = axes[1][0]
        for (label, recs), c in zip(runs, colors):
            x, y = series(recs, "sharpness_x_lr_over_2")
            ax.plot(x, y, "o-", color=c, ms=3, label=label)
        ax.axhline(1.0, color="k", ls="--", lw=1)
        ax.set_ylabel("sharpness / (2/lr)")
        ax.legend(fontsize=8)
    axes[-1][0].set_xlabel("step")
    save(fig, out_dir, "sharpness.png", written)


def plot_loss(runs, colors, out_dir, written):
    keys = [k for k in LOSS_KEYS if any(k in r for _, recs in runs for r in recs)]
    if not keys:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    all_y = []
    for (label, recs), c in zip(runs, colors):
        for k, style in zip(keys, ["-", ":"]):
            x, y = series(recs, k)
            if x:
                ax.plot(x, y, style, color=c, label=f"{label}: {k}")
                all_y += y
    if positive(all_y):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.legend(fontsize=8)
    save(fig, out_dir, "loss.png", written)


def plot_scalars(runs, colors, keys, title, out_dir, name, written):
    if not keys:
        return
    n = len(keys)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for i, key in enumerate(keys):
        ax = axes[i // cols][i % cols]
        ys = []
        for (label, recs), c in zip(runs, colors):
            x, y = series(recs, key)
            if x:
                ax.plot(x, y, "o-", ms=2, color=c, label=label)
                ys += y
        if positive(ys) and max(ys) / min(v for v in ys if not math.isnan(v)) > 100:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0 and len(runs) > 1:
            ax.legend(fontsize=7)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(title)
    save(fig, out_dir, name, written)


def plot_spectra(runs, key_list, title, out_dir, name, written):
    """One panel per (run, key): every entry of a list-valued series over time."""
    panels = [(label, recs, key) for label, recs in runs for key in key_list
              if any(isinstance(r.get(key), list) for r in recs)]
    if not panels:
        return
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
    for i, (label, recs, key) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        pts = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), list)]
        width = max(len(v) for _, v in pts)
        cmap = plt.get_cmap("viridis")
        for j in range(width):
            x = [s for s, v in pts if j < len(v)]
            y = [num(v[j]) for s, v in pts if j < len(v)]
            ax.plot(x, y, "-", lw=1, color=cmap(j / max(1, width - 1)))
        ys = [num(e) for _, v in pts for e in v]
        if positive(ys):
            ax.set_yscale("log")
        ax.set_title(f"{label}: {key} ({width} values)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(title)
    save(fig, out_dir, name, written)


# ---- one figure per experiment (--figure) ------------------------------------------------

def sharpness_keys(runs):
    """(sharpness key, threshold key, default y label) of the recorded sharpness."""
    if any("preconditioned_sharpness" in r for _, _, recs in runs for r in recs):
        return "preconditioned_sharpness", "preconditioned_threshold", r"preconditioned sharpness $\lambda_{max}(P^{-1}H)$"
    return "sharpness", "two_over_lr", r"sharpness $\lambda_{max}(H)$"


def spans_decades(values, factor=10.0):
    v = [x for x in values if math.isfinite(x) and x > 0]
    return len(v) > 1 and max(v) / min(v) > factor and all(math.isfinite(x) and x > 0 for x in values
                                                              if not math.isnan(x))


def natural(text):
    """Sort key: "w=64" before "w=128"."""
    import re
    return [(0, float(t), "") if re.fullmatch(r"[0-9.eE+-]+", t) and t not in "+-." else (1, 0.0, t)
            for t in re.split(r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)", text) if t]


def plot_figure(runs, path, title, sharpness_label, clip, threshold_name):
    """runs: [(group, label, records)]. One column per group, rows: sharpness with its threshold,
    their ratio (clipped), loss, NTK change (when present)."""
    groups = list(dict.fromkeys(g for g, _, _ in runs))
    skey, tkey, default_label = sharpness_keys(runs)
    has = lambda k: any(k in r for _, _, recs in runs for r in recs)  # noqa: E731
    rows = [r for r, ok in [("sharpness", has(skey)), ("ratio", has(skey) and has(tkey)),
                            ("loss", has("loss") or has("probe_loss")), ("ntk", has("ntk_rel_change"))] if ok]
    if not rows:
        print("plot_dynamics: nothing to draw in --figure", file=sys.stderr)
        return None
    fig, axes = plt.subplots(len(rows), len(groups), figsize=(4.6 * len(groups) + 1.6, 2.5 * len(rows) + 0.6),
                             squeeze=False, sharex="col", sharey="row")
    # One colour per run label (group prefix removed), the same in every column.
    def short(group, label):
        return label[len(group) + 1:] if label.startswith(group + " ") else label
    names = sorted(dict.fromkeys(short(g, l) for g, l, _ in runs), key=natural)
    cmap = plt.get_cmap("viridis", max(len(names), 2)) if len(names) > 4 else None
    color = {n: (cmap(i) if cmap else f"C{i}") for i, n in enumerate(names)}
    values = {row: [] for row in rows}
    clipped_any = False
    for col, group in enumerate(groups):
        for g, label, recs in runs:
            if g != group:
                continue
            c = color[short(g, label)]
            for row_i, row in enumerate(rows):
                ax = axes[row_i][col]
                if row == "sharpness":
                    x, y = series(recs, skey)
                    cap = {r["step"]: clip * num(r[tkey]) for r in recs if tkey in r and num(r[tkey]) > 0}
                    over = [(xi, cap[xi]) for xi, v in zip(x, y) if xi in cap and v > cap[xi]]
                    y = [math.nan if (xi in cap and v > cap[xi]) else v for xi, v in zip(x, y)]
                    ax.plot(x, y, "-", color=c, label=short(g, label))
                    if over:
                        clipped_any = True
                        ax.plot([o[0] for o in over], [o[1] for o in over], "^", color=c, ms=4)
                    xt, yt = series(recs, tkey)
                    if xt:
                        ax.plot(xt, yt, "--", color=c, lw=1.0)
                    values[row] += y + yt + [o[1] for o in over]
                elif row == "ratio":
                    pts = [(r["step"], num(r[skey]) / num(r[tkey])) for r in recs
                           if skey in r and tkey in r and num(r[tkey]) > 0]
                    x = [p[0] for p in pts]
                    y = [p[1] for p in pts]
                    inside = [v if (math.isnan(v) or v <= clip) else math.nan for v in y]
                    ax.plot(x, inside, "-", color=c)
                    over = [(xi, clip) for xi, v in zip(x, y) if not math.isnan(v) and v > clip]
                    if over:
                        clipped_any = True
                        ax.plot([o[0] for o in over], [o[1] for o in over], "^", color=c, ms=4, clip_on=False)
                    values[row] += [min(v, clip) for v in y if not math.isnan(v)]
                elif row == "loss":
                    k = "loss" if has("loss") else "probe_loss"
                    x, y = series(recs, k)
                    ax.plot(x, y, "-", color=c)
                    values[row] += y
                elif row == "ntk":
                    x, y = series(recs, "ntk_rel_change")
                    ax.plot(x[1:], y[1:], "-", color=c)  # 0 at step 0 by definition
                    values[row] += y[1:]
        axes[0][col].set_title(GROUP_TITLES.get(group, group) if len(groups) > 1 else "")
        axes[-1][col].set_xlabel("step")
    ylabels = {"sharpness": sharpness_label or default_label,
               "ratio": f"{'preconditioned sharpness' if skey.startswith('preconditioned') else 'sharpness'}"
                        f" / ({threshold_name})",
               "loss": "training loss", "ntk": r"$\|K_t - K_0\|_F / \|K_0\|_F$"}
    for row_i, row in enumerate(rows):
        ax = axes[row_i][0]
        ax.set_ylabel(ylabels[row])
        finite = [v for v in values[row] if math.isfinite(v)]
        if row in ("sharpness", "loss", "ntk") and spans_decades(finite):
            ax.set_yscale("log")
            # Label some minor ticks when the axis spans few decades (else one label or none).
            from matplotlib.ticker import LogFormatterSciNotation
            ax.yaxis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(2.5, 0.8)))
        if row == "ratio":
            for col in range(len(groups)):
                axes[row_i][col].axhline(1.0, color="0.3", ls=":", lw=1)
            if finite:
                ax.set_ylim(min(0.0, min(finite)), max(1.15, max(finite) * 1.05))
    handles, labels = [], []
    for ax in axes[0]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:  # no repeated entries
                handles.append(h)
                labels.append(l)
    order = sorted(range(len(labels)), key=lambda i: natural(labels[i]))
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    from matplotlib.lines import Line2D
    handles += [Line2D([], [], color="0.3", ls="--", lw=1.0), Line2D([], [], color="0.3", ls=":", lw=1.0)]
    labels += [f"{threshold_name} (same colour)", "edge of stability (ratio 1)"]
    if clipped_any:
        handles.append(Line2D([], [], color="0.3", marker="^", ls=""))
        labels.append(f"above {clip:g} x {threshold_name}: clipped")
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="JSON-lines files written by kern::tools::Tracker")
    ap.add_argument("-o", "--out", help="output directory (default: the first file's directory)")
    ap.add_argument("--figure", help="write one multi-panel figure for the experiment to this PNG instead")
    ap.add_argument("--title", help="the figure's title (--figure)")
    ap.add_argument("--sharpness-label", help="y label of the sharpness, e.g. "
                    "'preconditioned sharpness' when lr multipliers rescale it")
    ap.add_argument("--threshold-name", help="name of the threshold (--figure; default 2/lr, or 38/lr for Adam)")
    ap.add_argument("--clip", type=float, default=3.0, help="sharpness / threshold above this is clipped (--figure)")
    args = ap.parse_args(argv)
    runs, grouped = [], []
    for path in args.files:
        label, recs = load(path)
        if not recs:
            print(f"plot_dynamics: {path}: no records", file=sys.stderr)
            continue
        runs.append((label, recs))
        grouped.append((os.path.basename(os.path.dirname(os.path.abspath(path))), label, recs))
    if not runs:
        print("plot_dynamics: nothing to plot", file=sys.stderr)
        return 1
    if args.figure:
        os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
        name = args.threshold_name
        if name is None:
            thr = [num(r["preconditioned_threshold"]) * num(r["lr"]) for _, _, recs in grouped for r in recs
                   if "preconditioned_threshold" in r and "lr" in r]
            name = f"{thr[0]:.3g}/lr" if thr and sharpness_keys(grouped)[0] == "preconditioned_sharpness" else "2/lr"
        written = plot_figure(grouped, args.figure, args.title, args.sharpness_label, args.clip, name)
        if written:
            print(written)
        return 0 if written else 1
    out_dir = args.out or os.path.dirname(os.path.abspath(args.files[0]))
    os.makedirs(out_dir, exist_ok=True)
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(runs))]

    keys = []
    for _, recs in runs:
        for r in recs:
            for k in r:
                if k not in keys:
                    keys.append(k)
    list_keys = [k for k in keys if is_list_key(runs, k)]
    scalar_keys = [k for k in keys if k not in list_keys and k not in SKIP and not k.startswith("time.")
                   and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                           for _, recs in runs for r in recs)]
    ntk_scalars = [k for k in scalar_keys if "ntk" in k.lower()]
    ntk_lists = [k for k in list_keys if "ntk" in k.lower()]
    other_lists = [k for k in list_keys if k not in ntk_lists]
    rest = [k for k in scalar_keys if k not in ntk_scalars and k not in LOSS_KEYS and k not in SHARPNESS_KEYS]

    written = []
    plot_sharpness(runs, colors, out_dir, written, args.sharpness_label)
    plot_loss(runs, colors, out_dir, written)
    plot_scalars(runs, colors, ntk_scalars, "NTK", out_dir, "ntk_rel_change.png", written)
    plot_spectra(runs, ntk_lists, "NTK spectrum over training", out_dir, "ntk_spectrum.png", written)
    for k in other_lists:
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in k)
        plot_spectra(runs, [k], k, out_dir, f"{safe}.png", written)
    plot_scalars(runs, colors, rest, "Other recorded series", out_dir, "metrics.png", written)
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
