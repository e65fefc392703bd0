"""causal_conv1d over a sequence split across a process group (cp_group): each rank needs the W - 1 inputs
before its shard, the tail of the previous rank's shard (all-gathered; ssm_kernels._context_parallel)."""
from __future__ import annotations

from .._context_parallel import check_shard_lengths, exchange, group_position


def _halos(rank, initial, tails):
    """(the W - 1 inputs before this rank's shard, the final state of the whole sequence)."""
    before = tails[rank - 1] if rank > 0 else (initial.to(tails.dtype) if initial is not None
                                               else tails.new_zeros(tails.shape[1:]))
    return before, tails[-1]


def causal_conv1d_context_parallel(conv, x, weight, bias, activation, initial_states, group, backend):
    """(y of this rank's shard, final states (B, D, W - 1) of the whole sequence); conv is the public
    causal_conv1d. Every shard must hold at least W - 1 positions."""
    group_position(group, "causal_conv1d")
    width = weight.shape[-1]
    check_shard_lengths(group, "causal_conv1d", [x[..., :0], weight], ["x", "weight"], x.shape[-1],
                        minimum=max(1, width - 1))
    tail = x[..., x.shape[-1] - (width - 1):]
    before, final = exchange(group, _halos, initial_states, tail)
    return conv(x, weight, bias, activation=activation, initial_states=before, backend=backend), final
