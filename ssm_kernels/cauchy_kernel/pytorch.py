"""The torch backend of the Cauchy kernel (the CPU default): chunked, as the custom ops
ssm_kernels::cauchy_kernel_torch_{fwd,bwd}.

Shapes: v, w (H, N) complex; z (L,) complex; K (H, L) complex: K[h, l] = sum_n v[h, n] / (z[l] - w[h, n]).
The (H, N, c) matrix r = 1 / (z - w) for c positions of z at a time, reduced over n with a batched matmul;
the backward recomputes r chunk by chunk, so memory is O(H N c), never O(H N L):
    dv = sum_l g conj(r),  dw = conj(v) sum_l g conj(r)^2,  dz[l] = -sum_h g conj(sum_n v r^2)
(torch's convention for holomorphic functions: input grad = output grad * conj(derivative)).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .._utils import compute_dtype, new_output
from ._common import define_cauchy_op

CHUNK_ELEMENTS = 1 << 20  # complex elements of r per chunk: 8 MiB in complex64


def _chunks(v: torch.Tensor, length: int):
    """Slices of positions l, each giving an (H, N, c) r of about CHUNK_ELEMENTS elements."""
    c = max(1, CHUNK_ELEMENTS // max(1, v.numel()))
    return [slice(start, min(start + c, length)) for start in range(0, length, c)]


def _inverse_distances(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """r: (H, N, c) = 1 / (z[l] - w[h, n])."""
    return (z[None, None, :] - w[:, :, None]).reciprocal_()


def _forward(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    out = new_output((v.shape[0], z.shape[0]), v.dtype, v.device)
    for part in _chunks(v, z.shape[0]):
        out[:, part] = torch.matmul(v.unsqueeze(1), _inverse_distances(z[part], w)).squeeze(1)
    return out


def _backward(grad: Tensor, v: Tensor, z: Tensor, w: Tensor, need_z: bool) -> Tuple[Tensor, Tensor, Tensor]:
    dv = torch.zeros_like(v)
    dw_sum = torch.zeros_like(w)
    dz = new_output(z.shape if need_z else (0,), z.dtype, z.device)  # custom ops cannot return None
    v_conj = v.conj().unsqueeze(1)  # (H, 1, N)
    for part in _chunks(v, z.shape[0]):
        r = _inverse_distances(z[part], w).conj_physical_()  # conj(r): (H, N, c)
        g = grad[:, part].unsqueeze(-1)  # (H, c, 1)
        dv += torch.matmul(r, g).squeeze(-1)
        r.mul_(r)  # conj(r)^2
        dw_sum += torch.matmul(r, g).squeeze(-1)
        if need_z:
            dz[part] = -(grad[:, part] * torch.matmul(v_conj, r).squeeze(1)).sum(0)
    return dv, v.conj() * dw_sum, dz


_cauchy = define_cauchy_op("cauchy_kernel_torch", _forward, _backward)


def cauchy_kernel_torch(v, z, w):
    """Fast torch backend (complex64 math, complex128 for complex128). Returns K (H, L) complex."""
    acc_dtype = compute_dtype(v.dtype)
    return _cauchy(*(t.to(acc_dtype).contiguous() for t in (v, z, w)))
