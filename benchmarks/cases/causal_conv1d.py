"""causal_conv1d: (B, D, L) with SiLU, the Mamba short conv: widths 2 to 8, channel-first (L contiguous) and
channel-last (D contiguous, Mamba-2's conv input) layouts."""
from __future__ import annotations

import torch

from ssm_kernels import _dispatch
from ssm_kernels.causal_conv1d import causal_conv1d
from ssm_kernels.causal_conv1d.reference import causal_conv1d_ref

from .. import peers
from ..core import Case, Variant


def _case(batch: int, dim: int, length: int, width: int, dtype: torch.dtype, reference: bool,
          channel_last: bool = False) -> Case:
    def make(device, with_peers):
        if channel_last:
            x = torch.randn(batch, length, dim, device=device, dtype=dtype).transpose(1, 2).requires_grad_()
        else:
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
        if peer is not None and width <= 4:  # causal-conv1d takes widths 2 to 4
            variants["peer:causal_conv1d"] = Variant(lambda: peer(x, w, b, activation="silu"), (x, w, b))
        return variants

    size = dtype.itemsize
    io = batch * dim * length * size
    layout = " channel-last" if channel_last else ""
    name = f"B{batch} D{dim} L{length} W{width}{layout} {str(dtype).replace('torch.', '')}"
    # The dispatch table does not see layouts: channel-last cases are timed but rule nothing (no dispatch_size),
    # so the channel-first cases, which every backend reads in place, order the backends.
    dispatch_size = None if channel_last else batch * dim * length
    # fwd: x in, y out; bwd adds x, dy in, dx out
    return Case("causal_conv1d", name, make,
                bytes_fwd=2 * io, bytes_fwd_bwd=5 * io, dtype=dtype, dispatch_size=dispatch_size)


def cases(quick: bool):
    if quick:
        return [_case(2, 256, 512, 4, torch.float32, reference=True)]
    return [_case(4, 4096, 4096, 4, torch.bfloat16, reference=False),
            *(_case(4, 4096, 4096, width, torch.bfloat16, reference=False) for width in (2, 3, 8)),
            *(_case(4, 4096, 4096, width, torch.bfloat16, reference=False, channel_last=True) for width in (2, 4, 8)),
            # the Mamba2 block's conv (d_model 2048: d_inner 4096 + B and C of one group of 128 states)
            _case(4, 4352, 4096, 4, torch.bfloat16, reference=False, channel_last=True),
            _case(4, 4096, 4096, 4, torch.float32, reference=False),
            _case(4, 4096, 4096, 4, torch.float16, reference=False),
            _case(1, 1024, 2048, 4, torch.float32, reference=True)]
