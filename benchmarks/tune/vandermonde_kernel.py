"""Tile shapes, warps and product precision of the Triton Vandermonde kernel
(ssm_kernels/vandermonde_kernel/triton.py): the forward's ROWS x MAX_BLOCK_L tiles (a complex exponential per
mode and tile), NUM_WARPS and DOT_PRECISION ("ieee" fp32 products on the CUDA cores or "tf32x3" on the tensor
cores); the backward's BACKWARD_ROWS, MAX_BACKWARD_BLOCK_L, BACKWARD_WARPS and BACKWARD_DOT_PRECISION at the
forward's best; on the GPU cases of `python -m benchmarks --op vandermonde_kernel` (N32: H256 L4096, H768 L16384)."""
from __future__ import annotations

import importlib

from ..cases import vandermonde_kernel as vandermonde_cases
from . import sweep, triton_variants

backend = importlib.import_module("ssm_kernels.vandermonde_kernel.triton")
PRECISIONS = ("ieee", "tf32x3")


def forward_grid(quick: bool):
    if quick:
        return [dict(ROWS=r, MAX_BLOCK_L=b, NUM_WARPS=4) for r, b in ((16, 64), (32, 64))]
    shapes = ((16, 128), (32, 64), (32, 128), (64, 64))
    return [dict(ROWS=r, MAX_BLOCK_L=b, NUM_WARPS=w, DOT_PRECISION=p)
            for r, b in shapes for w in (4, 8) for p in PRECISIONS]


def backward_grid(quick: bool, forward: dict):
    if quick:
        return [dict(forward, MAX_BACKWARD_BLOCK_L=b, BACKWARD_WARPS=8) for b in (32, 64)]
    return [dict(forward, BACKWARD_ROWS=r, MAX_BACKWARD_BLOCK_L=b, BACKWARD_WARPS=w, BACKWARD_DOT_PRECISION=p)
            for r in (16, 32) for b in (32, 64) for w in (4, 8) for p in PRECISIONS]


def run(device, quick: bool, only):
    for case, variant in triton_variants(vandermonde_cases, device, only):
        print(f"{case.name}: forward", flush=True)
        timed = sweep(backend, variant, device, forward_grid(quick), quick, modes=("fwd",))
        best_forward = min(timed, key=lambda r: r[0]["fwd"])[1] if timed else {}
        print(f"{case.name}: forward+backward at the forward's best settings", flush=True)
        sweep(backend, variant, device, backward_grid(quick, best_forward), quick, modes=("fwd+bwd",))
