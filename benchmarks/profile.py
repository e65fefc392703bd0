"""Per-kernel GPU time of the benchmark cases' forward and forward+backward, ours beside the peers:

    python -m benchmarks profile [--ops causal_conv1d,selective_scan,ssd_chunk_scan] [--variants triton,peer]
                                 [--case-index 0] [--iters 10]

Uses the cases of `python -m benchmarks` (benchmarks/cases/<op>.py) and torch.profiler; prints, per case,
variant and mode, each kernel's device time per iteration and calls per iteration, largest first, then the
sum against the do_bench median (the gap is host time and idle device).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections import defaultdict

import torch

from .core import forward_backward


def _profiled_events(fn, iters: int, host_ops: bool = False):
    """torch.profiler's events of `iters` back-to-back calls of fn after a warm-up: the CUDA kernels, and with
    host_ops the CPU ops too, with their input shapes."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    if host_ops:
        activities.append(torch.profiler.ProfilerActivity.CPU)
    with torch.profiler.profile(activities=activities, record_shapes=host_ops) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return prof.events()


def kernel_times(fn, iters: int):
    """{kernel name: (us per iteration, calls per iteration)} over `iters` calls of fn, after a warm-up."""
    totals, calls = defaultdict(float), defaultdict(int)
    for event in _profiled_events(fn, iters):
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name] += event.device_time_total
            calls[event.name] += 1
    return {name: (totals[name] / iters, calls[name] / iters) for name in totals}


def kernel_sources(fn, iters: int, pattern: str):
    """{(aten op, its input shapes, kernel name): (us per iteration, calls per iteration)} over `iters` calls of
    fn, for the kernels whose name matches the regex `pattern`: which op (and on which tensors) launched a copy or
    a reduction that the kernel table shows only by the library kernel's name."""
    import re
    matches = re.compile(pattern).search
    totals, calls = defaultdict(float), defaultdict(int)
    for event in _profiled_events(fn, iters, host_ops=True):
        for kernel in getattr(event, "kernels", None) or ():
            if matches(kernel.name):
                key = (event.name, str(event.input_shapes), kernel.name)
                totals[key] += kernel.duration
                calls[key] += 1
    return {key: (totals[key] / iters, calls[key] / iters) for key in totals}


def kernel_gaps(fn, iters: int, top: int = 8):
    """Where the GPU idles between kernels over `iters` back-to-back calls of fn (after a warm-up): (idle us per
    call, [(us per call, kernel before, kernel after), ...] for the `top` largest (before, after) pairs). Kernel
    time below do_bench's is either such idle time (the host not keeping the queue full: host-bound stretches) or
    timing differences (do_bench flushes L2 between calls)."""
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in _profiled_events(fn, iters)
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    idle, pairs = 0.0, defaultdict(float)
    busy_until, previous = None, None
    for start, end, name in kernels:
        if busy_until is not None and start > busy_until:
            idle += start - busy_until
            pairs[(previous, name)] += start - busy_until
        if busy_until is None or end > busy_until:
            busy_until, previous = end, name
    largest = sorted(pairs.items(), key=lambda kv: -kv[1])[:top]
    return idle / iters, [(us / iters, before, after) for (before, after), us in largest]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default="causal_conv1d,selective_scan,ssd_chunk_scan")
    parser.add_argument("--variants", default="", help="substrings of variant labels to keep (default: all)")
    parser.add_argument("--case-index", default="0", help="comma list of indices into the op's GPU cases")
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    from triton.testing import do_bench
    device = torch.device("cuda")
    keep = [v for v in args.variants.split(",") if v]
    for op in args.ops.split(","):
        cases = importlib.import_module(f"benchmarks.cases.{op}").cases(quick=False)
        for index in (int(i) for i in args.case_index.split(",")):
            if index >= len(cases):
                continue
            case = cases[index]
            variants = case.make(device, True)
            for label, variant in variants.items():
                if keep and not any(k in label for k in keep):
                    continue
                modes = [("fwd", variant.fn)]
                if variant.grad_inputs:
                    modes.append(("fwd+bwd", forward_backward(variant)))
                for mode, fn in modes:
                    with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                        try:
                            times = kernel_times(fn, args.iters)
                            median = do_bench(fn, warmup=25, rep=100)
                        except Exception as exc:  # noqa: BLE001  (a peer that fails must not stop the others)
                            print(f"\n## {op} {case.name} | {label} | {mode}: failed: {type(exc).__name__}: {exc}")
                            continue
                    total = sum(t for t, _ in times.values())
                    print(f"\n## {op} {case.name} | {label} | {mode}: kernels {total / 1e3:.3f} ms, "
                          f"do_bench {median:.3f} ms")
                    for name, (us, n) in sorted(times.items(), key=lambda kv: -kv[1][0]):
                        print(f"  {us:9.1f} us  x{n:<5.1f} {name[:110]}")
                    sys.stdout.flush()
            del variants
            torch.cuda.empty_cache()
    return 0
