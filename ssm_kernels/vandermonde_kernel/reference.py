"""Sequential ground truth of the Vandermonde kernel (the S4D / DSS convolution kernel).

Shapes: C, log_z (H, N) complex; K (H, L) real:
    K[h, l] = 2 Re sum_n C[h, n] exp(log_z[h, n] * l)
"""
from __future__ import annotations

import torch

from .._utils import compute_dtype


def vandermonde_kernel_ref(C, log_z, L):
    """Sequential ground truth: one position l at a time, in complex64 (complex128 for complex128)."""
    acc_dtype = compute_dtype(C.dtype)
    C, log_z = C.to(acc_dtype), log_z.to(acc_dtype)
    columns = [2 * (C * torch.exp(log_z * l)).sum(-1).real for l in range(L)]
    return torch.stack(columns, dim=-1)
