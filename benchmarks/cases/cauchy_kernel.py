"""cauchy_kernel: S4's DPLR kernel evaluation, H heads, N/2 = 32 modes, L/2 + 1 frequencies."""
from __future__ import annotations

import torch

from ssm_kernels import _dispatch
from ssm_kernels.cauchy_kernel import cauchy_kernel
from ssm_kernels.cauchy_kernel.reference import cauchy_kernel_ref

from ..core import Case, Variant


def materialised(v, z, w):
    """s4's cauchy_naive: the whole (H, N, L) matrix in memory."""
    return (v.unsqueeze(-1) / (z - w.unsqueeze(-1))).sum(-2)


def _case(heads: int, state: int, length: int, dtype: torch.dtype) -> Case:
    def make(device, with_peers):
        n = torch.arange(state, device=device)
        w = torch.complex(-0.5 + 0.1 * torch.rand(heads, state, device=device),
                          torch.pi * n + 0.1 * torch.randn(heads, state, device=device)).to(dtype)
        omega = torch.exp(-2j * torch.pi * torch.arange(length, device=device) / (2 * length - 2))
        z = (2 * (1 - omega) / (1 + omega + 1e-3)).to(dtype)  # S4's bilinear frequencies
        v = torch.randn(heads, state, device=device, dtype=dtype, requires_grad=True)
        w.requires_grad_()
        variants = {}
        for backend in _dispatch.implemented_backends("cauchy_kernel"):
            if _dispatch.backend_problem(backend, device) is None:
                variants[backend] = Variant(lambda backend=backend: cauchy_kernel(v, z, w, backend=backend), (v, w))
        variants["reference"] = Variant(lambda: cauchy_kernel_ref(v, z, w), (v, w))
        variants["materialised"] = Variant(lambda: materialised(v, z, w), (v, w))
        return variants

    params = 2 * heads * state * dtype.itemsize
    out = heads * length * dtype.itemsize
    return Case("cauchy_kernel", f"H{heads} N{state} L{length} {str(dtype).replace('torch.', '')}", make,
                bytes_fwd=params + out, bytes_fwd_bwd=3 * params + 2 * out,
                dtype=dtype, dispatch_size=heads * state * length)


def cases(quick: bool):
    if quick:
        return [_case(64, 32, 257, torch.complex64)]
    # S4 at L 16384 evaluates L / 2 + 1 frequencies
    return [_case(256, 32, 1025, torch.complex64), _case(768, 32, 8193, torch.complex64)]
