"""Pure-PyTorch causal depthwise conv1d: the sequential fp32 ground truth and the fast torch backend.

Shapes: x (B, D, L); weight (D, W); bias (D,); seq_idx (B, L) int; initial_states (B, D, W-1).
Definition, with xp = cat(initial_states or 0, x) along L (so xp[t + W - 1] = x[t]):
    y[b, d, t] = act(bias[d] + sum_k weight[d, k] * xp[b, d, t + k] * same(t, t + k - W + 1))
where same(t, s) is 1 when position s (s < 0: the initial state, which continues the first sequence)
belongs to the same sequence as t under seq_idx, and always 1 without seq_idx.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._utils import compute_dtype


def _padded(x: torch.Tensor, initial_states: Optional[torch.Tensor], width: int) -> torch.Tensor:
    """xp: (B, D, W - 1 + L), the initial state (zeros by default) followed by x."""
    if initial_states is None:
        return F.pad(x, (width - 1, 0))
    return torch.cat([initial_states.to(x.dtype), x], dim=-1)


def _padded_seq_idx(seq_idx: torch.Tensor, width: int) -> torch.Tensor:
    """(B, W - 1 + L): the initial-state positions carry the first token's sequence id."""
    return torch.cat([seq_idx[:, :1].expand(-1, width - 1), seq_idx], dim=-1)


def final_states(x: torch.Tensor, initial_states: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
                 width: int) -> torch.Tensor:
    """(B, D, W-1): the last W-1 inputs, the state that continues the last sequence in the next call.

    Positions of earlier sequences (under seq_idx) are zero, so a varlen batch's final state equals the
    final state of its last sequence run alone. Differentiable; shared by every backend.
    """
    length = x.shape[-1]
    tail = _padded(x, initial_states, width)[..., length:]
    if seq_idx is not None and width > 1:
        tail_ids = _padded_seq_idx(seq_idx, width)[:, length:]
        tail = tail * (tail_ids == seq_idx[:, -1:]).unsqueeze(1).to(tail.dtype)
    return tail


def _activate(y: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    return F.silu(y) if activation in ("silu", "swish") else y


def causal_conv1d_ref(x, weight, bias=None, activation=None, seq_idx=None, initial_states=None):
    """Sequential ground truth: one output position at a time, in fp32. Returns y (B, D, L), x's dtype."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    acc_dtype = compute_dtype(x.dtype)
    xp = _padded(x.to(acc_dtype), None if initial_states is None else initial_states.to(acc_dtype), width)
    ids = None if seq_idx is None else _padded_seq_idx(seq_idx, width)
    w = weight.to(acc_dtype)
    outputs = []
    for t in range(length):
        window = xp[:, :, t:t + width]  # (B, D, W): the inputs output t reads
        if ids is not None:
            window = window * (ids[:, t:t + width] == ids[:, t + width - 1:t + width]).unsqueeze(1).to(acc_dtype)
        acc = (window * w).sum(-1)
        outputs.append(acc if bias is None else acc + bias.to(acc_dtype))
    y = torch.stack(outputs, dim=-1) if outputs else x.new_zeros(batch, dim, 0, dtype=acc_dtype)
    return _activate(y, activation).to(x.dtype)


def causal_conv1d_torch(x, weight, bias=None, activation=None, seq_idx=None, initial_states=None):
    """Fast torch backend: one grouped conv1d (or W masked shifted products with seq_idx), fp32 math."""
    width = weight.shape[1]
    length = x.shape[-1]
    acc_dtype = compute_dtype(x.dtype)
    xp = _padded(x.to(acc_dtype), None if initial_states is None else initial_states.to(acc_dtype), width)
    w = weight.to(acc_dtype)
    bias = None if bias is None else bias.to(acc_dtype)
    if seq_idx is None:
        y = F.conv1d(xp, w.unsqueeze(1), bias, groups=x.shape[1])
    else:
        ids = _padded_seq_idx(seq_idx, width)
        current = ids[:, width - 1:]
        y = 0.0 if bias is None else bias[:, None]
        for k in range(width):
            same = (ids[:, k:k + length] == current).unsqueeze(1).to(acc_dtype)
            y = y + w[:, k, None] * xp[:, :, k:k + length] * same
    return _activate(y, activation).to(x.dtype)
