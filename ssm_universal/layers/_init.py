"""Initialisations several layer families share."""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch


def log_uniform(size: Union[int, Sequence[int]], low: float, high: float, **factory) -> torch.Tensor:
    """log of samples log-uniform in [low, high] (uniform in [log low, log high]): the SSM step sizes' log_dt
    init. factory: torch.rand's device / dtype."""
    return torch.rand(size, **factory) * (math.log(high) - math.log(low)) + math.log(low)
