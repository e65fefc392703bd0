"""Prefill: a layer run over a whole prompt from a recurrent state, returning the outputs and the state after
the prompt, ready for `step`. Layers with a parallel form define `prefill(x, state) -> (y, state)` (the Mamba
family and S5 through their scans' final states, S4D, DSS, H3 and GSS through the diagonal recurrence in closed
form, S4 per chunk with its dense transition); a layer without one (a user's own mixer, GSS's EfficientDsConv)
is stepped through the prompt here, which gives the same result one launch sequence per token."""
from __future__ import annotations

from typing import Any, Tuple

import torch


def prefill(layer, x: torch.Tensor, state: Any) -> Tuple[Any, Any]:
    """x (B, L, d) and `layer`'s state (default_state or a later one) -> (y (B, L, d_out), the state after
    x's last position): layer.prefill where the layer has one, else layer.step position by position."""
    parallel = getattr(layer, "prefill", None)
    if parallel is not None:
        return parallel(x, state)
    outputs = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=1), state
