"""The torch backend of causal_conv1d (the CPU default): one grouped conv1d, or W masked shifted products
with seq_idx, in fp32; autograd through torch. Shapes and the definition: reference.py."""
from __future__ import annotations

import torch.nn.functional as F

from .._utils import compute_dtype
from ._common import activate, padded, padded_seq_idx


def causal_conv1d_torch(x, weight, bias=None, activation=None, seq_idx=None, initial_states=None):
    """Fast torch backend: one grouped conv1d (or W masked shifted products with seq_idx), fp32 math."""
    width = weight.shape[1]
    length = x.shape[-1]
    acc_dtype = compute_dtype(x.dtype)
    xp = padded(x.to(acc_dtype), None if initial_states is None else initial_states.to(acc_dtype), width)
    w = weight.to(acc_dtype)
    bias = None if bias is None else bias.to(acc_dtype)
    if seq_idx is None:
        y = F.conv1d(xp, w.unsqueeze(1), bias, groups=x.shape[1])
    else:
        ids = padded_seq_idx(seq_idx, width)
        current = ids[:, width - 1:]
        y = 0.0 if bias is None else bias[:, None]
        for k in range(width):
            same = (ids[:, k:k + length] == current).unsqueeze(1).to(acc_dtype)
            y = y + w[:, k, None] * xp[:, :, k:k + length] * same
    return activate(y, activation).to(x.dtype)
