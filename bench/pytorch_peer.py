#!/usr/bin/python3
"""PyTorch peer for kern's benchmark suite (one workload per invocation).

Every workload is defined in ../shared/BENCHMARKS.md; this file is its PyTorch half:

    /usr/bin/python3 bench/pytorch_peer.py --workload ID --threads 2 --warmup 3 --iters 10 \
        --export DIR [--length L] [--export-only]

1. Builds the workload's inputs deterministically (torch.manual_seed(0)).
2. Unless DIR/ID.safetensors (longconv: DIR/longconv_train_L{L}.safetensors) already exists
   with the same workload parameters, writes it: every input the C++ side needs to reproduce
   the computation plus PyTorch's reference results, and in `__metadata__` the definition and
   a description of every tensor. This file is the contract with kern's bench binary, which
   reads its inputs from it and checks its results against it.
3. Times `warmup` + `iters` iterations (time.perf_counter) and prints exactly one JSON line
   on stdout: {"id", "median_s", "min_s", "max_s", "peak_rss_mb", extras...}. Logs go to
   stderr. With --export-only it exports (if needed) and prints {"id", "export", "written"}
   instead of timing, so the orchestrator's timed runs all do the same work.

Conventions of the exported files (same as ../shared/fixtures): float32 everywhere except
class labels and index permutations (int64); C-contiguous, PyTorch layouts (NCHW, Linear
weight [out, in], conv weight [C_out, C_in/groups, kH, kW]); scalars have shape [1];
module parameters are `param.<name>`, their gradients `grad.param.<name>`, the gradient of
an input `grad.<input>`. Norm weights and layer scales are drawn from U(0.5, 1.5) and norm
biases from N(0, 0.1) (instead of timm's 1 / 0 / 1e-6 inits) so that every path of a block
matters numerically in the check; timing does not depend on parameter values.

The workloads live in the package bench/peer/ (one module per family, see its __init__);
this file is the command line and the export step.
"""

import argparse
import json
import os
import resource
import statistics
import time
from collections import OrderedDict

import torch

from peer.common import SEED, SPEC_VERSION, log, read_safetensors_metadata, write_safetensors
from peer.registry import WORKLOADS, build


def export_path(export_dir, workload, length):
    name = f"longconv_train_L{length}" if workload == "longconv_train" else workload
    return os.path.join(export_dir, name + ".safetensors")


def result_id(workload, length):
    """The id in results.jsonl: longconv_train (L=4096) and longconv_train_<L> otherwise."""
    if workload == "longconv_train" and length != 4096:
        return f"longconv_train_{length}"
    return workload


def workload_params(workload, length):
    """What identifies an export: if any of it differs, the file is rewritten."""
    p = {"spec_version": SPEC_VERSION, "workload": workload, "seed": SEED}
    if workload == "longconv_train":
        p["length"] = length
    return json.dumps(p, sort_keys=True)


def export_if_needed(bench, workload, length, path):
    """Writes the workload's safetensors unless an identical one exists. Returns True if
    it wrote the file."""
    params = workload_params(workload, length)
    meta = read_safetensors_metadata(path)
    if meta is not None and meta.get("params") == params \
            and meta.get("definition") == bench.definition:
        log(f"{path}: up to date, reused")
        return False
    t0 = time.perf_counter()
    entries = bench.reference()
    tensors = OrderedDict((name, t) for name, t, _ in entries)
    metadata = {"workload": workload, "params": params, "definition": bench.definition,
                "generator": f"bench/pytorch_peer.py, torch {torch.__version__}",
                "conventions": "float32 (labels/permutations int64), C-contiguous, PyTorch "
                               "layouts, scalars shape [1]; param.<name> are module "
                               "parameters, grad.<t> = d loss / d <t>",
                "tensors": ",".join(tensors)}
    for name, _, desc in entries:
        metadata[f"tensor.{name}"] = desc
    write_safetensors(path, tensors, metadata)
    log(f"{path}: written ({len(tensors)} tensors, {time.perf_counter() - t0:.2f} s)")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", required=True, choices=WORKLOADS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--export", required=True, metavar="DIR",
                    help="directory of the <id>.safetensors inputs/references")
    ap.add_argument("--length", type=int, default=4096, help="longconv_train: L")
    ap.add_argument("--export-only", action="store_true",
                    help="write the export if needed, do not time")
    args = ap.parse_args()
    if args.iters < 1 or args.warmup < 0 or args.threads < 1 or args.length < 1:
        ap.error("need --iters >= 1, --warmup >= 0, --threads >= 1, --length >= 1")

    torch.set_num_threads(args.threads)
    rid = result_id(args.workload, args.length)
    path = export_path(args.export, args.workload, args.length)

    bench = build(args.workload, args.length)  # cheap: random tensors and modules
    written = export_if_needed(bench, args.workload, args.length, path)
    if args.export_only:
        print(json.dumps({"id": rid, "export": path, "written": written}), flush=True)
        return

    log(f"{rid}: {args.warmup} warm-up + {args.iters} timed iterations, "
        f"{torch.get_num_threads()} threads")
    if bench.run is not None:  # multi-process: the ranks time themselves
        times, peak_rss = bench.run(args.warmup, args.iters, args.threads)
    else:
        for _ in range(args.warmup):
            bench.step()
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            bench.step()
            times.append(time.perf_counter() - t0)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median = statistics.median(times)
    result = {"id": rid, "median_s": median, "min_s": min(times), "max_s": max(times),
              "peak_rss_mb": peak_rss, "threads": args.threads, "iters": args.iters}
    if args.workload == "longconv_train":
        result["length"] = args.length
    result.update(bench.extras(median))
    result.update(bench.after())  # untimed (fmnist accuracy)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
