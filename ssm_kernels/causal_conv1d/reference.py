"""Sequential ground truth of the causal depthwise conv1d.

Shapes: x (B, D, L); weight (D, W); bias (D,); seq_idx (B, L) int; initial_states (B, D, W-1).
Definition, with xp = cat(initial_states or 0, x) along L (so xp[t + W - 1] = x[t]):
    y[b, d, t] = act(bias[d] + sum_k weight[d, k] * xp[b, d, t + k] * same(t, t + k - W + 1))
where same(t, s) is 1 when position s (s < 0: the initial state, which continues the first sequence)
belongs to the same sequence as t under seq_idx, and always 1 without seq_idx.
"""
from __future__ import annotations

import torch

from .._utils import compute_dtype
from ._common import activate, padded, padded_seq_idx


def causal_conv1d_ref(x, weight, bias=None, activation=None, seq_idx=None, initial_states=None):
    """Sequential ground truth: one output position at a time, in fp32. Returns y (B, D, L), x's dtype."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    acc_dtype = compute_dtype(x.dtype)
    xp = padded(x.to(acc_dtype), None if initial_states is None else initial_states.to(acc_dtype), width)
    ids = None if seq_idx is None else padded_seq_idx(seq_idx, width)
    w = weight.to(acc_dtype)
    outputs = []
    for t in range(length):
        window = xp[:, :, t:t + width]  # (B, D, W): the inputs output t reads
        if ids is not None:
            window = window * (ids[:, t:t + width] == ids[:, t + width - 1:t + width]).unsqueeze(1).to(acc_dtype)
        acc = (window * w).sum(-1)
        outputs.append(acc if bias is None else acc + bias.to(acc_dtype))
    y = torch.stack(outputs, dim=-1) if outputs else x.new_zeros(batch, dim, 0, dtype=acc_dtype)
    return activate(y, activation).to(x.dtype)
