"""ssd_chunk_scan: the Mamba-2 SSD scan, (B, L, H, P) with ngroups G, D, dt_bias and softplus."""
from __future__ import annotations

import torch

from ssm_kernels import _dispatch
from ssm_kernels.ssd_chunk_scan import ssd_chunk_scan
from ssm_kernels.ssd_chunk_scan.reference import ssd_chunk_scan_ref

from .. import peers
from ..core import Case, Variant


def _case(batch: int, length: int, heads: int, headdim: int, dstate: int, groups: int, chunk: int,
          dtype: torch.dtype, reference: bool) -> Case:
    def make(device, with_peers):
        def leaf(*shape, dt=dtype):
            return torch.randn(*shape, device=device, dtype=dt).requires_grad_()
        x, B, C = leaf(batch, length, heads, headdim), leaf(batch, length, groups, dstate), \
            leaf(batch, length, groups, dstate)
        dt = (0.5 * torch.randn(batch, length, heads, device=device)).to(dtype).requires_grad_()
        A = (-torch.rand(heads, device=device) * 7.5 - 0.5).requires_grad_()
        D, dt_bias = leaf(heads, dt=torch.float32), (torch.rand(heads, device=device) - 2).requires_grad_()
        leaves = (x, dt, A, B, C, D, dt_bias)
        kwargs = dict(D=D, dt_bias=dt_bias, dt_softplus=True)
        variants = {}
        for backend in _dispatch.implemented_backends("ssd_chunk_scan"):
            if _dispatch.backend_problem(backend, device) is None:
                variants[backend] = Variant(
                    lambda backend=backend: ssd_chunk_scan(x, dt, A, B, C, chunk, **kwargs, backend=backend), leaves)
        if reference:
            variants["reference"] = Variant(lambda: ssd_chunk_scan_ref(x, dt, A, B, C, chunk, **kwargs)[0], leaves)
        peer = peers.load("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined") if with_peers else None
        if peer is not None and device.type == "cuda":
            variants["peer:mamba_ssm"] = Variant(lambda: peer(x, dt, A, B, C, chunk, **kwargs), leaves)
        return variants

    size = dtype.itemsize
    io = batch * length * (2 * heads * headdim + heads + 2 * groups * dstate) * size  # x, dt, B, C in; y out
    return Case("ssd_chunk_scan", f"B{batch} L{length} H{heads} P{headdim} N{dstate} G{groups} chunk{chunk} "
                f"{str(dtype).replace('torch.', '')}", make,
                bytes_fwd=io, bytes_fwd_bwd=3 * io)  # bwd reads the inputs and dy, writes their gradients


def cases(quick: bool):
    if quick:
        return [_case(1, 256, 4, 32, 16, 1, 64, torch.float32, reference=True)]
    return [_case(1, 2048, 16, 64, 64, 1, 256, torch.float32, reference=True),  # issue 3's CPU target
            _case(2, 4096, 32, 64, 128, 8, 256, torch.bfloat16, reference=False)]  # Mamba-2 2.7B-like layer
