"""selective_scan over a sequence split across a process group (cp_group); the scheme:
ssm_kernels._context_parallel."""
from __future__ import annotations

import torch

from .._context_parallel import check_shard_lengths, compose_states, exchange, group_position
from ._common import softplus_delta


def selective_scan_context_parallel(scan, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool,
                                    initial_state, group, backend):
    """(y of this rank's shard, final state (B, D, N) of the whole sequence); scan is the public selective_scan.
    The shard's decay is exp(A sum_t Δ_t), the product of its per-step decays exp(Δ_t A)."""
    group_position(group, "selective_scan")
    _, local_final = scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                          return_final_state=True, backend=backend)
    steps = softplus_delta(delta, delta_bias, delta_softplus, local_final.real.dtype).sum(-1)  # (B, D)
    decay = torch.exp(A.to(local_final.dtype)[None] * steps[..., None])
    check_shard_lengths(group, "selective_scan", [decay, local_final], ["decay", "state"], u.shape[-1])
    entering, final = exchange(group, compose_states(False), initial_state, decay, local_final)
    y = scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
             initial_state=entering, backend=backend)
    return y, final
