"""Helpers shared by causal_conv1d's reference and backends: the padded input, the final state, and the
autograd rule of the kernel backends (their custom ops take the same arguments).

Shapes: x (B, D, L); weight (D, W); bias (D,); seq_idx (B, L) int; initial_states (B, D, W-1).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._utils import INDEX_DTYPES, REAL_DTYPES


def padded(x: torch.Tensor, initial_states: Optional[torch.Tensor], width: int) -> torch.Tensor:
    """xp: (B, D, W - 1 + L), the initial state (zeros by default) followed by x."""
    if initial_states is None:
        return F.pad(x, (width - 1, 0))
    return torch.cat([initial_states.to(x.dtype), x], dim=-1)


def padded_seq_idx(seq_idx: torch.Tensor, width: int) -> torch.Tensor:
    """(B, W - 1 + L): the initial-state positions carry the first token's sequence id."""
    return torch.cat([seq_idx[:, :1].expand(-1, width - 1), seq_idx], dim=-1)


def final_states(x: torch.Tensor, initial_states: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor],
                 width: int) -> torch.Tensor:
    """(B, D, W-1): the last W-1 inputs, the state that continues the last sequence in the next call.

    Positions of earlier sequences (under seq_idx) are zero, so a varlen batch's final state equals the
    final state of its last sequence run alone. Differentiable; shared by every backend.
    """
    length = x.shape[-1]
    tail = padded(x, initial_states, width)[..., length:]
    if seq_idx is not None and width > 1:
        tail_ids = padded_seq_idx(seq_idx, width)[:, length:]
        tail = tail * (tail_ids == seq_idx[:, -1:]).unsqueeze(1).to(tail.dtype)
    return tail


def activate(y: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    """SiLU for "silu" / "swish", the identity for None."""
    return F.silu(y) if activation in ("silu", "swish") else y


def save_for_backward(ctx, inputs, output):
    """setup_context of the kernel backends' forward ops (x, weight, bias, seq_idx, initial_states, silu)."""
    x, weight, bias, seq_idx, initial_states, silu = inputs
    ctx.save_for_backward(x, weight, bias, seq_idx, initial_states)
    ctx.silu = silu


def gradients(backward_op, ctx, dout):
    """The autograd rule of the kernel backends: backward_op(x, weight, bias, seq_idx, initial_states, dout,
    silu) -> (dx, dweight, dbias, dinitial_states), None for the inputs that were absent."""
    x, weight, bias, seq_idx, initial_states = ctx.saved_tensors
    dx, dweight, dbias, dinitial = backward_op(x, weight, bias, seq_idx, initial_states, dout, ctx.silu)
    return (dx, dweight, dbias if bias is not None else None, None,
            dinitial if initial_states is not None else None, None)


def check_conv_inputs(check, x, weight, bias, seq_idx, initial_states) -> int:
    """The tensor arguments of causal_conv1d (and causal-conv1d's causal_conv1d_fn): x (B, D, L), weight (D, W),
    bias (D,), seq_idx (B, L), initial_states (B, D, W - 1) in x's dtype. Returns the width W."""
    check.tensor("x", x, ("B", "D", "L"), dtypes=REAL_DTYPES)
    check.tensor("weight", weight, ("D", "W"), dtypes=REAL_DTYPES)
    width = check.integer("weight.shape[1] (the width W)", check.dims["W"], minimum=1)
    check.tensor("bias", bias, ("D",), dtypes=REAL_DTYPES, optional=True)
    check.tensor("seq_idx", seq_idx, ("B", "L"), dtypes=INDEX_DTYPES, optional=True)
    check.tensor("initial_states", initial_states, ("B", "D", width - 1), dtypes=(x.dtype,), optional=True)
    return width
