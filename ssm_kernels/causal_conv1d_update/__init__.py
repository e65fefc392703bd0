"""causal_conv1d_update: one decoding step (or T steps) of the causal depthwise conv1d, state in place."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch
from .._utils import REAL_DTYPES, ArgCheck, PassedChecks

ACTIVATIONS = (None, "silu", "swish")  # "swish" is mamba_ssm's alias of "silu"

_dispatch.register("causal_conv1d_update", "torch", "ssm_kernels.causal_conv1d_update.pytorch",
                   "causal_conv1d_update_torch")
_dispatch.register("causal_conv1d_update", "triton", "ssm_kernels.causal_conv1d_update.triton",
                   "causal_conv1d_update_triton", supports=_dispatch.kernel_dtype_supports)


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, activation: Optional[str] = None,
                         backend: Optional[str] = None) -> torch.Tensor:
    """Advance causal_conv1d by the new tokens x, reading and updating conv_state in place.

    conv_state holds the last S inputs, oldest first; the output equals causal_conv1d over the whole
    sequence at the new positions, and conv_state is shifted left by T with x appended (causal-conv1d's
    causal_conv1d_update semantics). With S == W - 1 the state is causal_conv1d's final_states.

    Args:
        x: (B, D) one token, or (B, D, T) T new tokens; fp32 / fp16 / bf16 (fp64 on the torch backend).
        conv_state: (B, D, S) with S >= W - 1, x's dtype; any strides; overwritten with the new state.
        weight: (D, W), W >= 1.
        bias: (D,) or None.
        activation: None, "silu" (or its alias "swish").
        backend: None (automatic), "torch" or "triton".
    Returns:
        y: x's shape and dtype. Not differentiable through conv_state (an "update" op).
    Example:
        >>> import torch, ssm_kernels
        >>> conv_state = torch.zeros(2, 16, 3)
        >>> x, weight = torch.randn(2, 16), torch.randn(16, 4)
        >>> ssm_kernels.causal_conv1d_update(x, conv_state, weight, activation="silu").shape  # conv_state updated
        torch.Size([2, 16])
    """
    key = _PASSED.key((x, conv_state, weight, bias), activation)
    if not _PASSED.known(key):
        _validate(x, conv_state, weight, bias, activation)
        _PASSED.remember(key)
    activation = "silu" if activation in ("silu", "swish") else None
    if x.dim() == 3 and x.shape[-1] == 0:
        return x.clone()  # no new tokens: the state is unchanged
    # size: B * D * T, the numel of x (a decoding step: no backward)
    fn = _dispatch.select("causal_conv1d_update", x.device, backend=backend, dtype=x.dtype, size=x.numel())
    return fn(x, conv_state, weight, bias, activation)


_PASSED = PassedChecks()  # called once per decoded token: see PassedChecks


def _validate(x, conv_state, weight, bias, activation):
    check = ArgCheck("causal_conv1d_update")
    if isinstance(x, torch.Tensor) and x.dim() not in (2, 3):
        check.fail(f"x must have shape (B, D) or (B, D, T), got {tuple(x.shape)}")
    single = isinstance(x, torch.Tensor) and x.dim() == 2
    check.tensor("x", x, ("B", "D") if single else ("B", "D", "T"), dtypes=REAL_DTYPES)
    check.tensor("conv_state", conv_state, ("B", "D", "S"), dtypes=(x.dtype,))
    check.tensor("weight", weight, ("D", "W"), dtypes=REAL_DTYPES)
    width = check.integer("weight.shape[1] (the width W)", check.dims["W"], minimum=1)
    check.integer("conv_state.shape[2] (the state length S)", check.dims["S"], minimum=width - 1)
    check.tensor("bias", bias, ("D",), dtypes=REAL_DTYPES, optional=True)
    check.choice("activation", activation, ACTIVATIONS)


__all__ = ["causal_conv1d_update"]
