"""vandermonde_kernel: the S4D kernel, H heads, N/2 = 32 complex modes, length L."""
from __future__ import annotations

import torch

from ssm_kernels import _dispatch
from ssm_kernels.vandermonde_kernel import vandermonde_kernel
from ssm_kernels.vandermonde_kernel.reference import vandermonde_kernel_ref

from ..core import Case, Variant


def materialised(C, log_z, L):
    """s4's log_vandermonde without its extension: the whole (H, N, L) table in memory."""
    positions = torch.arange(L, device=C.device, dtype=C.real.dtype)
    return 2 * torch.einsum("hn,hnl->hl", C, torch.exp(log_z.unsqueeze(-1) * positions)).real


def _case(heads: int, state: int, length: int, dtype: torch.dtype) -> Case:
    def make(device, with_peers):
        dt = torch.exp(torch.empty(heads, 1, device=device).uniform_(-6.9, -2.3))
        n = torch.arange(state, device=device)
        log_z = (dt * torch.complex(torch.full((state,), -0.5, device=device), torch.pi * n)).to(dtype)
        log_z.requires_grad_()
        C = torch.randn(heads, state, device=device, dtype=dtype, requires_grad=True)
        variants = {}
        for backend in _dispatch.implemented_backends("vandermonde_kernel"):
            if _dispatch.backend_problem(backend, device) is None:
                variants[backend] = Variant(lambda backend=backend: vandermonde_kernel(C, log_z, length,
                                                                                     backend=backend), (C, log_z))
        variants["reference"] = Variant(lambda: vandermonde_kernel_ref(C, log_z, length), (C, log_z))
        variants["materialised"] = Variant(lambda: materialised(C, log_z, length), (C, log_z))
        return variants

    params = 2 * heads * state * dtype.itemsize
    out = heads * length * dtype.itemsize // 2
    return Case("vandermonde_kernel", f"H{heads} N{state} L{length} {str(dtype).replace('torch.', '')}", make,
                bytes_fwd=params + out, bytes_fwd_bwd=3 * params + 2 * out,
                flops_fwd=8 * heads * state * length, dtype=dtype, dispatch_size=heads * state * length)


def cases(quick: bool):
    if quick:
        return [_case(64, 32, 1024, torch.complex64)]
    return [_case(256, 32, 4096, torch.complex64), _case(768, 32, 16384, torch.complex64)]
