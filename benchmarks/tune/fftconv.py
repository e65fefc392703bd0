"""Spectrum rows per step (CHUNK) and warps of the Triton fftconv's forward and backward kernels
(ssm_kernels/fftconv/triton.py), and threads per block of the CUDA ones and the length from which their forward
saves its output before the postgate for the backward (ssm_kernels/fftconv/cuda.py), on the GPU
cases of `python -m benchmarks --op fftconv` that each backend takes (B8 H768: bf16 L4096 / L1024, fp32 / fp16
L2048; the CUDA backend also L16384 and fp32 L4096)."""
from __future__ import annotations

import importlib

from ..cases import fftconv as fftconv_cases
from . import backend_variants, sweep, triton_variants

backend = importlib.import_module("ssm_kernels.fftconv.triton")
cuda_backend = importlib.import_module("ssm_kernels.fftconv.cuda")


def _warps(kernel: str, warps: int) -> dict:
    """backend.NUM_WARPS with `kernel`'s warps set to `warps` for every operand kind (a case has one)."""
    return {**backend.NUM_WARPS, kernel: {kind: warps for kind in backend.NUM_WARPS[kernel]}}


def grid(quick: bool):
    """(forward settings, backward settings): the forward's are timed without grad, the backward's with it."""
    chunks = (32, 64) if quick else (16, 32, 64)
    forward = [{"CHUNK": c, "NUM_WARPS": _warps("forward", w)} for c in chunks for w in (4, 8)]
    backward = [{"CHUNK": c, "NUM_WARPS": _warps("backward", w)} for c in chunks for w in (4, 8)]
    return forward, backward


def run(device, quick: bool, only):
    forward, backward = grid(quick)
    for case, variant in triton_variants(fftconv_cases, device, only):
        print(f"{case.name}: forward", flush=True)
        sweep(backend, variant, device, forward, quick, modes=("fwd",))
        print(f"{case.name}: forward+backward (the forward with the same CHUNK, its warps at the default)", flush=True)
        sweep(backend, variant, device, backward, quick, modes=("fwd+bwd",))
    for case, variant in backend_variants(fftconv_cases, device, only, "cuda"):
        print(f"{case.name}: CUDA threads per block", flush=True)
        sweep(cuda_backend, variant, device, [{"BLOCK_THREADS": t} for t in (64, 128, 256, 512)], quick)
        print(f"{case.name}: CUDA forward saving its ungated output (1: always; 2^30: never)", flush=True)
        sweep(cuda_backend, variant, device, [{"SAVE_UNGATED_FROM": n} for n in (1, 1 << 30)], quick)
