"""The torch backend of gated_rmsnorm (the CPU default): all groups at once through a (..., G, group_size)
view, fp32 math, autograd through torch. Shapes and the definition: reference.py."""
from __future__ import annotations

import torch

from .._utils import compute_dtype
from ._common import gated_input, gated_output, then_linear


def gated_rmsnorm_torch(x, weight, z=None, eps=1e-6, group_size=None, norm_before_gate=True, linear_weight=None,
                        linear_bias=None):
    """Fast torch backend: all groups at once through a (..., G, group_size) view, fp32 math; then the linear
    layer where linear_weight is given."""
    acc_dtype = compute_dtype(x.dtype)
    dim = x.shape[-1]
    group_size = dim if group_size is None else group_size
    xf, zf = x.to(acc_dtype), None if z is None else z.to(acc_dtype)
    u = gated_input(xf, zf, norm_before_gate)
    grouped = u.reshape(*u.shape[:-1], dim // group_size, group_size)
    rstd = torch.rsqrt(grouped.square().mean(-1, keepdim=True) + eps)
    y = (grouped * rstd).reshape(u.shape) * weight.to(acc_dtype)
    return then_linear(gated_output(y, zf, norm_before_gate).to(x.dtype), linear_weight, linear_bias)
