"""Pure-PyTorch Mamba-2 SSD scan: the sequential fp32 ground truth and the fast chunked torch backend.

Shapes: x, z (Bz, L, H, P); dt (Bz, L, H); A (H,); B, C (Bz, L, G, N), head h reads group h // (H / G);
D (H,) or (H, P); dt_bias (H,); initial_states / final states (Bz, H, P, N); seq_idx (Bz, L);
cu_seqlens (S + 1,) with Bz == 1; varlen states (S, H, P, N).
Definition, per head, with dt' = clamp(softplus?(dt + dt_bias), *dt_limit):
    h_t = exp(dt'_t A) h_{t-1} [t continues the sequence of t-1] + dt'_t x_t B_t^T        (P, N)
    y_t = (h_t C_t + D x_t) * silu(z_t)                                                 (P,)
h_{-1} is initial_states (zeros without it): it continues the first sequence. A new sequence starts where
seq_idx changes and at every cu_seqlens[s], 0 < s < S. The final state is h_{L-1}; varlen state s is
h at the last step cu_seqlens[s + 1] - 1 of sequence s.

Both functions take (x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states,
seq_idx, cu_seqlens) and return (out (Bz, L, H, P) in x's dtype, final_states, varlen_states or None),
states in the compute dtype (fp32, fp64 for fp64 x).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._utils import compute_dtype
from ._ops import ssd_chunk_scan_fwd


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


def ssd_chunk_scan_ref(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                       dt_limit=(0.0, float("inf")), initial_states=None, seq_idx=None, cu_seqlens=None):
    """Sequential ground truth: the recurrence one step at a time (chunk_size is ignored)."""
    batch, length, heads, headdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    acc = compute_dtype(x.dtype)
    dt = effective_dt(dt, dt_bias, dt_softplus, dt_limit, acc)
    xs, A = x.to(acc), A.to(acc)
    Bh = B.to(acc).repeat_interleave(heads // groups, dim=2)  # (Bz, L, H, N)
    Ch = C.to(acc).repeat_interleave(heads // groups, dim=2)
    h = x.new_zeros(batch, heads, headdim, dstate, dtype=acc) if initial_states is None else initial_states.to(acc)
    bounds = [] if cu_seqlens is None else cu_seqlens.tolist()
    starts = set(bounds[1:-1])
    last_step = {end - 1: s for s, end in enumerate(bounds[1:])}
    varlen = [None] * max(len(bounds) - 1, 0)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)  # (Bz, H)
        if t in starts:
            decay = decay * 0
        if seq_idx is not None and t > 0:
            decay = decay * (seq_idx[:, t] == seq_idx[:, t - 1]).to(acc)[:, None]
        h = decay[:, :, None, None] * h + (dt[:, t, :, None] * xs[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((h * Ch[:, t, :, None, :]).sum(-1))
        if t in last_step:
            varlen[last_step[t]] = h[0]
    y = torch.stack(ys, dim=1) if ys else xs.new_zeros(batch, 0, heads, headdim)
    out = skip_and_gate(y, x, D, z).to(x.dtype)
    if cu_seqlens is None:
        return out, h, None
    return out, h, torch.stack(varlen) if varlen else h.new_zeros(0, heads, headdim, dstate)


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


# On the CPU the (T, T) intra-chunk work grows with the chunk length T while the inter-chunk state passing
# it replaces is cheap, so chunks are processed in blocks of at most this many steps. The result is the
# same in exact arithmetic for any block length (tests check chunk_size independence).
CPU_BLOCK = 64


def ssd_chunk_scan_torch(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                         dt_limit=(0.0, float("inf")), initial_states=None, seq_idx=None, cu_seqlens=None):
    """Fast torch backend: the SSD chunked matrix form (see _chunked.py), one custom op with a recomputing
    backward; dt preprocessing, D and z around it are plain differentiable torch. On CPU tensors chunks
    are processed in blocks of at most CPU_BLOCK steps."""
    if x.device.type == "cpu":
        chunk_size = min(chunk_size, CPU_BLOCK)
    acc = compute_dtype(x.dtype)
    batch, length = x.shape[:2]
    dt = effective_dt(dt, dt_bias, dt_softplus, dt_limit, acc)
    seg = segment_ids(seq_idx, cu_seqlens, batch, length, x.device)
    init = None if initial_states is None else initial_states.to(acc)
    y, states, varlen = ssd_chunk_scan_fwd(x.to(acc), dt, A.to(acc), B.to(acc), C.to(acc), init, seg,
                                           cu_seqlens, chunk_size)
    out = skip_and_gate(y, x, D, z).to(x.dtype)
    return out, states[:, -1], (varlen if cu_seqlens is not None else None)
