"""gated_rmsnorm: Mamba-2's output norm, (B L, D) tokens with 8 groups and a SiLU gate."""
from __future__ import annotations

import torch

from ssm_kernels import _dispatch
from ssm_kernels.gated_rmsnorm import gated_rmsnorm
from ssm_kernels.gated_rmsnorm.reference import gated_rmsnorm_ref

from .. import peers
from ..core import Case, Variant


def _case(tokens: int, dim: int, group_size: int, dtype: torch.dtype) -> Case:
    def make(device, with_peers):
        x = torch.randn(tokens, dim, device=device, dtype=dtype, requires_grad=True)
        z = torch.randn(tokens, dim, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(dim, device=device, dtype=dtype, requires_grad=True)
        variants = {}
        for backend in _dispatch.implemented_backends("gated_rmsnorm"):
            if _dispatch.backend_problem(backend, device) is None:
                variants[backend] = Variant(lambda backend=backend: gated_rmsnorm(
                    x, w, z, group_size=group_size, norm_before_gate=False, backend=backend), (x, w, z))
        variants["reference"] = Variant(
            lambda: gated_rmsnorm_ref(x, w, z, group_size=group_size, norm_before_gate=False), (x, w, z))
        peer = peers.load("mamba_ssm.ops.triton.layernorm_gated", "rmsnorm_fn") if with_peers else None
        if peer is not None and device.type == "cuda":
            variants["peer:mamba_ssm"] = Variant(
                lambda: peer(x, w, None, z=z, group_size=group_size, norm_before_gate=False), (x, w, z))
        return variants

    io = tokens * dim * dtype.itemsize
    return Case("gated_rmsnorm", f"T{tokens} D{dim} group{group_size} {str(dtype).replace('torch.', '')}", make,
                bytes_fwd=3 * io, bytes_fwd_bwd=8 * io,  # fwd: x, z in, y out; bwd adds x, z, dy in, dx, dz out
                dtype=dtype, dispatch_size=tokens * dim)


def cases(quick: bool):
    if quick:
        return [_case(512, 1024, 128, torch.float32)]
    return [_case(4096, 2048, 256, torch.float32),
            _case(16384, 4096, 512, torch.bfloat16)]  # Mamba-2 output norm of a (4, 4096) batch, d_inner 4096
