"""Numerical comparison helpers shared by the test suite, the benchmarks and GPU check scripts.

Errors are norm-relative: ||actual - expected|| / ||expected||, computed in fp64. The bound for a dtype
is what a same-dtype PyTorch computation of the op achieves against the fp32 sequential reference
(rounding of inputs and outputs to the dtype, fp32 accumulation inside), with a margin:
  fp64 1e-10, fp32 2e-5 (tf32 matmuls must be off), fp16 1e-3, bf16 1e-2: about five times one rounding
  of the output to fp16 (2e-4) or bf16 (1.7e-3); fp32 leaves room for accumulation over long sequences.
A kernel that needs more has a bug or a precision problem to find, not a tolerance to raise.

Absolute floor: where the expected tensor is exactly zero (for example the gradient of A at L = 1 from a zero
state), there is no scale to be relative to, and the error is the absolute norm ||actual|| itself, held to the
same bound: a kernel's rounding residue of ~1e-9 passes, a wrong value does not.
"""
from __future__ import annotations

from typing import Optional

import torch

TOLERANCE = {
    torch.float64: 1e-10, torch.complex128: 1e-10,
    torch.float32: 2e-5, torch.complex64: 2e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 1e-2,
}


def tolerance(dtype: torch.dtype) -> float:
    """Largest allowed norm-relative error for results computed from `dtype` inputs."""
    return TOLERANCE[dtype]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in fp64; the absolute ||actual - expected|| where expected is all
    zeros (the absolute floor of the module docstring); NaN when actual is not finite."""
    a, e = actual.detach().to(torch.complex128 if actual.is_complex() else torch.float64), expected.detach()
    e = e.to(a.dtype)
    if not torch.isfinite(a).all():
        return float("nan")
    scale = torch.linalg.vector_norm(e).item()
    diff = torch.linalg.vector_norm((a - e).flatten()).item()
    return diff / scale if scale > 0 else diff


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = "output",
                 tol: Optional[float] = None) -> float:
    """Assert shape match, no NaN/Inf (so poisoned, unwritten elements fail) and a small relative error."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bound = tolerance(dtype) if tol is None else tol
    err = relative_error(actual, expected)
    assert err == err, f"{name}: non-finite values (unwritten or overflowed elements)"
    assert err <= bound, f"{name}: relative error {err:.3e} > {bound:.1e} for {dtype}"
    return err
