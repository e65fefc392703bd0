"""Helpers shared by selective_scan's reference and backends: compute dtypes and input layouts.

B and C arrive as (D, N) fixed, (B, N, L) variable or (B, G, N, L) grouped; with complex A, variable ones
may also be real with real and imaginary parts interleaved along the last axis: (B, N, 2L) / (B, G, N, 2L).
Both paths first bring them to one layout, "grouped": (Bb, G, N, Lb), where
    fixed (D, N)      -> (1, D, N, 1)   every channel its own group, constant over time
    variable (B, N, L) -> (B, 1, N, L)   one group shared by every channel
    grouped (B, G, N, L) unchanged       channel d uses group d // (D / G)
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from .._utils import COMPLEX_DTYPES, REAL_DTYPES, ArgCheck, compute_dtype


def compute_dtypes(u: torch.Tensor, A: torch.Tensor):
    """(real dtype of the math, dtype of states and of A): fp32 / fp64, complex when A is."""
    real = compute_dtype(u.dtype) if A.dtype not in (torch.float64, torch.complex128) else torch.float64
    state = (torch.complex128 if real == torch.float64 else torch.complex64) if A.is_complex() else real
    return real, state


def as_complex_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(..., 2L) real with (re, im) pairs along the last axis -> (..., L) complex (a differentiable view)."""
    x = x.unflatten(-1, (x.shape[-1] // 2, 2))
    if x.stride(-1) != 1 or any(s % 2 for s in x.stride()[:-1]):
        x = x.contiguous()
    return torch.view_as_complex(x)


def grouped(X: torch.Tensor, A: torch.Tensor, acc_dtype: torch.dtype) -> torch.Tensor:
    """B or C in the grouped layout (Bb, G, N, Lb), in the compute dtype (complex when A is complex)."""
    if A.is_complex() and not X.is_complex() and X.dim() >= 3:
        X = as_complex_interleaved(X.to(acc_dtype.to_real() if acc_dtype.is_complex else acc_dtype))
    X = X.to(acc_dtype)
    if X.dim() == 2:
        return X[None, :, :, None]
    if X.dim() == 3:
        return X[:, None]
    return X


def softplus_delta(delta: torch.Tensor, delta_bias: Optional[torch.Tensor], delta_softplus: bool,
                   acc_dtype: torch.dtype) -> torch.Tensor:
    """Δ = softplus(delta + delta_bias) (each part optional), in the compute dtype: (B, D, L)."""
    delta = delta.to(acc_dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc_dtype)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def skip_and_gate(y: torch.Tensor, u: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor]):
    """out = (y + D u) * silu(z), each part optional; y, u, z: (B, D, L), all in the compute dtype."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def sequence_bounds(cu_seqlens: Optional[torch.Tensor], length: int) -> List[int]:
    """Start of every sequence plus the total length: cu_seqlens as a list, or [0, L] without it."""
    return [0, length] if cu_seqlens is None else [int(v) for v in cu_seqlens.tolist()]


def check_bc(check: ArgCheck, name: str, X, complex_A: bool):
    """B or C: (D, N) fixed, (B, N, L) variable or (B, G, N, L) grouped; with complex A a variable one is
    complex, or real with interleaved (re, im) pairs along a last axis of 2L."""
    if not isinstance(X, torch.Tensor):
        check.tensor(name, X)  # raises the TypeError
    if X.dim() == 2:
        check.tensor(name, X, ("D", "N"), dtypes=COMPLEX_DTYPES if complex_A else REAL_DTYPES)
        return
    interleaved = complex_A and not X.is_complex()
    length = 2 * check.dims["L"] if interleaved else "L"
    dtypes = (COMPLEX_DTYPES + REAL_DTYPES) if complex_A else REAL_DTYPES
    if X.dim() == 3:
        check.tensor(name, X, ("B", "N", length), dtypes=dtypes)
        return
    check.tensor(name, X, ("B", f"G_{name}", "N", length), dtypes=dtypes)
    groups = X.shape[1]
    if groups < 1 or check.dims["D"] % groups:
        check.fail(f"{name} has {groups} groups, which must divide D = {check.dims['D']}")
