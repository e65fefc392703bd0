"""Sequential fp32 ground truth of selective_state_update (one decoding step of the selective scan, state
updated in place). Shapes and the definition: _common.py."""
from __future__ import annotations

from ._common import in_heads_form, step


@in_heads_form
def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                               state_batch_indices=None):
    """Ground truth, fp32 math: every head gets its own copy of its group's B, C."""
    return step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices,
                lambda X, heads: X.repeat_interleave(heads // X.shape[1], dim=1))
