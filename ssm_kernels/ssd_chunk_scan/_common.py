"""Helpers shared by ssd_chunk_scan's reference and backends: the effective dt, the skip and gate around the
scan, and the segment ids of packed sequences. Shapes: reference.py."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def effective_dt(dt, dt_bias, dt_softplus: bool, dt_limit: Tuple[float, float], dtype) -> torch.Tensor:
    """dt' (Bz, L, H) in `dtype`: dt + dt_bias, softplus if asked (linear above 20, as mamba_ssm), clamped."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


def skip_and_gate(y, x, D, z):
    """(y + D x) * silu(z) in y's dtype; y, x, z: (Bz, L, H, P); D: (H,) or (H, P)."""
    if D is not None:
        D = D.to(y.dtype)
        y = y + x.to(y.dtype) * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def segment_ids(seq_idx: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], batch: int,
                length: int, device) -> Optional[torch.Tensor]:
    """(Bz, L) int64 ids, equal for two steps exactly when no sequence starts between them (None: one sequence)."""
    if seq_idx is None and cu_seqlens is None:
        return None
    seg = torch.zeros(batch, length, dtype=torch.int64, device=device)
    if seq_idx is not None:
        changes = (seq_idx[:, 1:] != seq_idx[:, :-1]).to(torch.int64)
        seg = seg + torch.cat([seg[:, :1], changes.cumsum(1)], dim=1)
    if cu_seqlens is not None:
        steps = torch.arange(length, device=device)
        seg = seg + torch.searchsorted(cu_seqlens[1:].to(torch.int64), steps, right=True)[None]
    return seg
