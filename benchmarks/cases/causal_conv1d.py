"""causal_conv1d: (B, D, L) width 4 with SiLU, the Mamba short conv."""
from __future__ import annotations

import torch

from ssm_kernels import _dispatch
from ssm_kernels.causal_conv1d import causal_conv1d
from ssm_kernels.causal_conv1d.reference import causal_conv1d_ref

from .. import peers
from ..core import Case, Variant


def _case(batch: int, dim: int, length: int, width: int, dtype: torch.dtype, reference: bool) -> Case:
    def make(device, with_peers):
        x = torch.randn(batch, dim, length, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(dim, width, device=device, dtype=dtype, requires_grad=True)
        b = torch.randn(dim, device=device, dtype=dtype, requires_grad=True)
        variants = {}
        for backend in _dispatch.implemented_backends("causal_conv1d"):
            if _dispatch.backend_problem(backend, device, "causal_conv1d") is None:
                variants[backend] = Variant(lambda backend=backend: causal_conv1d(x, w, b, "silu", backend=backend),
                                            (x, w, b))
        if reference:
            variants["reference"] = Variant(lambda: causal_conv1d_ref(x, w, b, "silu"), (x, w, b))
        peer = peers.load("causal_conv1d.causal_conv1d_interface", "causal_conv1d_fn") if with_peers else None
        if peer is not None:
            variants["peer:causal_conv1d"] = Variant(lambda: peer(x, w, b, activation="silu"), (x, w, b))
        return variants

    size = dtype.itemsize
    io = batch * dim * length * size
    return Case("causal_conv1d", f"B{batch} D{dim} L{length} W{width} {str(dtype).replace('torch.', '')}", make,
                bytes_fwd=2 * io, bytes_fwd_bwd=5 * io, dtype=dtype, dispatch_size=batch * dim * length)  # fwd: x in, y out; bwd adds x, dy in, dx out


def cases(quick: bool):
    if quick:
        return [_case(2, 256, 512, 4, torch.float32, reference=True)]
    return [_case(4, 4096, 4096, 4, torch.bfloat16, reference=False),
            _case(4, 4096, 4096, 4, torch.float32, reference=False),
            _case(4, 4096, 4096, 4, torch.float16, reference=False),
            _case(1, 1024, 2048, 4, torch.float32, reference=True)]
