"""The torch backend of causal_conv1d_update (the CPU default): all T tokens at once as W shifted products,
fp32 math, the state written in place. Shapes and the definition: reference.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._utils import compute_dtype


def causal_conv1d_update_torch(x, conv_state, weight, bias=None, activation=None):
    """Fast torch backend: all T tokens at once as W shifted products (W is small), fp32 math.
    x: (B, D, T), or (B, D) for one token."""
    if x.dim() == 2:
        return causal_conv1d_update_torch(x.unsqueeze(-1), conv_state, weight, bias, activation).squeeze(-1)
    width, state_len, steps = weight.shape[1], conv_state.shape[-1], x.shape[-1]
    acc_dtype = compute_dtype(x.dtype)
    extended = torch.cat([conv_state.to(acc_dtype), x.to(acc_dtype)], dim=-1)  # (B, D, S + T)
    w = weight.to(acc_dtype).unsqueeze(-1)  # (D, W, 1)
    first = state_len + 1 - width  # position in extended of the oldest input of the first output
    y = extended[..., first:first + steps] * w[:, 0]
    if bias is not None:
        y += bias.to(acc_dtype)[:, None]
    for k in range(1, width):
        y.addcmul_(extended[..., first + k:first + k + steps], w[:, k])
    if activation in ("silu", "swish"):
        y = F.silu(y)
    conv_state.copy_(extended[..., steps:])
    return y.to(x.dtype)
