"""Helpers shared by gated_rmsnorm's front, reference and torch backend (and compat's rmsnorm_fn): the argument
checks and where the SiLU gate applies."""
from __future__ import annotations

from typing import Optional, Tuple

import torch.nn.functional as F

from .._utils import REAL_DTYPES, ArgCheck


def check_norm_inputs(check: ArgCheck, x, weight, z, eps, group_size, norm_before_gate
                      ) -> Tuple[int, Optional[int]]:
    """Validate gated_rmsnorm's arguments (errors named after check's op); returns (D, group_size)."""
    check.tensor("x", x, dtypes=REAL_DTYPES)
    if x.dim() < 1:
        check.fail("x must have shape (..., D), got a 0-dim tensor")
    check.dims["D"] = dim = x.shape[-1]
    check.tensor("weight", weight, ("D",), dtypes=REAL_DTYPES)
    check.tensor("z", z, dtypes=REAL_DTYPES, optional=True)
    if z is not None and z.shape != x.shape:
        check.fail(f"z must have x's shape (..., D) = {tuple(x.shape)}, got {tuple(z.shape)}")
    if check.finite("eps", eps) <= 0:
        check.fail(f"eps must be > 0, got {eps}")
    if group_size is not None:
        group_size = check.integer("group_size", group_size, minimum=1)
        if dim % group_size:
            check.fail(f"group_size must divide D = {dim}, got {group_size}")
    if not isinstance(norm_before_gate, bool):
        check.fail(f"norm_before_gate must be a bool, got {type(norm_before_gate).__name__}", TypeError)
    return dim, group_size


def check_linear_inputs(check: ArgCheck, linear_weight, linear_bias) -> None:
    """Validate the linear layer after the norm (after check_norm_inputs: D is bound)."""
    check.tensor("linear_weight", linear_weight, ("O", "D"), dtypes=REAL_DTYPES, optional=True)
    check.tensor("linear_bias", linear_bias, ("O",), dtypes=REAL_DTYPES, optional=True)
    if linear_bias is not None and linear_weight is None:
        check.fail("linear_bias needs linear_weight (the linear layer after the norm)")


def gated_input(x, z, norm_before_gate):
    """x * silu(z) when the gate comes before the norm, else x."""
    return x * F.silu(z) if z is not None and not norm_before_gate else x


def gated_output(y, z, norm_before_gate):
    """y * silu(z) when the gate comes after the norm, else y."""
    return y * F.silu(z) if z is not None and norm_before_gate else y


def then_linear(y, linear_weight, linear_bias):
    """y @ linear_weight^T + linear_bias in linear_weight's dtype, or y where linear_weight is None."""
    if linear_weight is None:
        return y
    return F.linear(y.to(linear_weight.dtype), linear_weight, linear_bias)
