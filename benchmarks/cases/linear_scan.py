"""linear_scan: real fp32 B=4 D=1024 L=4096 (the CPU case) and a complex S5/LRU-style case; on the GPU the
(8, 4096, 4096) fp32 / bf16 and (8, 1024, 4096) complex64 cases beside accelerated-scan 0.3.1's Triton scans
("peer:accelerated_scan"), and a few-rows long case (1, 64, 65536) that takes the segmented path.

"floor:cumsum" is torch.cumsum of the tokens along L: one memory pass over the same (B, D, L) tensor, the
yardstick (the target: forward within 4x of it). The torch backend is left out of the GPU cases (a chunked
loop of small kernels: 481 ms forward at (8, 4096, 4096) fp32 on an H200, where the peer takes 0.38 ms)."""
from __future__ import annotations

import torch

from ssm_kernels import _dispatch
from ssm_kernels.linear_scan import linear_scan
from ssm_kernels.linear_scan.reference import linear_scan_ref

from .. import peers
from ..core import Case, Variant


def _case(batch: int, dim: int, length: int, dtype: torch.dtype, reference: bool,
          device_types=("cpu", "cuda")) -> Case:
    def make(device, with_peers):
        shape = (batch, dim, length)
        gates = 0.5 + 0.5 * torch.rand(shape, device=device, dtype=dtype.to_real())
        if dtype.is_complex:  # S5 / LRU: eigenvalues inside the unit disc
            gates = torch.polar(gates, torch.rand(shape, device=device, dtype=gates.dtype) * 6.28)
        gates.requires_grad_()
        tokens = torch.randn(batch, dim, length, device=device, dtype=dtype, requires_grad=True)
        leaves = (gates, tokens)
        variants = {}
        for backend in _dispatch.implemented_backends("linear_scan"):
            skipped = backend == "torch" and device.type == "cuda"
            if _dispatch.backend_problem(backend, device, "linear_scan") is None and not skipped:
                variants[backend] = Variant(lambda backend=backend: linear_scan(gates, tokens, backend=backend),
                                            leaves)
        if reference:
            variants["reference"] = Variant(lambda: linear_scan_ref(gates, tokens), leaves)
        peer = peers.load("accelerated_scan." + ("complex" if dtype.is_complex else "scalar"), "scan") \
            if with_peers and device.type == "cuda" else None
        if peer is not None:
            variants["peer:accelerated_scan"] = Variant(lambda: peer(gates, tokens), leaves)
        variants["floor:cumsum"] = Variant(lambda: torch.cumsum(tokens, -1), (tokens,))
        return variants

    io = batch * dim * length * dtype.itemsize
    return Case("linear_scan", f"B{batch} D{dim} L{length} {str(dtype).replace('torch.', '')}", make,
                bytes_fwd=3 * io, bytes_fwd_bwd=8 * io,  # fwd: a, b in, x out; bwd adds a, x, dy in, da, db out
                dtype=dtype, dispatch_size=batch * dim * length, device_types=device_types)


def cases(quick: bool):
    if quick:
        return [_case(2, 256, 1024, torch.float32, True), _case(2, 128, 1024, torch.complex64, True)]
    gpu = ("cuda",)
    return [_case(4, 1024, 4096, torch.float32, True, ("cpu",)), _case(2, 512, 2048, torch.complex64, False, ("cpu",)),
            _case(8, 4096, 4096, torch.float32, False, gpu), _case(8, 4096, 4096, torch.bfloat16, False, gpu),
            _case(8, 1024, 4096, torch.complex64, False, gpu), _case(1, 64, 65536, torch.float32, False, gpu)]
