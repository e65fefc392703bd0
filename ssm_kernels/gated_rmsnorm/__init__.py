"""gated_rmsnorm: RMSNorm with an optional SiLU gate and group-wise statistics (Mamba-2's output norm)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch
from .._autograd import needs_grad
from .._utils import ArgCheck, beyond_int32_offsets, index_extent
from ._common import check_linear_inputs, check_norm_inputs, then_linear

_dispatch.register("gated_rmsnorm", "torch", "ssm_kernels.gated_rmsnorm.pytorch", "gated_rmsnorm_torch")
_dispatch.register("gated_rmsnorm", "triton", "ssm_kernels.gated_rmsnorm.triton", "gated_rmsnorm_triton",
                   supports=_dispatch.triton_int32_supports)


def gated_rmsnorm(x: torch.Tensor, weight: torch.Tensor, z: Optional[torch.Tensor] = None, eps: float = 1e-6,
                  group_size: Optional[int] = None, norm_before_gate: bool = True,
                  backend: Optional[str] = None, linear_weight: Optional[torch.Tensor] = None,
                  linear_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RMS-normalise x over groups of channels, scale by weight, and gate by silu(z) (mamba_ssm convention).

        norm_before_gate=True:  y = x / rms(x) * weight * silu(z)
        norm_before_gate=False: y = u / rms(u) * weight with u = x * silu(z)
    rms is taken over each group of group_size consecutive channels: sqrt(mean(u^2) + eps).

    Args:
        x: (..., D) fp32 / fp16 / bf16 (fp64 on the torch backend); any strides.
        weight: (D,) (may be fp32 while x is low precision).
        z: (..., D), x's shape, or None (no gate).
        eps: finite and > 0.
        group_size: a divisor of D, or None for D (one group).
        norm_before_gate: where the gate is applied, see above.
        backend: None (automatic), "torch" or "triton".
        linear_weight: (O, D) or None: a linear layer after the norm, y @ linear_weight^T + linear_bias, in
            linear_weight's dtype (autocast's where it is on), as nn.Linear would compute it. The norm's output is
            then not kept for the backward (recomputed inside the norm's backward on the triton backend, as
            mamba_ssm's fused Mamba-2 path does): the activation memory of a norm followed by out_proj.
        linear_bias: (O,) or None (only with linear_weight).
    Returns:
        y: (..., D) in x's dtype, or (..., O) with linear_weight; differentiable in every tensor argument.
    Example:
        >>> import torch, ssm_kernels
        >>> x, z = torch.randn(4, 64), torch.randn(4, 64)
        >>> ssm_kernels.gated_rmsnorm(x, torch.ones(64), z, group_size=16).shape
        torch.Size([4, 64])
    """
    check = ArgCheck("gated_rmsnorm")
    dim, group_size = check_norm_inputs(check, x, weight, z, eps, group_size, norm_before_gate)
    check_linear_inputs(check, linear_weight, linear_bias)
    if linear_weight is not None and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        linear_weight = linear_weight.to(dtype)
        linear_bias = None if linear_bias is None else linear_bias.to(dtype)

    if dim == 0:  # no channels to normalise
        return x.clone() if linear_weight is None else then_linear(x, linear_weight, linear_bias)
    # size: the numel of x
    fn = _dispatch.select("gated_rmsnorm", x.device, backend=backend, dtype=x.dtype, size=x.numel(),
                          grad=needs_grad(x, weight, z, linear_weight, linear_bias),
                          beyond_int32=beyond_int32_offsets(index_extent(x), index_extent(z), x.numel()))
    if linear_weight is None:
        return fn(x, weight, z, float(eps), group_size, norm_before_gate)
    return fn(x, weight, z, float(eps), group_size, norm_before_gate, linear_weight, linear_bias)


__all__ = ["gated_rmsnorm"]
