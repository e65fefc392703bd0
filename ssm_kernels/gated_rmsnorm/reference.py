"""Sequential fp32 ground truth of the gated RMSNorm (Mamba-2's RMSNormGated).

Shapes: x, z (..., D); weight (D,); groups of group_size consecutive channels (G = D / group_size).
    norm_before_gate=True:  y = rmsnorm(x) * weight * silu(z)
    norm_before_gate=False: y = rmsnorm(x * silu(z)) * weight
with rmsnorm(u)[..., c] = u[..., c] / sqrt(mean over c's group of u^2 + eps); without z, y = rmsnorm(x) * weight.
This is mamba_ssm's rmsnorm_fn / rms_norm_ref (layernorm_gated.py) without bias. With linear_weight (O, D) and
linear_bias (O,), y @ linear_weight^T + linear_bias (a linear layer after the norm).
"""
from __future__ import annotations

import torch

from .._utils import compute_dtype
from ._common import gated_input, gated_output, then_linear


def gated_rmsnorm_ref(x, weight, z=None, eps=1e-6, group_size=None, norm_before_gate=True, linear_weight=None,
                      linear_bias=None):
    """Sequential ground truth: one group of channels at a time, in fp32. Returns y (..., D), x's dtype, or
    y @ linear_weight^T + linear_bias (..., O) in linear_weight's dtype where linear_weight is given."""
    acc_dtype = compute_dtype(x.dtype)
    dim = x.shape[-1]
    group_size = dim if group_size is None else group_size
    xf, zf, w = x.to(acc_dtype), None if z is None else z.to(acc_dtype), weight.to(acc_dtype)
    u = gated_input(xf, zf, norm_before_gate)
    pieces = []
    for start in range(0, dim, group_size):
        group = u[..., start:start + group_size]
        mean_square = (group * group).sum(-1, keepdim=True) / group_size
        pieces.append(group / torch.sqrt(mean_square + eps) * w[start:start + group_size])
    y = torch.cat(pieces, dim=-1)
    return then_linear(gated_output(y, zf, norm_before_gate).to(x.dtype), linear_weight, linear_bias)
