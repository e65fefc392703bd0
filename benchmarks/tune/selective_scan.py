"""Block sizes, warps and register caps of the Triton selective scan (ssm_kernels/selective_scan/triton.py:
BLOCK_L, FWD_WARPS, FWD_BLOCK_D, BWD_WARPS, BWD_BLOCK_D, RUN_BYTES, FWD_MAXNREG, BWD_MAXNREG, ATOMIC_BC) on
the GPU cases of `python -m benchmarks --op selective_scan` ((4, 4096, 4096) N16 with D, z, delta_bias,
softplus). The forward and the backward share
BLOCK_L (the checkpoint spacing): the forward+backward sweep runs at the forward's best settings. First, on
every case, MIN_PROGRAMS (the grid size below which the channel blocks shrink; it matters for small
batch * channels, e.g. --case "B1 D2048"), RUN_BYTES (the run length of the real kernels' tiles), the register
caps with BLOCK_L 32 and 64 (more programs per SM against spills) and ATOMIC_BC (dB / dC atomics or partials)."""
from __future__ import annotations

import importlib

from ..cases import selective_scan as selective_scan_cases
from . import sweep, triton_variants

backend = importlib.import_module("ssm_kernels.selective_scan.triton")


def _per_thread(block_l: int, warps: int) -> int:
    """Tile elements per thread at N 16: 8 to 32 keeps the kernels free of spills."""
    return 16 * block_l // (32 * warps)


def forward_grid(quick: bool):
    if quick:
        return [dict(BLOCK_L=bl, FWD_WARPS=w, FWD_BLOCK_D=16) for bl, w in ((64, 2), (128, 2), (128, 4), (256, 4))]
    return [dict(BLOCK_L=bl, FWD_WARPS=w, FWD_BLOCK_D=bd) for bl in (32, 64, 128, 256, 512) for w in (1, 2, 4, 8)
            for bd in (8, 16, 32) if 16 <= _per_thread(bl, w) <= 32]


def backward_grid(quick: bool, forward: dict):
    pairs = ((1, 32), (2, 32), (4, 32), (2, 64)) if quick else [(w, bd) for w in (1, 2, 4, 8) for bd in (16, 32, 64)]
    return [dict(forward, BWD_WARPS=w, BWD_BLOCK_D=bd) for w, bd in pairs
            if 8 <= _per_thread(forward.get("BLOCK_L", backend.BLOCK_L), w) <= 32]


MIN_PROGRAMS_GRID = (1, 256, 512, 1024, 2048, 4096)
RUN_BYTES_GRID = (4, 8, 16)
REGISTER_CAPS = [dict(BLOCK_L=bl, FWD_MAXNREG=f, BWD_MAXNREG=b) for bl in (32, 64)
                 for f, b in ((None, None), (168, None), (128, None), (168, 168), (128, 128))]


def run(device, quick: bool, only):
    for case, variant in triton_variants(selective_scan_cases, device, only):
        print(f"{case.name}: MIN_PROGRAMS", flush=True)
        sweep(backend, variant, device, [dict(MIN_PROGRAMS=m) for m in MIN_PROGRAMS_GRID], quick)
        print(f"{case.name}: RUN_BYTES (positions per run of the real kernels' tiles)", flush=True)
        sweep(backend, variant, device, [dict(RUN_BYTES=b) for b in RUN_BYTES_GRID], quick)
        print(f"{case.name}: register caps (ptxas maxnreg) at two chunk lengths", flush=True)
        sweep(backend, variant, device, REGISTER_CAPS, quick)
        print(f"{case.name}: ATOMIC_BC (dB / dC added with atomics, or per-program partials summed by torch)",
              flush=True)
        sweep(backend, variant, device, [dict(ATOMIC_BC=a) for a in (True, False)], quick, modes=("fwd+bwd",))
        print(f"{case.name}: forward", flush=True)
        timed = sweep(backend, variant, device, forward_grid(quick), quick,
                      modes=("fwd",))
        best_forward = min(timed, key=lambda r: r[0]["fwd"])[1] if timed else {}
        print(f"{case.name}: forward+backward at the forward's best settings", flush=True)
        sweep(backend, variant, device, backward_grid(quick, best_forward), quick,
              modes=("fwd+bwd",))
