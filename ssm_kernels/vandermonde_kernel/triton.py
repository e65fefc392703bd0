"""Triton backend of the Vandermonde kernel (complex64 math), as the custom ops
ssm_kernels::vandermonde_kernel_triton_{fwd,bwd}.

Shapes: C, log_z (H, N) complex64; K (H, L) float32:
    K[h, l] = 2 Re sum_n C[h, n] exp(log_z[h, n] l)

A program owns a tile of ROWS x BLOCK_L positions l = l0 + j BLOCK_L + i (row j, column i). With
exp(log_z l) = exp(log_z (l0 + j BLOCK_L)) exp(log_z i), the sum over a block of modes is two real matrix
products (fp32, exact "ieee" precision):
    K[j, i] = 2 Re sum_n A[j, n] T[n, i],   A = C exp(log_z (l0 + j BLOCK_L)),   T = exp(log_z i)
so each tile costs (ROWS + BLOCK_L) exponentials per mode instead of ROWS * BLOCK_L. No (H, N, L) tensor exists.

Backward: S_p[n] = sum_l grad[h, l] l^p exp(log_z[h, n] l), p = 0, 1, per tile the same way,
    S_p[n] = sum_j E[j, n] (G_p T^T)[j, n],   E = exp(log_z (l0 + j BLOCK_L)),   G_p[j, i] = grad l^p,
then dC = 2 conj(S_0) and dlog_z = 2 conj(C S_1) (torch's convention for complex gradients). Each program
writes its partial sums (H, SEGMENTS, N) for one segment of positions; torch adds them: deterministic, no atomics.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton_complex import exp_complex, load_complex, store_complex
from .._utils import new_output, segments_for
from ._common import define_vandermonde_op

ROWS = 16  # a tl.dot operand needs at least 16 rows
MAX_BLOCK_L = 128
MIN_BLOCK = 16
MAX_BLOCK_N = 32
NUM_WARPS = 4
BACKWARD_PROGRAMS = 2048  # the backward splits each head's positions into segments until about this many


@triton.jit
def _row_decays(zr, zi, first, L, BLOCK_L: tl.constexpr, ROWS: tl.constexpr):
    """exp(log_z (first + j BLOCK_L)) for the rows j of a tile: (ROWS, BLOCK_N) re, im; 0 for rows past L
    (a growing mode may overflow there, and inf times their zero gradient would be NaN)."""
    start = first + tl.arange(0, ROWS)[:, None] * BLOCK_L
    er, ei = exp_complex(zr[None, :] * start.to(tl.float32), zi[None, :] * start.to(tl.float32))
    return tl.where(start < L, er, 0.0), tl.where(start < L, ei, 0.0)


@triton.jit
def _column_powers(zr, zi, BLOCK_L: tl.constexpr):
    """exp(log_z i) for the columns i of a tile: (BLOCK_N, BLOCK_L) re, im."""
    column = tl.arange(0, BLOCK_L).to(tl.float32)[None, :]
    return exp_complex(zr[:, None] * column, zi[:, None] * column)


@triton.jit
def _fwd_kernel(c_ptr, z_ptr, k_ptr, N, L, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, ROWS: tl.constexpr):
    h = tl.program_id(0)
    first = tl.program_id(1) * (ROWS * BLOCK_L)
    acc = tl.zeros([ROWS, BLOCK_L], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        cr, ci = load_complex(c_ptr, h * N + n, n < N)  # padded modes: C = 0, log_z = 0 (finite powers)
        zr, zi = load_complex(z_ptr, h * N + n, n < N)
        er, ei = _row_decays(zr, zi, first, L, BLOCK_L, ROWS)
        tr, ti = _column_powers(zr, zi, BLOCK_L)
        ar = cr[None, :] * er - ci[None, :] * ei
        ai = cr[None, :] * ei + ci[None, :] * er
        acc += tl.dot(ar, tr, input_precision="ieee")
        acc -= tl.dot(ai, ti, input_precision="ieee")
    l = first + tl.arange(0, ROWS)[:, None] * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
    tl.store(k_ptr + h * L + l, 2 * acc, mask=l < L)


@triton.jit
def _bwd_kernel(g_ptr, z_ptr, s0_ptr, s1_ptr, N, L, SEGMENTS, TILES_PER_SEGMENT,
                BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, ROWS: tl.constexpr):
    h = tl.program_id(0)
    segment = tl.program_id(1)
    out = (h * SEGMENTS + segment) * N
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        zr, zi = load_complex(z_ptr, h * N + n, n < N)
        tr, ti = _column_powers(zr, zi, BLOCK_L)
        s0r = tl.zeros([BLOCK_N], dtype=tl.float32)
        s0i = tl.zeros([BLOCK_N], dtype=tl.float32)
        s1r = tl.zeros([BLOCK_N], dtype=tl.float32)
        s1i = tl.zeros([BLOCK_N], dtype=tl.float32)
        for tile in range(segment * TILES_PER_SEGMENT, (segment + 1) * TILES_PER_SEGMENT):
            first = tile * (ROWS * BLOCK_L)
            l = first + tl.arange(0, ROWS)[:, None] * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
            g = tl.load(g_ptr + h * L + l, mask=l < L, other=0.0)
            gl = g * l.to(tl.float32)
            er, ei = _row_decays(zr, zi, first, L, BLOCK_L, ROWS)
            pr = tl.dot(g, tl.trans(tr), input_precision="ieee")  # (ROWS, BLOCK_N)
            pi = tl.dot(g, tl.trans(ti), input_precision="ieee")
            s0r += tl.sum(er * pr - ei * pi, axis=0)
            s0i += tl.sum(er * pi + ei * pr, axis=0)
            pr = tl.dot(gl, tl.trans(tr), input_precision="ieee")
            pi = tl.dot(gl, tl.trans(ti), input_precision="ieee")
            s1r += tl.sum(er * pr - ei * pi, axis=0)
            s1i += tl.sum(er * pi + ei * pr, axis=0)
        store_complex(s0_ptr, out + n, s0r, s0i, n < N)
        store_complex(s1_ptr, out + n, s1r, s1i, n < N)


def _blocks(N: int, L: int) -> Tuple[int, int]:
    """(BLOCK_N, BLOCK_L): at least 16 each (tl.dot), at most what the modes and positions need."""
    return (max(MIN_BLOCK, min(MAX_BLOCK_N, triton.next_power_of_2(N))),
            max(MIN_BLOCK, min(MAX_BLOCK_L, triton.next_power_of_2(triton.cdiv(L, ROWS)))))


def _forward(C: Tensor, log_z: Tensor, L: int) -> Tensor:
    H, N = C.shape
    K = new_output((H, L), torch.float32, C.device)
    block_n, block_l = _blocks(N, L)
    _fwd_kernel[(H, triton.cdiv(L, ROWS * block_l))](torch.view_as_real(C), torch.view_as_real(log_z), K, N, L,
                                                     BLOCK_N=block_n, BLOCK_L=block_l, ROWS=ROWS,
                                                     num_warps=NUM_WARPS)
    return K


def _backward(grad: Tensor, C: Tensor, log_z: Tensor) -> Tuple[Tensor, Tensor]:
    (H, N), L = C.shape, grad.shape[-1]
    block_n, block_l = _blocks(N, L)
    tiles_per_segment, segments = segments_for(triton.cdiv(L, ROWS * block_l), H, BACKWARD_PROGRAMS)
    s0, s1 = (new_output((H, segments, N), C.dtype, C.device) for _ in range(2))
    _bwd_kernel[(H, segments)](grad, torch.view_as_real(log_z), torch.view_as_real(s0), torch.view_as_real(s1),
                               N, L, segments, tiles_per_segment, BLOCK_N=block_n, BLOCK_L=block_l, ROWS=ROWS,
                               num_warps=NUM_WARPS)
    return 2 * s0.sum(1).conj(), 2 * (C * s1.sum(1)).conj()


_vandermonde = define_vandermonde_op("vandermonde_kernel_triton", _forward, _backward)


def vandermonde_kernel_triton(C, log_z, L):
    """Triton backend (complex64 inputs, fp32 math). Returns K (H, L) float32."""
    return _vandermonde(C.contiguous(), log_z.contiguous(), L)
