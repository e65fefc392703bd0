"""The parameter initialisation the Mamba blocks (Mamba, Mamba2, Mamba2Sequential) share, as mamba_ssm does it.

Each helper draws from torch's global RNG in mamba_ssm's order, so a block that calls them in its constructor at
the point mamba_ssm creates the same parameter gets mamba_ssm's initial values from the same seed.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ._init import log_uniform


def no_weight_decay(tensor: torch.Tensor) -> nn.Parameter:
    """`tensor` as an nn.Parameter marked `_no_weight_decay` (mamba_ssm's optimizer setups exclude it)."""
    param = nn.Parameter(tensor)
    param._no_weight_decay = True
    return param


def depthwise_conv1d(channels: int, d_conv: int, conv_bias: bool, conv_init: Optional[float] = None,
                     device=None, dtype=None) -> nn.Conv1d:
    """The causal depthwise conv as an nn.Conv1d, for mamba_ssm's parameter layout: weight (channels, 1, d_conv),
    bias (channels,). nn.Conv1d's init, or weights uniform in [-conv_init, conv_init] when conv_init is given.
    The blocks never call it: ssm_kernels.causal_conv1d computes the convolution from these parameters."""
    conv = nn.Conv1d(channels, channels, kernel_size=d_conv, groups=channels, padding=d_conv - 1, bias=conv_bias,
                     device=device, dtype=dtype)
    if conv_init is not None:
        nn.init.uniform_(conv.weight, -conv_init, conv_init)
    return conv


def dt_bias_init(size: int, dt_min: float, dt_max: float, dt_init_floor: float, device=None,
                 dtype=None) -> torch.Tensor:
    """(size,) in `dtype`: softplus^-1(dt) for dt drawn log-uniform in [dt_min, dt_max] and raised to at least
    dt_init_floor, so that softplus(dt_bias) = dt."""
    dt = torch.exp(log_uniform(size, dt_min, dt_max, device=device, dtype=dtype))
    dt = torch.clamp(dt, min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus^-1


def s4d_real_A_log(d_inner: int, d_state: int, device=None) -> torch.Tensor:
    """(d_inner, d_state) fp32: log(1), ..., log(d_state) in every row, so A = -exp(A_log) = -(n + 1) (S4D-real).
    Draws nothing from the RNG."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(d_inner, 1))


def uniform_A_log(nheads: int, A_init_range: Tuple[float, float], device=None, dtype=None) -> torch.Tensor:
    """(nheads,) in `dtype`: the log of a uniform fp32 sample in A_init_range, one scalar A = -exp(A_log) per head."""
    A = torch.empty(nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
    return torch.log(A).to(dtype=dtype)


def ones_D(size: int, device=None) -> torch.Tensor:
    """(size,) fp32 ones: the D skip starts as the identity (fp32 whatever the block's dtype, as mamba_ssm)."""
    return torch.ones(size, device=device)
