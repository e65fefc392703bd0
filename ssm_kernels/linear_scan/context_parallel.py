"""linear_scan over a sequence split across a process group (cp_group); the scheme: ssm_kernels._context_parallel."""
from __future__ import annotations

import torch

from .._context_parallel import check_shard_lengths, compose_states, exchange, group_position


def gate_product(gates: torch.Tensor, length: int) -> torch.Tensor:
    """The product of the gates over the shard: (B, D) or (D,) (a (D,) gate is shared over time: gates^L)."""
    return gates ** length if gates.dim() == 1 else torch.prod(gates, dim=-1)


def linear_scan_context_parallel(scan, gates, tokens, initial_state, reverse: bool, group, backend):
    """(x of this rank's shard, final state of the whole sequence): scan(...) is the public linear_scan."""
    group_position(group, "linear_scan")
    _, local_final = scan(gates, tokens, reverse=reverse, return_final_state=True, backend=backend)
    decay = gate_product(gates, tokens.shape[-1])
    check_shard_lengths(group, "linear_scan", [decay, local_final], ["gate product", "state"], tokens.shape[-1])
    entering, final = exchange(group, compose_states(reverse), initial_state, decay, local_final)
    return scan(gates, tokens, entering, reverse=reverse, backend=backend), final
