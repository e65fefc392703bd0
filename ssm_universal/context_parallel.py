"""Context parallelism for whole models: the sequence split across the ranks of a torch.distributed group.

    model = su.create_model("mamba2", d_model=512, n_layer=8, cp_group=group)    # or
    su.set_context_parallel(model, group)
    y_shard = model(x_shard)          # x_shard: this rank's contiguous part of the sequence (ranks in order)

Layers that mix along the sequence and support it (attribute context_parallel = True: Mamba, Mamba2, S5, causal
S4D without l_max, the residual block's convolution gate) pass the group to their ssm_kernels ops (cp_group=, see
ssm_kernels._context_parallel); position-wise modules need nothing. Layers that mix along the sequence without
support (context_parallel = False: the other FFT-convolution layers S4, DSS, S4ND, H3, bidirectional S4D, the GSS family,
Mamba2Sequential, HiSS) make set_context_parallel raise. Gradients of parameters are each rank's contribution:
wrap the model in DDP / FSDP over the group (with the data-parallel ranks) so they are summed.
"""
from __future__ import annotations

from typing import Optional

import torch.nn as nn


def set_context_parallel(model: nn.Module, group: Optional[object]) -> nn.Module:
    """Run every sequence-mixing layer of `model` with its sequence split across `group` (None: one process
    again). Returns model. ValueError, naming them, when some layer cannot."""
    if group is not None:
        unsupported = sorted({type(m).__name__ for m in model.modules() if getattr(m, "context_parallel", None) is False})
        if unsupported:
            raise ValueError(f"set_context_parallel: {', '.join(unsupported)} cannot split the sequence across "
                             "ranks (context parallelism covers Mamba, Mamba2, S5, causal S4D and the convolution gate)")
    for module in model.modules():
        if getattr(module, "context_parallel", None) is True:
            module.cp_group = group
    return model


def check_no_state(layer: str, cp_group, **arguments) -> None:
    """ValueError for decoding / packed-sequence arguments given to a layer running with cp_group."""
    given = [name for name, value in arguments.items() if value is not None]
    if cp_group is not None and given:
        raise ValueError(f"{layer}: {', '.join(given)} cannot be combined with context parallelism (cp_group); "
                         "run decoding and packed sequences without it")


__all__ = ["set_context_parallel"]
