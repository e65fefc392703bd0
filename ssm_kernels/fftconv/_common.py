"""Helpers shared by fftconv's reference and backends: the math dtype and the gates / skip around the
convolution (v = u * pregate; y = (conv + D v) * postgate)."""
from __future__ import annotations

from typing import Optional

import torch

from .._utils import compute_dtype


def math_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """fp64 when any input is fp64, else fp32."""
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return compute_dtype(torch.float64 if wide else torch.float32)


def gated_input(u, pregate, dtype):
    """v = u * pregate (u without it) in dtype."""
    v = u.to(dtype)
    return v if pregate is None else v * pregate.to(dtype)


def finish(y, v, D, postgate, out_dtype):
    """(y + D v) * postgate, in out_dtype."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * v
    if postgate is not None:
        y = y * postgate.to(y.dtype)
    return y.to(out_dtype)
