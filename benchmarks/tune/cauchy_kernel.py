"""Block sizes and warps of the Triton Cauchy kernel (ssm_kernels/cauchy_kernel/triton.py: BLOCK_L, MAX_BLOCK_N,
NUM_WARPS, and how many programs the dv / dw backward cuts the positions into, BACKWARD_PROGRAMS), on the GPU
cases of `python -m benchmarks --op cauchy_kernel` (N32: H256 with 1025 points, H768 with 8193)."""
from __future__ import annotations

import importlib

from ..cases import cauchy_kernel as cauchy_cases
from . import sweep, triton_variants

backend = importlib.import_module("ssm_kernels.cauchy_kernel.triton")


def grid(quick: bool):
    blocks = ((64, 32), (128, 32), (128, 16)) if quick else \
        [(bl, bn) for bl in (32, 64, 128, 256) for bn in (8, 16, 32)]
    return [dict(BLOCK_L=bl, MAX_BLOCK_N=bn, NUM_WARPS=w) for bl, bn in blocks for w in (4, 8)]


def run(device, quick: bool, only):
    for case, variant in triton_variants(cauchy_cases, device, only):
        print(f"{case.name}: forward", flush=True)
        timed = sweep(backend, variant, device, grid(quick), quick, modes=("fwd",))
        best = min(timed, key=lambda r: r[0]["fwd"])[1] if timed else {}
        print(f"{case.name}: forward+backward (the forward's best settings, then the backward's programs)",
              flush=True)
        sweep(backend, variant, device, grid(quick) + [dict(best, BACKWARD_PROGRAMS=p) for p in (64, 1024, 2048, 4096)],
              quick, modes=("fwd+bwd",))
