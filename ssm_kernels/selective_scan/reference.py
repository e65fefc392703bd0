"""Sequential fp32 ground truth of the selective scan (Mamba-1).

Shapes: u, delta, z (B, D, L); A (D, N) real or complex; B, C (D, N), (B, N, L) or (B, G, N, L) (with
complex A, also real (B, N, 2L) / (B, G, N, 2L) holding interleaved real and imaginary parts); D and
delta_bias (D,); states (B, D, N), or (S, D, N), one per packed sequence, with cu_seqlens (S + 1,).
Definition, with Δ = softplus(delta + delta_bias) (each part optional) and channel d reading group
g = d // (D / G) of B and C:
    h_t = exp(Δ_t A) * h_{t-1} + Δ_t u_t B_t          h_{-1} = initial_state (zeros by default)
    y_t = C_t . h_t   (2 Re(C_t . h_t) for complex A: the state holds one of each conjugate pair)
    out_t = (y_t + D u_t) * silu(z_t)
With cu_seqlens (B == 1) the state restarts from the sequence's initial state at every sequence start.
"""
from __future__ import annotations

import torch

from ._common import compute_dtypes, grouped, sequence_bounds, skip_and_gate, softplus_delta


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, cu_seqlens=None):
    """Sequential ground truth, one time step at a time. Returns (out (B, D, L) in u's dtype, final state)."""
    batch, dim, length = u.shape
    real, acc = compute_dtypes(u, A)
    uf = u.to(real)
    dt = softplus_delta(delta, delta_bias, delta_softplus, real)
    Af = A.to(acc)
    Bg, Cg = grouped(B, A, acc), grouped(C, A, acc)
    # every channel's own copy of its group's B_t / C_t: (Bb, D, N, Lb)
    Bd = Bg.repeat_interleave(dim // Bg.shape[1], dim=1)
    Cd = Cg.repeat_interleave(dim // Cg.shape[1], dim=1)
    bounds = sequence_bounds(cu_seqlens, length)
    starts = {start: s for s, start in enumerate(bounds[:-1]) if bounds[s + 1] > start}
    rows = batch if cu_seqlens is None else 1

    def start_state(s):
        if initial_state is None:
            return torch.zeros(rows, dim, A.shape[1], dtype=acc, device=u.device)
        return initial_state.to(acc)[s * rows:(s + 1) * rows] if cu_seqlens is not None else initial_state.to(acc)

    finals = [start_state(s) for s in range(len(bounds) - 1)]  # empty sequences keep their initial state
    ys = []
    h = None
    for t in range(length):
        if t in starts:
            h = start_state(starts[t])
        Bt = Bd[..., t if Bd.shape[-1] > 1 else 0]
        Ct = Cd[..., t if Cd.shape[-1] > 1 else 0]
        h = torch.exp(dt[:, :, t, None] * Af) * h + (dt[:, :, t] * uf[:, :, t])[:, :, None] * Bt
        y = (h * Ct).sum(-1)
        ys.append(2 * y.real if y.is_complex() else y)
        for s in range(len(bounds) - 1):
            if bounds[s + 1] == t + 1 and bounds[s] < t + 1:
                finals[s] = h
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(batch, dim, 0)
    out = skip_and_gate(y, uf, D, z)
    return out.to(u.dtype), torch.cat(finals, dim=0)
