"""Run a function on several CPU processes joined in a gloo process group (what the context-parallel tests
need): run_ranks(world, fn, *args) spawns `world` processes, each calling fn(rank, world, *args) after
init_process_group; an exception on any rank fails the caller with that rank's traceback. Collectives time out
after TIMEOUT_S, so a rank left waiting fails instead of hanging the suite."""
from __future__ import annotations

import datetime
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 60


def _entry(rank: int, world: int, folder: str, fn, args) -> None:
    progress = open(os.path.join(folder, f"rank{rank}.log"), "a", buffering=1)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(folder, 'rendezvous')}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    progress.write("joined\n")
    try:
        fn(rank, world, *args)
        progress.write("returned\n")
    finally:
        dist.destroy_process_group()
        progress.write("left\n")
    # Done: leave without the interpreter's teardown. A C++ static destructor there aborted ranks that had
    # passed ("terminate called without an active exception", about one run in three with a fresh extension
    # cache, on CPU machines with torch 2.13 and 2.14), which failed the test after every check had passed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(world: int, fn, *args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            mp.spawn(_entry, args=(world, tmp, fn, args), nprocs=world, join=True)
        except mp.ProcessExitedException as exc:  # a rank killed by a signal: say how far each rank got
            reached = {r: open(os.path.join(tmp, f"rank{r}.log")).read().split() if os.path.exists(
                os.path.join(tmp, f"rank{r}.log")) else [] for r in range(world)}
            raise AssertionError(f"{exc}; each rank's progress: {reached}") from exc


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
