"""ssd_chunk_scan over a sequence split across a process group (cp_group); the scheme:
ssm_kernels._context_parallel."""
from __future__ import annotations

import torch

from .._context_parallel import check_shard_lengths, compose_states, exchange, group_position
from ._common import effective_dt


def ssd_chunk_scan_context_parallel(scan, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus: bool, dt_limit,
                                    initial_states, group, backend):
    """(out of this rank's shard, final states (B, H, P, N) of the whole sequence); scan is the public
    ssd_chunk_scan. The shard's decay per head is exp(A_h sum_t dt'_t)."""
    group_position(group, "ssd_chunk_scan")
    common = dict(chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
                  backend=backend)
    _, local_final = scan(x, dt, A, B, C, return_final_states=True, **common)
    steps = effective_dt(dt, dt_bias, dt_softplus, dt_limit, local_final.dtype).sum(1)  # (B, H)
    decay = torch.exp(A.to(local_final.dtype) * steps)[..., None, None]
    check_shard_lengths(group, "ssd_chunk_scan", [decay, local_final], ["decay", "state"], x.shape[1])
    entering, final = exchange(group, compose_states(False), initial_states, decay, local_final)
    return scan(x, dt, A, B, C, initial_states=entering, **common), final
