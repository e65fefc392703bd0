"""The torch backend of the Vandermonde kernel (the S4D / DSS convolution kernel; the CPU default), as the
custom ops ssm_kernels::vandermonde_kernel_torch_{fwd,bwd}.

Shapes: C, log_z (H, N) complex; K (H, L) real:
    K[h, l] = 2 Re sum_n C[h, n] exp(log_z[h, n] * l)

Split l = j * c + i (chunk j, offset i < c), so exp(log_z l) = exp(log_z j c) * exp(log_z i) and
    K[h, j c + i] = 2 Re sum_n (C[h, n] exp(log_z[h, n] j c)) exp(log_z[h, n] i),
one batched complex matmul of (H, L/c, N) by (H, N, c). Memory and exponentials are O(H N (c + L/c)),
never O(H N L); the backward recomputes the same two tables instead of storing anything of size L.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from .._utils import cdiv, compute_dtype
from ._common import define_vandermonde_op


def chunk_size(length: int) -> int:
    """Chunk c near sqrt(L) (fewest exponentials), a power of two of at least 16 for matmul efficiency."""
    return min(length, max(16, 1 << math.ceil(math.log2(max(1.0, math.sqrt(length))))))


def _exp_scaled(log_z: Tensor, positions: Tensor) -> Tensor:
    """exp(log_z positions) (broadcast), the phase Im(log_z) positions formed in fp64 and reduced modulo 2 pi
    first: a complex64 product would round a long kernel's phase (~1e5 radians) by up to 1e-2."""
    phase = torch.remainder(log_z.imag.double() * positions.double(), 2 * math.pi)
    return torch.polar(torch.exp(log_z.real * positions), phase.to(log_z.real.dtype))


def _tables(log_z: Tensor, length: int):
    """base: (H, N, c) = exp(log_z i); offsets: (H, L/c rounded up, N) = exp(log_z j c)."""
    c = chunk_size(length)
    n_chunks = cdiv(length, c)
    real = log_z.real.dtype
    base = _exp_scaled(log_z.unsqueeze(-1), torch.arange(c, dtype=real, device=log_z.device))
    starts = torch.arange(n_chunks, dtype=real, device=log_z.device) * c
    return base, _exp_scaled(log_z.unsqueeze(1), starts[:, None])


def _forward(C: Tensor, log_z: Tensor, length: int) -> Tensor:
    base, offsets = _tables(log_z, length)
    chunks = torch.matmul(C.unsqueeze(1) * offsets, base)  # (H, L/c, c)
    return 2 * chunks.real.flatten(1)[:, :length]


def _backward(grad: Tensor, C: Tensor, log_z: Tensor) -> Tuple[Tensor, Tensor]:
    """dC = 2 conj(S0), dlog_z = 2 conj(C S1) with S_p[h, n] = sum_l grad[h, l] l^p exp(log_z[h, n] l)."""
    length = grad.shape[-1]
    base, offsets = _tables(log_z, length)
    n_chunks, c = offsets.shape[1], base.shape[-1]
    padded = torch.nn.functional.pad(grad, (0, n_chunks * c - length)).reshape(grad.shape[0], n_chunks, c)
    positions = torch.arange(n_chunks * c, dtype=grad.dtype, device=grad.device).reshape(n_chunks, c)
    weighted = torch.cat([padded, padded * positions], dim=1).to(C.dtype)  # (H, 2 L/c, c)
    sums = torch.matmul(weighted, base.transpose(-1, -2))  # (H, 2 L/c, N)
    s0 = (offsets * sums[:, :n_chunks]).sum(1)
    s1 = (offsets * sums[:, n_chunks:]).sum(1)
    return 2 * s0.conj(), 2 * (C * s1).conj()


_vandermonde = define_vandermonde_op("vandermonde_kernel_torch", _forward, _backward)


def vandermonde_kernel_torch(C, log_z, L):
    """Fast torch backend (complex64 math, complex128 for complex128). Returns K (H, L) real."""
    acc_dtype = compute_dtype(C.dtype)
    return _vandermonde(C.to(acc_dtype).contiguous(), log_z.to(acc_dtype).contiguous(), L)
