"""Sequential ground truth of the linear scan.

    forward  (reverse=False): x_t = a_t * x_{t-1} + b_t, x_{-1} = initial_state (zeros without it)
    backward (reverse=True):  x_t = a_t * x_{t+1} + b_t, x_L  = initial_state

Shapes: tokens b (B, D, L); gates a (B, D, L), (D, L) or (D,), broadcast over the missing dims;
initial_state (B, D); with cu_seqlens (S + 1,) B = 1 and each packed sequence is its own scan, initial and
final states (S, D). Dtypes follow `result_dtypes` (_common.py).
"""
from __future__ import annotations

import torch

from ._common import expanded_gates, result_dtypes


def linear_scan_ref(gates, tokens, initial_state=None, reverse=False, return_final_state=False, cu_seqlens=None):
    """Sequential ground truth: one step at a time in the compute dtype. Returns x (B, D, L) [, final]."""
    if cu_seqlens is not None:  # each packed sequence on its own
        bounds = cu_seqlens.tolist()
        xs, finals = [], []
        for n, (start, end) in enumerate(zip(bounds, bounds[1:])):
            a = gates if gates.dim() == 1 else gates[..., start:end]
            h0 = None if initial_state is None else initial_state[n:n + 1]
            x, final = linear_scan_ref(a, tokens[..., start:end], h0, reverse, True)
            xs.append(x)
            finals.append(final)
        x = torch.cat(xs, dim=-1)
        return (x, torch.cat(finals)) if return_final_state else x
    compute, out_dtype = result_dtypes(gates, tokens, initial_state)
    # unbind: one backward node for all steps (indexing a[..., t] would back-propagate O(L^2) zeros)
    a = expanded_gates(gates, tokens.shape).to(compute).unbind(-1)
    b = tokens.to(compute).unbind(-1)
    state = tokens.new_zeros(tokens.shape[:-1], dtype=compute) if initial_state is None \
        else initial_state.to(compute)
    steps = range(len(b) - 1, -1, -1) if reverse else range(len(b))
    xs = [None] * len(b)
    for t in steps:
        state = a[t] * state + b[t]
        xs[t] = state
    x = torch.stack(xs, dim=-1) if xs else tokens.to(compute).clone()
    x = x.to(out_dtype)
    if return_final_state:
        final = state.to(out_dtype) if xs or initial_state is not None else x.new_zeros(x.shape[:-1])
        return x, final
    return x
