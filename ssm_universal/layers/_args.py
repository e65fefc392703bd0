"""Constructor-argument checks the layers share: the same TypeError / ValueError, naming the layer and the
argument, for the same bad value in any of them (ArgCheck gives the layer's name)."""
from __future__ import annotations

from typing import Optional

from ssm_kernels.validation import ArgCheck


def positive(check: ArgCheck, name: str, value) -> float:
    """value as a float, finite and > 0."""
    value = check.finite(name, value)
    if value <= 0:
        check.fail(f"{name} must be > 0, got {value}")
    return value


def flags(check: ArgCheck, **values) -> None:
    """Each of the named values is a bool."""
    for name, value in values.items():
        if not isinstance(value, bool):
            check.fail(f"{name} must be a bool, got {type(value).__name__}", TypeError)


def dropout_rate(check: ArgCheck, dropout) -> float:
    """A dropout probability in [0, 1)."""
    if not 0.0 <= check.finite("dropout", dropout) < 1.0:
        check.fail(f"dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


def modal_sizes(check: ArgCheck, d_model, d_state, l_max, *, conjugate_pairs: bool = True) -> None:
    """d_model >= 1; d_state >= 2 and even when the layer keeps N/2 modes and their conjugates (>= 1 otherwise);
    l_max None or >= 1."""
    check.integer("d_model", d_model, 1)
    check.integer("d_state", d_state, 2 if conjugate_pairs else 1)
    if conjugate_pairs and d_state % 2:
        check.fail(f"d_state must be even (N/2 complex modes and their conjugates), got {d_state}")
    if l_max is not None:
        check.integer("l_max", l_max, 1)


def timescale(check: ArgCheck, dt_min, dt_max) -> None:
    """The step-size range of a discretised SSM: 0 < dt_min <= dt_max, both finite."""
    positive(check, "dt_min", dt_min)
    positive(check, "dt_max", dt_max)
    if dt_min > dt_max:
        check.fail(f"dt_min ({dt_min}) must not exceed dt_max ({dt_max})")


def learning_rate(check: ArgCheck, lr: Optional[float]) -> None:
    """None (the optimizer's), or a finite rate >= 0 for the SSM parameters."""
    if lr is not None and check.finite("lr", lr) < 0:
        check.fail(f"lr must be None or a finite number >= 0, got {lr!r}")
