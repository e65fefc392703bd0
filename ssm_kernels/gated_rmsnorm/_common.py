"""Helpers shared by gated_rmsnorm's reference and torch backend: where the SiLU gate applies."""
from __future__ import annotations

import torch.nn.functional as F


def gated_input(x, z, norm_before_gate):
    """x * silu(z) when the gate comes before the norm, else x."""
    return x * F.silu(z) if z is not None and not norm_before_gate else x


def gated_output(y, z, norm_before_gate):
    """y * silu(z) when the gate comes after the norm, else y."""
    return y * F.silu(z) if z is not None and norm_before_gate else y
