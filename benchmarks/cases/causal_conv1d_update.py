"""causal_conv1d_update: the Mamba decoding step, (B, D) one token, width 4, SiLU."""
from __future__ import annotations

import torch

from ssm_kernels import _dispatch
from ssm_kernels.causal_conv1d_update import causal_conv1d_update
from ssm_kernels.causal_conv1d_update.reference import causal_conv1d_update_ref

from .. import peers
from ..core import Case, Variant


def _case(batch: int, dim: int, steps: int, width: int, dtype: torch.dtype) -> Case:
    def make(device, with_peers):
        x = torch.randn(batch, dim, steps, device=device, dtype=dtype)
        state = torch.randn(batch, dim, width - 1, device=device, dtype=dtype)
        w = torch.randn(dim, width, device=device, dtype=dtype)
        b = torch.randn(dim, device=device, dtype=dtype)
        variants = {}
        for backend in _dispatch.implemented_backends("causal_conv1d_update"):
            if _dispatch.backend_problem(backend, device) is None:
                variants[backend] = Variant(
                    lambda backend=backend: causal_conv1d_update(x, state, w, b, "silu", backend=backend))
        variants["reference"] = Variant(lambda: causal_conv1d_update_ref(x, state, w, b, "silu"))
        peer = peers.load("causal_conv1d.causal_conv1d_interface", "causal_conv1d_update") if with_peers else None
        if peer is not None and device.type == "cuda":
            variants["peer:causal_conv1d"] = Variant(lambda: peer(x, state, w, b, "silu"))
        return variants

    size = dtype.itemsize
    # x in, y out, the state read and written
    nbytes = 2 * batch * dim * steps * size + 2 * batch * dim * (width - 1) * size
    return Case("causal_conv1d_update", f"B{batch} D{dim} T{steps} W{width} {str(dtype).replace('torch.', '')}",
                make, bytes_fwd=nbytes, dtype=dtype,
                dispatch_size=batch * dim * steps)


def cases(quick: bool):
    if quick:
        return [_case(4, 1024, 1, 4, torch.float32)]
    return [_case(1, 4096, 1, 4, torch.bfloat16),  # one decoding step at batch 1, end to end
            _case(16, 4096, 1, 4, torch.float32), _case(16, 4096, 4, 4, torch.float32)]
