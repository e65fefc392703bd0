"""The constructor-argument checks the Mamba blocks (Mamba, Mamba2, Mamba2Sequential) share: the same
TypeError / ValueError, naming the block and the argument, for the same bad value in any of them."""
from __future__ import annotations

import math
import numbers
from typing import Tuple

from ssm_kernels.validation import ArgCheck

from ._args import positive


def real_pair(check: ArgCheck, name: str, value) -> Tuple[float, float]:
    """(low, high) of two real numbers (not NaN) with low <= high."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        check.fail(f"{name} must be a pair (low, high), got {value!r}", TypeError)
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
            check.fail(f"{name} must hold two real numbers, got {value!r}", TypeError)
    low, high = value
    if low > high:
        check.fail(f"{name} must have low <= high, got {tuple(value)}")
    return float(low), float(high)


def inner_width(check: ArgCheck, d_model: int, expand) -> int:
    """d_inner = expand * d_model, which must be a whole number."""
    positive(check, "expand", expand)
    if expand * d_model != int(expand * d_model):
        check.fail(f"expand * d_model must be an integer, got {expand} * {d_model}")
    return int(expand * d_model)


def dt_init_range(check: ArgCheck, dt_min, dt_max, dt_init_floor) -> Tuple[float, float, float]:
    """(dt_min, dt_max, dt_init_floor), each > 0, dt_min <= dt_max: the range dt_bias_init draws from."""
    dt_min, dt_max = positive(check, "dt_min", dt_min), positive(check, "dt_max", dt_max)
    if dt_min > dt_max:
        check.fail(f"dt_min must be <= dt_max, got {dt_min} > {dt_max}")
    return dt_min, dt_max, positive(check, "dt_init_floor", dt_init_floor)


def A_init_range_of(check: ArgCheck, A_init_range) -> Tuple[float, float]:
    """Mamba-2's A_init_range: 0 < low <= high < inf."""
    low, high = real_pair(check, "A_init_range", A_init_range)
    if low <= 0 or not math.isfinite(high):
        check.fail(f"A_init_range must satisfy 0 < low <= high < inf, got {tuple(A_init_range)}")
    return low, high


def dt_limit_of(check: ArgCheck, dt_limit) -> Tuple[float, float]:
    """Mamba-2's dt_limit: (finite low, high <= inf)."""
    low, high = real_pair(check, "dt_limit", dt_limit)
    if not math.isfinite(low) or high == -math.inf:
        check.fail(f"dt_limit must be (finite low, high <= inf), got {tuple(dt_limit)}")
    return low, high
