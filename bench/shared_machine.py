#!/usr/bin/python3
"""kern on a shared machine: a workload's time alone and next to busy processes.

    /usr/bin/python3 bench/shared_machine.py --probe build/bench/kern_load_probe \
        [--workloads mlp_train,convnext_forward] [--busy 2] [--repeats 5] [--iters 10] \
        [--config 'label=ENV=VALUE,ENV2=VALUE' ...]

For every configuration (an environment on top of the caller's), workload and load (idle,
then `--busy` processes that spin in a Python loop, started for the measurement and killed
afterwards), the probe runs `--repeats` times, each a fresh process timing `--iters` steps
after a warm-up; a run's time is its median step. Reported per cell: the median over runs,
with min and max, and the slowdown busy / idle (medians). The runs of one cell alternate
with the other cells' (round-robin) so a change in the machine's background load spreads
over all cells instead of biasing one.

Default configurations:
  kern      the caller's environment: kern's own defaults apply (README "Performance on a
            shared machine")
  libgomp   KERN_OMP_DEFAULTS=0: libgomp's own defaults (spin 300000 iterations, ~3 ms,
            before sleeping), i.e. kern before it set a wait policy
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BUSY_LOOP = "while True: pass"


def parse_config(text):
    label, _, rest = text.partition("=")
    env = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        env[k] = v
    return label, env


def run_probe(args, workload, env):
    cmd = [args.probe, "--workload", workload, "--threads", str(args.threads), "--iters", str(args.iters),
           "--warmup", str(args.warmup)]
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=args.timeout)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])["median_s"]


def start_busy(n):
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]


def stop_busy(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def measure(args, configs, workloads, busy):
    """{(config, workload): [run medians]} for one load."""
    res = {(c, w): [] for c, _ in configs for w in workloads}
    procs = start_busy(busy) if busy else []
    try:
        if procs:
            time.sleep(1.0)  # let the busy loops start
        for _ in range(args.repeats):
            for label, extra in configs:
                env = dict(os.environ)
                env.update(extra)
                for w in workloads:
                    res[(label, w)].append(run_probe(args, w, env))
    finally:
        stop_busy(procs)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", required=True)
    ap.add_argument("--workloads", default="mlp_train,convnext_forward")
    ap.add_argument("--busy", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--json", help="also write the raw run medians here")
    args = ap.parse_args()
    configs = [parse_config(c) for c in args.config] or [("kern", {}), ("libgomp", {"KERN_OMP_DEFAULTS": "0"})]
    workloads = args.workloads.split(",")
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    idle = measure(args, configs, workloads, 0)
    loaded = measure(args, configs, workloads, args.busy)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]
    print(f"{args.repeats} runs x {args.iters} steps per cell, {args.threads} threads, "
          f"{args.busy} busy processes; load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    print("| config | workload | idle s (min-max) | busy s (min-max) | slowdown |")
    print("|---|---|---|---|---|")
    out = []
    for label, extra in configs:
        for w in workloads:
            a, b = idle[(label, w)], loaded[(label, w)]
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"| {label} | {w} | {ma:.4f} ({min(a):.4f}-{max(a):.4f}) | {mb:.4f} ({min(b):.4f}-{max(b):.4f}) "
                  f"| {mb / ma:.2f}x |")
            out.append({"config": label, "env": extra, "workload": w, "idle": a, "busy": b,
                        "slowdown": mb / ma})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
