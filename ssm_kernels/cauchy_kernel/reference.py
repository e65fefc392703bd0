"""Sequential ground truth of the Cauchy kernel (S4's DPLR generating function).

Shapes: v, w (H, N) complex; z (L,) complex; K (H, L) complex:
    K[h, l] = sum_n v[h, n] / (z[l] - w[h, n])
"""
from __future__ import annotations

import torch

from .._utils import compute_dtype


def cauchy_kernel_ref(v, z, w):
    """Sequential ground truth: one state n at a time, in complex64 (complex128 for complex128)."""
    acc_dtype = compute_dtype(v.dtype)
    v, z, w = v.to(acc_dtype), z.to(acc_dtype), w.to(acc_dtype)
    out = torch.zeros(v.shape[0], z.shape[0], dtype=acc_dtype, device=v.device)
    for n in range(v.shape[1]):
        out = out + v[:, n, None] / (z[None, :] - w[:, n, None])
    return out
