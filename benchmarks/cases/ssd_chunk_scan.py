"""ssd_chunk_scan: the Mamba-2 SSD scan, (B, L, H, P) with ngroups G, D, dt_bias and softplus.

Peers on the GPU: "peer:mamba_ssm" (mamba_ssm 2.3.2's mamba_chunk_scan_combined) and, for reference,
"peer:fla" (flash-linear-attention 0.6's chunk_simple_gla on the same problem: q = C, k = B (groups expanded
to heads beforehand, outside the timing), v = dt * x, log-decay g = dt * A; without D and dt_bias's softplus;
forward only on Hopper under Triton < 3.7.1, where fla refuses its backward).
"""
from __future__ import annotations

import torch

from ssm_kernels import _dispatch
from ssm_kernels.ssd_chunk_scan import ssd_chunk_scan
from ssm_kernels.ssd_chunk_scan.reference import ssd_chunk_scan_ref

from .. import peers
from ..core import Case, Variant


def _fla(gla, x, dt, A, B, C, heads):
    """chunk_simple_gla on the SSD problem; dt (B, L, H) is used as already discretised (no softplus)."""
    q = C.repeat_interleave(heads // C.shape[2], dim=2).detach().requires_grad_()
    k = B.repeat_interleave(heads // B.shape[2], dim=2).detach().requires_grad_()

    def run():
        return gla(q, k, x * dt.unsqueeze(-1), dt.float() * A, scale=1.0)[0]
    return run, (q, k)


def _fla_backward_runs(device) -> bool:
    """fla 0.6 refuses its chunk backward on Hopper under Triton < 3.7.1 (which miscompiles some of its backward
    kernels there): its variant is then timed forward only."""
    import re
    import triton
    version = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:3])
    return torch.cuda.get_device_capability(device)[0] != 9 or version >= (3, 7, 1)


def _case(batch: int, length: int, heads: int, headdim: int, dstate: int, groups: int, chunk: int,
          dtype: torch.dtype, reference: bool, device_types=("cpu", "cuda")) -> Case:
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
        gla = peers.load("fla.ops.simple_gla", "chunk_simple_gla") if with_peers else None
        if gla is not None and device.type == "cuda":
            run, qk = _fla(gla, x, dt, A, B, C, heads)
            variants["peer:fla"] = Variant(run, (x, dt, A) + qk if _fla_backward_runs(device) else ())
        return variants

    size = dtype.itemsize
    io = batch * length * (2 * heads * headdim + heads + 2 * groups * dstate) * size  # x, dt, B, C in; y out
    return Case("ssd_chunk_scan", f"B{batch} L{length} H{heads} P{headdim} N{dstate} G{groups} chunk{chunk} "
                f"{str(dtype).replace('torch.', '')}", make,
                bytes_fwd=io, bytes_fwd_bwd=3 * io,  # bwd reads the inputs and dy, writes their gradients
                device_types=device_types, dtype=dtype, dispatch_size=batch * length * heads * headdim)


def cases(quick: bool):
    if quick:
        return [_case(1, 256, 4, 32, 16, 1, 64, torch.float32, reference=True)]
    gpu = ("cuda",)
    # the two Mamba-2 training sizes on the GPU (the larger in fp32 too), then the CPU target
    return [_case(4, 4096, 64, 64, 128, 1, 256, torch.bfloat16, reference=False, device_types=gpu),
            _case(8, 2048, 32, 64, 64, 1, 256, torch.bfloat16, reference=False, device_types=gpu),
            _case(4, 4096, 64, 64, 128, 1, 256, torch.float32, reference=False, device_types=gpu),
            _case(1, 2048, 16, 64, 64, 1, 256, torch.float32, reference=True)]
