"""The torch backend of selective_state_update (the CPU default): the reference's step with groups broadcast
instead of copied. Shapes and the definition: _common.py."""
from __future__ import annotations

from ._common import in_heads_form, step


@in_heads_form
def selective_state_update_torch(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                 state_batch_indices=None):
    """Torch backend: the same step, with groups broadcast instead of copied."""
    def broadcast(X, heads):
        groups = X.shape[1]
        if groups in (1, heads):
            return X
        return X[:, :, None].expand(X.shape[0], groups, heads // groups, X.shape[2]).flatten(1, 2)
    return step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, broadcast)
