#!/usr/bin/python3
"""Plots the summary of examples/ntk_lazy_regime (relative NTK change across widths).

  plot_lazy.py run/ntk_lazy_regime/summary.json -o run/ntk_lazy_regime/lazy_regime.png

Three panels:
  (a) the relative NTK change ||K_T - K_0||_F / ||K_0||_F after training against width,
      log-log, one line per parameterization with its least-squares slope (dotted), and
      width^-1/2 and width^-1 references through the NTK parameterization's widest point;
  (b) the relative change over training (each run's JSON lines), colour = width,
      solid = NTK parameterization, dashed = muP;
  (c) the training loss over training, same styles.
Needs matplotlib (Debian: python3-matplotlib).
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

STYLE = {"ntk": ("-", "o", "tab:blue", "NTK param."), "mup": ("--", "s", "tab:red", "muP")}


def read_jsonl(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summary")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    with open(a.summary) as f:
        s = json.load(f)
    root = os.path.dirname(os.path.abspath(a.summary))
    runs, slopes, cfg = s["runs"], s.get("slopes", {}), s.get("config", {})
    params = list(dict.fromkeys(r["param"] for r in runs))
    widths = sorted({r["width"] for r in runs})
    cmap = plt.get_cmap("viridis", max(len(widths), 2))
    color = {w: cmap(i) for i, w in enumerate(widths)}

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    for p in params:
        ls, mk, c, name = STYLE.get(p, ("-", "o", "k", p))
        pts = sorted((r["width"], r["ntk_rel_change"]) for r in runs
                     if r["param"] == p and finite(r["ntk_rel_change"]) and r["ntk_rel_change"] > 0)
        if not pts:
            continue
        sl = slopes.get(p, {}).get("all_widths")
        label = f"{name}: slope {sl:+.2f}" if finite(sl) else name
        ax.plot([q[0] for q in pts], [q[1] for q in pts], ls=ls, marker=mk, color=c, label=label)
        if finite(sl) and len(pts) >= 2:  # the least-squares line
            lx = [math.log(q[0]) for q in pts]
            ly = [math.log(q[1]) for q in pts]
            b = sum(ly) / len(ly) - sl * sum(lx) / len(lx)
            ax.plot([pts[0][0], pts[-1][0]], [math.exp(b + sl * lx[0]), math.exp(b + sl * lx[-1])], ":", color=c,
                    lw=1)
        if p == "ntk":
            anchor = pts[-1]  # the widest point: closest to the asymptotic rate
            for power, ls2, lab in [(-0.5, "-.", "width$^{-1/2}$"), (-1.0, (0, (1, 3)), "width$^{-1}$")]:
                ax.plot([pts[0][0], pts[-1][0]], [anchor[1] * (pts[0][0] / anchor[0]) ** power,
                                                  anchor[1] * (pts[-1][0] / anchor[0]) ** power],
                        color="gray", lw=1, ls=ls2, label=lab)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel(r"$\|K_T - K_0\|_F / \|K_0\|_F$")
    ax.set_title(f"(a) relative NTK change after {cfg.get('steps', '?')} steps")
    ax.legend(fontsize=8)

    for ax, key, title in [(axes[1], "ntk_rel_change", "(b) relative NTK change during training"),
                           (axes[2], "loss", "(c) training loss")]:
        ys = []
        for r in runs:
            path = os.path.join(root, r["file"])
            if not os.path.exists(path):
                continue
            pts = [(q["step"], q[key]) for q in read_jsonl(path) if finite(q.get(key))]
            if key == "ntk_rel_change":
                pts = [q for q in pts if q[0] > 0]  # 0 at step 0 by definition
            if not pts:
                continue
            ls = STYLE.get(r["param"], ("-",))[0]
            # One legend entry per width, in panel (b) only: (c) uses the same colours.
            lab = f"width {r['width']}" if r["param"] == params[0] and key == "ntk_rel_change" else None
            ax.plot([q[0] for q in pts], [q[1] for q in pts], ls=ls, color=color[r["width"]], lw=1.3,
                    marker="o" if key == "ntk_rel_change" else None, ms=3, label=lab)
            ys += [q[1] for q in pts]
        if ys and min(ys) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        if key == "ntk_rel_change":
            from matplotlib.lines import Line2D
            h, l = ax.get_legend_handles_labels()
            for p in params:
                ls, _, _, name = STYLE.get(p, ("-", "o", "k", p))
                h.append(Line2D([], [], color="0.3", ls=ls))
                l.append(name)
            ax.legend(h, l, fontsize=7, ncol=2)
    kernel = cfg.get("kernel", "full")
    fig.suptitle(f"Lazy regime: tanh MLP, {cfg.get('samples', '?')} Fashion-MNIST images, full-batch GD; "
                 f"{kernel} empirical NTK on {cfg.get('probe', '?')} probe images", fontsize=11)
    fig.tight_layout()
    fig.savefig(a.out)
    print(a.out)


if __name__ == "__main__":
    main()
