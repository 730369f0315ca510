"""ddp_mlp_train: mlp_train's step under DistributedDataParallel over gloo, 2 spawned
processes on one machine. The rank function is module-level so that spawned workers can
import it (peer.ddp._ddp_worker)."""

import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .classic import build_mlp_train
from .common import Bench, mlp


# ----------------------------------------------------------------------------------------
# ddp_mlp_train: mlp_train over 2 processes x `threads` threads, DDP over gloo
# ----------------------------------------------------------------------------------------

DDP_RANKS = 2


def _ddp_worker(rank, world, port, state, x, labels, warmup, iters, threads, queue):
    """One rank: DDP(mlp) over gloo on 127.0.0.1, training on rows
    [rank*B/world, (rank+1)*B/world) of the global batch. Every step starts after a barrier
    (untimed); rank 0 reports its step times, every rank its peak RSS."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    model = mlp([784, 1024, 1024, 10], nn.ReLU)
    model.load_state_dict(state)
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    b = x.shape[0] // world
    xs, ys = x[rank * b:(rank + 1) * b].contiguous(), labels[rank * b:(rank + 1) * b].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(xs), ys).backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        dist.barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    queue.put((rank, times if rank == 0 else None,
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    dist.barrier()
    dist.destroy_process_group()


def build_ddp_mlp_train():
    base = build_mlp_train()  # same seed: the same model, x, labels and reference as mlp_train

    def run(warmup, iters, threads):
        import socket
        import torch.multiprocessing as mp
        # the initial parameters, as build_mlp_train drew them (reference() deep-copies)
        entries = {k: t.detach() for k, t, _ in base.reference()}
        state = {k[len("param."):]: t for k, t in entries.items() if k.startswith("param.")}
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_ddp_worker,
                             args=(r, DDP_RANKS, port, state, entries["x"], entries["labels"],
                                   warmup, iters, threads, queue))
                 for r in range(DDP_RANKS)]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"ddp_mlp_train: a rank exited with {p.exitcode}")
        times = next(t for r, t, _ in results if r == 0)
        return times, max(rss for _, _, rss in results)

    return Bench(
        definition="ddp_mlp_train: mlp_train's model, batch and SGD step (its definition "
                   "applies) over 2 processes x 1 thread, DistributedDataParallel over gloo "
                   "(PyTorch) / MPI (kern) on one machine: rank r trains on rows "
                   "[128 r, 128 r + 128) of x, gradients averaged over ranks, so one step "
                   "equals mlp_train's step on the global batch of 256 (the reference, "
                   "param_after.*). Time per step on rank 0, each step after an untimed "
                   "barrier.",
        step=None, reference=base.reference, extras=base.extras, run=run)
