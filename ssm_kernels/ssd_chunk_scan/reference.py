"""Sequential fp32 ground truth of the Mamba-2 SSD scan.

Shapes: x, z (Bz, L, H, P); dt (Bz, L, H); A (H,); B, C (Bz, L, G, N), head h reads group h // (H / G);
D (H,) or (H, P); dt_bias (H,); initial_states / final states (Bz, H, P, N); seq_idx (Bz, L);
cu_seqlens (S + 1,) with Bz == 1; varlen states (S, H, P, N).
Definition, per head, with dt' = clamp(softplus?(dt + dt_bias), *dt_limit):
    h_t = exp(dt'_t A) h_{t-1} [t continues the sequence of t-1] + dt'_t x_t B_t^T        (P, N)
    y_t = (h_t C_t + D x_t) * silu(z_t)                                                 (P,)
h_{-1} is initial_states (zeros without it): it continues the first sequence. A new sequence starts where
seq_idx changes and at every cu_seqlens[s], 0 < s < S. The final state is h_{L-1}; varlen state s is
h at the last step cu_seqlens[s + 1] - 1 of sequence s.

ssd_chunk_scan_ref and every backend take (x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit,
initial_states, seq_idx, cu_seqlens) and return (out (Bz, L, H, P) in x's dtype, final_states, varlen_states
or None), states in the compute dtype (fp32, fp64 for fp64 x).
"""
from __future__ import annotations

import torch

from .._utils import compute_dtype
from ._common import effective_dt, skip_and_gate


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
