"""selective_scan: Mamba-1 scan with D, z, delta_bias and softplus, variable B/C (the issue's CPU case).

Inputs follow Mamba's initialisation: A = -(1..N) per channel, Δ = softplus(delta + delta_bias) with
softplus(delta_bias) log-uniform in [1e-3, 0.1]. Peer "peer:mambapy": mambapy's pscan (Blelloch scan over
the materialised (B, L, D, N) tensors) inside the same Mamba-1 formula, as mambapy's MambaBlock does it.
GPU cases: (4, 4096, 4096) N=16 bf16, fp32 and fp16, (8, 2048, 5120) and the small grids (1, 2048, 1024) (a
batch-1 prompt of the generation benchmark's Mamba LM) and (1, 1024, 2048) in bf16, beside "peer:mamba_ssm", mamba_ssm 2.3.2's CUDA
selective_scan_fn (benchmarks/peers.py links it from prebuilt objects).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssm_kernels import _dispatch
from ssm_kernels.selective_scan import selective_scan
from ssm_kernels.selective_scan.reference import selective_scan_ref

from .. import peers
from ..core import Case, Variant


def _inputs(batch, dim, length, dstate, dtype, device):
    dt = torch.exp(torch.rand(dim, device=device) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    leaves = dict(
        u=torch.randn(batch, dim, length, device=device, dtype=dtype),
        delta=0.1 * torch.randn(batch, dim, length, device=device, dtype=dtype),
        A=-torch.arange(1, dstate + 1, device=device, dtype=torch.float32).repeat(dim, 1),
        B=torch.randn(batch, dstate, length, device=device, dtype=dtype),
        C=torch.randn(batch, dstate, length, device=device, dtype=dtype),
        D=torch.randn(dim, device=device),
        z=torch.randn(batch, dim, length, device=device, dtype=dtype),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),  # softplus^-1(dt)
    )
    return {k: v.requires_grad_() for k, v in leaves.items()}


def _mambapy(pscan):
    def run(u, delta, A, B, C, D, z, delta_bias):
        x = u.transpose(1, 2)  # (B, L, D)
        dt = F.softplus(delta.transpose(1, 2) + delta_bias)
        deltaA = torch.exp(dt.unsqueeze(-1) * A)  # (B, L, D, N)
        BX = dt.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2) * x.unsqueeze(-1)
        hs = pscan(deltaA, BX)
        y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3) + D * x
        return (y * F.silu(z.transpose(1, 2))).transpose(1, 2)
    return run


def _case(batch, dim, length, dstate, dtype, reference: bool, device_types=("cpu", "cuda")) -> Case:
    def make(device, with_peers):
        p = _inputs(batch, dim, length, dstate, dtype, device)
        grads = tuple(p.values())
        variants = {}
        for backend in _dispatch.implemented_backends("selective_scan"):
            if _dispatch.backend_problem(backend, device, "selective_scan") is None:
                variants[backend] = Variant(
                    lambda backend=backend: selective_scan(**p, delta_softplus=True, backend=backend), grads)
        if reference:  # forward only: its autograd graph over L steps is not what anyone would train with
            variants["reference"] = Variant(lambda: selective_scan_ref(**p, delta_softplus=True)[0])
        pscan = peers.load("mambapy.pscan", "pscan") if with_peers and device.type == "cpu" else None
        if pscan is not None:
            variants["peer:mambapy"] = Variant(lambda: _mambapy(pscan)(**p), grads)
        # mamba_ssm's prebuilt kernels (../shared/peers/objs) are fp32 and bf16 only: an fp16 call would end the
        # process on an undefined symbol
        mamba = peers.load("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn") \
            if with_peers and device.type == "cuda" and dtype != torch.float16 else None
        if mamba is not None:
            variants["peer:mamba_ssm"] = Variant(lambda: mamba(**p, delta_softplus=True), grads)
        return variants

    io = batch * dim * length * dtype.itemsize
    bc = batch * dstate * length * dtype.itemsize
    return Case("selective_scan", f"B{batch} D{dim} L{length} N{dstate} {str(dtype).replace('torch.', '')}", make,
                bytes_fwd=4 * io + 2 * bc,  # u, delta, z in, y out; B, C in
                bytes_fwd_bwd=4 * io + 2 * bc + 8 * io + 4 * bc,  # bwd: inputs again + dy in, 4 grads out
                device_types=device_types, dtype=dtype, dispatch_size=batch * dim * length)


def cases(quick: bool):
    if quick:
        return [_case(1, 128, 256, 16, torch.float32, reference=True)]
    gpu = ("cuda",)
    return [_case(4, 4096, 4096, 16, torch.bfloat16, reference=False, device_types=gpu),
            _case(4, 4096, 4096, 16, torch.float32, reference=False, device_types=gpu),
            _case(4, 4096, 4096, 16, torch.float16, reference=False, device_types=gpu),
            _case(8, 2048, 5120, 16, torch.bfloat16, reference=False, device_types=gpu),
            _case(1, 2048, 1024, 16, torch.bfloat16, reference=False, device_types=gpu),  # a batch-1 prompt
            _case(1, 1024, 2048, 16, torch.bfloat16, reference=False, device_types=gpu),
            _case(1, 1024, 2048, 16, torch.float32, reference=True)]
