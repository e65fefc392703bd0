"""Run a function on several CPU processes joined in a gloo process group (what the context-parallel tests
need): run_ranks(world, fn, *args) spawns `world` processes, each calling fn(rank, world, *args) after
init_process_group; an exception on any rank fails the caller with that rank's traceback. Collectives time out
after TIMEOUT_S, so a rank left waiting fails instead of hanging the suite."""
from __future__ import annotations

import datetime
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 60


def _entry(rank: int, world: int, init_file: str, fn, args) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, fn, *args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_entry, args=(world, os.path.join(tmp, "rendezvous"), fn, args), nprocs=world, join=True)


def bounds(length: int, world: int, rank: int):
    """(start, end) of rank's shard of `length` positions: uneven shards (the last ranks get one more)."""
    base, extra = divmod(length, world)
    start = rank * base + max(0, rank - (world - extra))
    return start, start + base + (1 if rank >= world - extra else 0)


def summed(t: torch.Tensor) -> torch.Tensor:
    """t summed over the ranks (the single-process gradient of a replicated input)."""
    t = t.clone()
    dist.all_reduce(t)
    return t
