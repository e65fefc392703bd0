"""Triton backend of the Vandermonde kernel (complex64 math), as the custom ops
ssm_kernels::vandermonde_kernel_triton_{fwd,bwd}.

Shapes: C, log_z (H, N) complex64; K (H, L) float32:
    K[h, l] = 2 Re sum_n C[h, n] exp(log_z[h, n] l)

Forward, grid (H, cdiv(L, BLOCK_L)): a program sums its (BLOCK_N, BLOCK_L) tiles of terms over n in registers;
no (H, N, L) tensor exists anywhere. Backward, grid (H, cdiv(N, BLOCK_N)): a program owns BLOCK_N modes and
walks all of l, accumulating S_p[n] = sum_l grad[h, l] l^p exp(log_z[h, n] l) for p = 0, 1:
    dC = 2 conj(S_0),  dlog_z = 2 conj(C S_1)
(torch's convention for complex gradients), each written by the one program that owns it: deterministic, no
atomics. There exp(log_z l) = exp(log_z l0) exp(log_z i) for l = l0 + i: the (BLOCK_N, BLOCK_L) table of
exp(log_z i) is computed once per program, then one exponential per mode per block.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton_complex import exp_complex, load_complex, store_complex
from .._utils import new_output
from ._common import define_vandermonde_op

BLOCK_L = 128
MAX_BLOCK_N = 32
NUM_WARPS = 4


@triton.jit
def _fwd_kernel(c_ptr, z_ptr, k_ptr, N, L, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    h = tl.program_id(0)
    l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    position = l.to(tl.float32)[None, :]
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        cr, ci = load_complex(c_ptr, h * N + n, n < N)
        zr, zi = load_complex(z_ptr, h * N + n, n < N)
        er, ei = exp_complex(zr[:, None] * position, zi[:, None] * position)
        acc += tl.sum(cr[:, None] * er - ci[:, None] * ei, axis=0)
    tl.store(k_ptr + h * L + l, 2 * acc, mask=l < L)


@triton.jit
def _bwd_kernel(g_ptr, c_ptr, z_ptr, dc_ptr, dz_ptr, N, L, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    h = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cr, ci = load_complex(c_ptr, h * N + n, n < N)
    zr, zi = load_complex(z_ptr, h * N + n, n < N)
    offset = tl.arange(0, BLOCK_L).to(tl.float32)
    tr, ti = exp_complex(zr[:, None] * offset[None, :], zi[:, None] * offset[None, :])  # exp(log_z i)
    s0r = tl.zeros([BLOCK_N], dtype=tl.float32)
    s0i = tl.zeros([BLOCK_N], dtype=tl.float32)
    s1r = tl.zeros([BLOCK_N], dtype=tl.float32)
    s1i = tl.zeros([BLOCK_N], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)
        g = tl.load(g_ptr + h * L + l, mask=l < L, other=0.0)[None, :]
        br, bi = exp_complex(zr * l0, zi * l0)  # exp(log_z l0)
        er = br[:, None] * tr - bi[:, None] * ti
        ei = br[:, None] * ti + bi[:, None] * tr
        s0r += tl.sum(g * er, axis=1)
        s0i += tl.sum(g * ei, axis=1)
        gl = g * l.to(tl.float32)[None, :]
        s1r += tl.sum(gl * er, axis=1)
        s1i += tl.sum(gl * ei, axis=1)
    store_complex(dc_ptr, h * N + n, 2 * s0r, -2 * s0i, n < N)
    store_complex(dz_ptr, h * N + n, 2 * (cr * s1r - ci * s1i), -2 * (cr * s1i + ci * s1r), n < N)


def _block_n(N: int) -> int:
    return min(MAX_BLOCK_N, triton.next_power_of_2(N))


def _forward(C: Tensor, log_z: Tensor, L: int) -> Tensor:
    H, N = C.shape
    K = new_output((H, L), torch.float32, C.device)
    _fwd_kernel[(H, triton.cdiv(L, BLOCK_L))](torch.view_as_real(C), torch.view_as_real(log_z), K, N, L,
                                              BLOCK_N=_block_n(N), BLOCK_L=BLOCK_L, num_warps=NUM_WARPS)
    return K


def _backward(grad: Tensor, C: Tensor, log_z: Tensor) -> Tuple[Tensor, Tensor]:
    H, N = C.shape
    dC, dlog_z = new_output(C.shape, C.dtype, C.device), new_output(C.shape, C.dtype, C.device)
    block_n = _block_n(N)
    _bwd_kernel[(H, triton.cdiv(N, block_n))](grad, torch.view_as_real(C), torch.view_as_real(log_z),
                                              torch.view_as_real(dC), torch.view_as_real(dlog_z), N,
                                              grad.shape[-1], BLOCK_N=block_n, BLOCK_L=BLOCK_L,
                                              num_warps=NUM_WARPS)
    return dC, dlog_z


_vandermonde = define_vandermonde_op("vandermonde_kernel_triton", _forward, _backward)


def vandermonde_kernel_triton(C, log_z, L):
    """Triton backend (complex64 inputs, fp32 math). Returns K (H, L) float32."""
    return _vandermonde(C.contiguous(), log_z.contiguous(), L)
