"""Benchmark cases, timing, and the printed table.

A case (benchmarks/cases/<op>.py: `cases(quick) -> list[Case]`) builds its inputs once on the device and
returns variants: one per backend of the registry (_dispatch.BACKENDS), the sequential "reference" where it is
affordable, and "peer:<package>" entries when --peers is given and the peer imports. Each variant is timed
forward, and forward+backward when it has inputs to differentiate.

GPU: triton.testing.do_bench medians; the bandwidth floor is the case's bytes over the copy bandwidth
measured in the same run. CPU: median of wall-clock repeats. TFLOP/s: the case's count of floating-point
operations (where it has one; its module says how it counts) over the time.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ssm_kernels import _dispatch


@dataclass
class Variant:
    fn: Callable[[], Any]  # runs the forward on the case's fixed inputs
    grad_inputs: Sequence[torch.Tensor] = ()  # leaves to differentiate for forward+backward


@dataclass
class Case:
    op: str
    name: str  # shapes and dtype, e.g. "B1 D1024 L2048 N16 fp32"
    make: Callable[[torch.device, bool], Dict[str, Variant]]  # (device, peers) -> {label: Variant}
    bytes_fwd: int = 0  # fewest bytes the forward must move (each input read once, each output written once)
    bytes_fwd_bwd: int = 0  # the same for forward+backward
    flops_fwd: int = 0  # the forward's floating-point operations as the case counts them (its docstring says how)
    flops_fwd_bwd: int = 0  # the same for forward+backward
    notes: str = ""
    device_types: Tuple[str, ...] = ("cpu", "cuda")  # where the case is worth running (GPU sizes: "cuda")
    dtype: Optional[torch.dtype] = None  # the dtype the op's dispatch sees (its main input's)
    dispatch_size: Optional[int] = None  # the size the op passes to _dispatch.select() (e.g. numel of x)


@dataclass
class Result:
    op: str
    case: str
    variant: str
    mode: str  # "fwd" or "fwd+bwd"
    ms: float
    gbps: Optional[float] = None
    floor_fraction: Optional[float] = None
    tflops: Optional[float] = None  # the case's flops per second, in 10^12
    peak_mem_mb: Optional[float] = None
    host_ms: Optional[float] = None  # host_ms(): the CPU's time per call when calls are issued back to back
    dtype: Optional[str] = None  # Case.dtype, e.g. "bfloat16"
    dispatch_size: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def _outputs(result) -> List[torch.Tensor]:
    items = result if isinstance(result, (tuple, list)) else (result,)
    return [t for t in items if isinstance(t, torch.Tensor) and t.requires_grad]


def forward_backward(variant: Variant) -> Callable[[], Any]:
    """A closure running forward then backward with fixed random cotangents (made on the first call)."""
    cotangents: List[torch.Tensor] = []

    def run():
        outs = _outputs(variant.fn())
        if not cotangents:
            cotangents.extend(torch.randn_like(o) for o in outs)
        return torch.autograd.grad(outs, list(variant.grad_inputs), cotangents, allow_unused=True)
    return run


def time_ms(fn: Callable[[], Any], device: torch.device, quick: bool) -> float:
    """Median time of one call in ms."""
    if device.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25 if quick else 100, rep=100 if quick else 500,
                                       return_mode="median")
    fn()  # warm-up
    times = []
    budget = 2.0 if quick else 10.0
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def wall_seconds(fn: Callable[[], Any], device: torch.device, repeats: int = 3) -> float:
    """Median wall time of whole synchronised calls after one warm-up call (compiles, CUDA-graph capture,
    caches): what a user waits for, host time included (do_bench would hide it)."""
    return wall_seconds_interleaved({"fn": fn}, device, repeats)["fn"]


def wall_seconds_interleaved(fns: Dict[str, Callable[[], Any]], device: torch.device,
                             repeats: int = 3) -> Dict[str, float]:
    """wall_seconds of several functions measured in turns (one call of each per round, after a warm-up call of
    each): host-bound calls on a shared machine drift over seconds, and taking turns gives every function the
    same conditions. {name: median seconds}."""
    for fn in fns.values():
        fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def host_ms(fn: Callable[[], Any], device: torch.device, calls: int = 200) -> float:
    """The host's time per call in ms: `calls` calls issued back to back without synchronising, after a warm-up.
    On a GPU, where it exceeds the kernels' time the call is host-bound: a loop of such calls takes this long
    per call, while do_bench's median hides part of it behind the cache flush it launches between calls."""
    for _ in range(10):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return elapsed / calls * 1e3


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> Optional[float]:
    """Peak memory one call allocates beyond what is live before it (GPU: the caching allocator's
    peak; CPU: torch's profiler memory accounting)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # An op's self memory is what it allocated itself (its cpu_memory_usage also counts its children's,
    # which would count them twice); frees come as "[memory]" records with negative sizes.
    live, peak = 0, 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def kept_memory_mb(forward: Callable[[], Any], device: torch.device) -> float:
    """Memory a forward under grad mode leaves allocated until its backward: its output and every tensor saved
    for the backward (what each layer of a deep model holds at once), beyond what is live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        out = forward()
        torch.cuda.synchronize()
        kept = torch.cuda.memory_allocated() - base
        del out
        return kept / 2**20
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = forward()
    kept = sum(event.self_cpu_memory_usage for event in prof.events())
    del out
    return kept / 2**20


def copy_bandwidth_gbps(device: torch.device) -> Optional[float]:
    """Measured device-to-device copy bandwidth (bytes read + written), the floor's denominator."""
    if device.type != "cuda":
        return None
    src = torch.randn(2**28 // 4 * 4, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, quick=True)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def run_case(case: Case, device: torch.device, quick: bool, peers: bool, bandwidth: Optional[float],
             memory: bool = False, only: Optional[Sequence[str]] = None, host: bool = False) -> List[Result]:
    results = []
    for label, variant in case.make(device, peers).items():
        if only and label not in only:
            continue
        modes = [("fwd", variant.fn, case.bytes_fwd, case.flops_fwd)]
        if variant.grad_inputs:
            modes.append(("fwd+bwd", forward_backward(variant), case.bytes_fwd_bwd, case.flops_fwd_bwd))
        for mode, fn, nbytes, flops in modes:
            with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                ms = time_ms(fn, device, quick)
                mem = peak_memory_mb(fn, device) if memory else None
                host_time = host_ms(fn, device, calls=20 if quick else 200) if host else None
            r = Result(case.op, case.name, label, mode, ms, peak_mem_mb=mem, host_ms=host_time,
                       dispatch_size=case.dispatch_size,
                       dtype=None if case.dtype is None else str(case.dtype).replace("torch.", ""))
            if nbytes:
                r.gbps = nbytes / (ms * 1e-3) / 1e9
                if bandwidth:
                    r.floor_fraction = r.gbps / bandwidth
            if flops:
                r.tflops = flops / (ms * 1e-3) / 1e12
            results.append(r)
    return results


def format_table(results: List[Result]) -> str:
    """One row per (case, variant, mode), with the time ratio to the fastest ssm_kernels backend."""
    rows = [("op", "case", "variant", "mode", "ms", "GB/s", "floor", "TFLOP/s", "peak MB", "host ms",
             "x vs best ours")]
    best: Dict[tuple, float] = {}
    for r in results:
        if r.variant in _dispatch.BACKENDS:
            key = (r.op, r.case, r.mode)
            best[key] = min(best.get(key, float("inf")), r.ms)
    for r in results:
        ref = best.get((r.op, r.case, r.mode))
        rows.append((r.op, r.case, r.variant, r.mode, f"{r.ms:.3f}",
                     "" if r.gbps is None else f"{r.gbps:.0f}",
                     "" if r.floor_fraction is None else f"{r.floor_fraction:.0%}",
                     "" if r.tflops is None else f"{r.tflops:.3g}",
                     "" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}",
                     "" if r.host_ms is None else f"{r.host_ms:.3f}",
                     "" if not ref else f"{r.ms / ref:.2f}"))
    return aligned_columns(rows)


def aligned_columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows of strings as text, each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
