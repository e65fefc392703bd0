"""Sequential fp32 ground truth of the causal depthwise conv1d decoding step.

Shapes: x (B, D, T) new tokens; conv_state (B, D, S), S >= W - 1, the last S inputs, oldest first;
weight (D, W); bias (D,). With xp = cat(conv_state, x) along the last axis:
    y[b, d, t] = act(bias[d] + sum_k weight[d, k] * xp[b, d, S + t - W + 1 + k])
and conv_state becomes xp[..., T:] (shifted left by T, the new tokens appended), written in place.
This is causal-conv1d's causal_conv1d_update_ref (without cache_seqlens).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._utils import compute_dtype


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None):
    """Sequential ground truth: one token at a time, shift the state, dot the last W inputs with weight.

    x: (B, D) or (B, D, T); conv_state: (B, D, S), updated in place. Returns y, x's shape and dtype.
    """
    if x.dim() == 2:
        return causal_conv1d_update_ref(x.unsqueeze(-1), conv_state, weight, bias, activation).squeeze(-1)
    width, state_len = weight.shape[1], conv_state.shape[-1]
    acc_dtype = compute_dtype(x.dtype)
    state = conv_state.to(acc_dtype)
    w = weight.to(acc_dtype)
    outputs = []
    for t in range(x.shape[-1]):
        extended = torch.cat([state, x[..., t:t + 1].to(acc_dtype)], dim=-1)  # (B, D, S + 1)
        window = extended[..., state_len + 1 - width:]  # the last W inputs, oldest first
        acc = torch.zeros_like(window[..., 0]) if bias is None else bias.to(acc_dtype).expand_as(window[..., 0])
        for k in range(width):
            acc = acc + w[:, k] * window[..., k]
        outputs.append(F.silu(acc) if activation in ("silu", "swish") else acc)
        state = extended[..., 1:]
    conv_state.copy_(state)
    if not outputs:
        return x.new_zeros(x.shape)
    return torch.stack(outputs, dim=-1).to(x.dtype)
