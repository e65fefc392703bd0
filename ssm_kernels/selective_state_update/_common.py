"""The decoding step of the selective scan shared by selective_state_update's reference and torch backend:
one step, state updated in place.

Canonical (Mamba-2) shapes: state (Bc, H, P, N) with Bc >= B rows of a state cache; x, dt, z (B, H, P);
A (H, P, N); B, C (B, G, N), head h reading group h // (H / G); D, dt_bias (H, P);
state_batch_indices (B,) the cache row of every batch entry (row b without it). The Mamba-1 form
(state (Bc, D, N), x (B, D), A (D, N), B / C (B, N) or (B, G, N), D (D,)) is the case P = 1, H = D: both
functions built on this take either form (`in_heads_form`). In the Mamba-1 form dt may instead be the dt
projection's low-rank input (B, R), with dt_proj_weight (D, R): dt = dt @ dt_proj_weight^T in fp32.
    dt' = softplus(dt + dt_bias)                      (each part optional)
    state <- exp(dt' A) * state + dt' x B             (in place, in the state's dtype)
    out = (C . state + D x) * silu(z)                 (x's dtype)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._utils import compute_dtype


def _rows(state, state_batch_indices):
    return state if state_batch_indices is None else state[state_batch_indices.long()]


def _write_rows(state, new, state_batch_indices):
    if state_batch_indices is None:
        state.copy_(new)
    else:
        state.index_copy_(0, state_batch_indices.long(), new)


def in_heads_form(heads_step):
    """Wrap a heads-form step so that it also takes the Mamba-1 form, as views with P = 1."""
    def run(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, state_batch_indices=None,
            dt_proj_weight=None):
        if state.dim() == 4:
            return heads_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
        if dt_proj_weight is not None:  # (B, R) @ (R, D), in the step's math precision
            acc = compute_dtype(x.dtype)
            dt = dt.to(acc) @ dt_proj_weight.to(acc).t()
        unsq = lambda t: None if t is None else t.unsqueeze(-1)  # noqa: E731
        B, C = (X if X.dim() == 3 else X[:, None] for X in (B, C))
        out = heads_step(state.unsqueeze(2), unsq(x), unsq(dt), A.unsqueeze(1), B, C, unsq(D), unsq(z), unsq(dt_bias),
                         dt_softplus, state_batch_indices)
        return out.squeeze(-1)
    run.__name__, run.__doc__ = heads_step.__name__, heads_step.__doc__
    return run


def step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, expand_groups):
    """One step in the heads form, fp32 math; expand_groups(X (B, G, N), heads) gives each head its group."""
    acc = compute_dtype(x.dtype)
    heads = x.shape[1]
    dt = dt.to(acc)
    if dt_bias is not None:
        dt = dt + dt_bias.to(acc)
    if dt_softplus:
        dt = F.softplus(dt)
    xf = x.to(acc)
    Bh, Ch = expand_groups(B.to(acc), heads), expand_groups(C.to(acc), heads)  # (B, H, N) or broadcastable
    h = _rows(state, state_batch_indices).to(acc)
    h = torch.exp(dt[..., None] * A.to(acc)) * h + (dt * xf)[..., None] * Bh[:, :, None, :]
    _write_rows(state, h.to(state.dtype), state_batch_indices)
    out = (h * Ch[:, :, None, :]).sum(-1)
    if D is not None:
        out = out + xf * D.to(acc)
    if z is not None:
        out = out * F.silu(z.to(acc))
    return out.to(x.dtype)
