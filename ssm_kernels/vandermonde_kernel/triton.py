"""Triton backend of the Vandermonde kernel (complex64 math), as the custom ops
ssm_kernels::vandermonde_kernel_triton_{fwd,bwd}.

Shapes: C, log_z (H, N) complex64; K (H, L) float32:
    K[h, l] = 2 Re sum_n C[h, n] exp(log_z[h, n] l)

A tile is ROWS x BLOCK_L positions l = l0 + j BLOCK_L + i (row j, column i), and a program owns a segment of a
head's tiles. With exp(log_z l) = exp(log_z l0) exp(log_z j BLOCK_L) exp(log_z i), the sum over a block of modes
is two real matrix products (fp32, DOT_PRECISION):
    K[j, i] = 2 Re sum_n A[j, n] T[n, i],   A = C exp(log_z l0) R,   R = exp(log_z j BLOCK_L),   T = exp(log_z i)
where R and T are computed once per program (when all modes fit one block), so a tile costs one complex
exponential per mode (for exp(log_z l0)) and complex products. No (H, N, L) tensor exists. Phases are reduced
modulo 2 pi in fp64 (exp_complex_scaled): exact for any L, and never libdevice's slow sin / cos path.

Backward: S_p[n] = sum_l grad[h, l] l^p exp(log_z[h, n] l), p = 0, 1, the same way with the product over the
rows, accumulated over a segment's tiles before the columns' powers are applied once:
    S_p[n] = sum_i T[n, i] Q_p[n, i],   Q_p = sum_tiles E^T G_p,   E = exp(log_z (l0 + j BLOCK_L)) = exp(log_z l0) R,
    G_p[j, i] = grad[l0 + j BLOCK_L + i] (l0 + j BLOCK_L + i)^p,
then dC = 2 conj(S_0) and dlog_z = 2 conj(C S_1) (torch's convention for complex gradients). Each program
writes those gradients' partial sums (H, SEGMENTS, N) over one segment of positions (the gradients themselves
when one segment covers L); torch adds them: deterministic, no atomics.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton_complex import exp_complex_scaled, load_complex, store_complex
from .._triton_launch import launch
from .._utils import cdiv, new_output, next_power_of_2, segments_for, sum_segments
from ._common import define_vandermonde_op

# Forward tiles are ROWS x BLOCK_L positions
ROWS = 32  # a tl.dot operand needs at least 16 rows
MAX_BLOCK_L = 64
NUM_WARPS = 4
FORWARD_PROGRAMS = 1024  # the forward splits each head's tiles into segments until about this many programs
BACKWARD_ROWS = 32
MAX_BACKWARD_BLOCK_L = 64  # its four (BLOCK_N, BLOCK_L) accumulators fit 4 warps' registers without spills
BACKWARD_WARPS = 4
BACKWARD_PROGRAMS = 2048
MIN_BLOCK = 16
MAX_BLOCK_N = 32
# The products over modes (forward) and rows (backward): "tf32x3" (three tf32 products on the tensor cores;
# relative errors 1.7e-7 - 2.4e-7 against complex128 on the H200, as "ieee") or "ieee" (fp32 FMAs)
DOT_PRECISION = "tf32x3"
BACKWARD_DOT_PRECISION = "tf32x3"


@triton.jit
def _powers(zr, zi, positions, L):
    """exp(log_z positions) for a tile of positions broadcast against log_z = (zr, zi); 0 at positions past L (a
    growing mode may overflow there, and inf times their zero gradient would be NaN)."""
    er, ei = exp_complex_scaled(zr, zi, positions)
    return tl.where(positions < L, er, 0.0), tl.where(positions < L, ei, 0.0)


@triton.jit
def _shifted_powers(zr, zi, rr, ri, first, offsets, L):
    """exp(log_z (first + offsets)) as exp(log_z first) R, R = exp(log_z offsets) = (rr, ri) computed once per
    program: an exponential per mode and tile instead of per mode and row. log_z = (zr, zi) broadcasts against
    R; 0 where first + offsets >= L."""
    fr, fi = exp_complex_scaled(zr, zi, first)
    valid = first + offsets < L
    return tl.where(valid, fr * rr - fi * ri, 0.0), tl.where(valid, fr * ri + fi * rr, 0.0)


@triton.jit
def _add_mode_block(acc, cr, ci, zr, zi, rr, ri, tr, ti, first, row_offsets, L, PRECISION: tl.constexpr):
    """acc (ROWS, BLOCK_L) + Re(A T) over one block of modes (BLOCK_N,): A = C exp(log_z (first + row_offsets))
    (ROWS, BLOCK_N) from the rows' R = exp(log_z row_offsets) = (rr, ri), and T = exp(log_z columns)
    (BLOCK_N, BLOCK_L) as (tr, ti)."""
    er, ei = _shifted_powers(zr[None, :], zi[None, :], rr, ri, first, row_offsets, L)
    ar = cr[None, :] * er - ci[None, :] * ei
    ai = cr[None, :] * ei + ci[None, :] * er
    acc = tl.dot(ar, tr, acc, input_precision=PRECISION)
    return tl.dot(-ai, ti, acc, input_precision=PRECISION)


@triton.jit
def _fwd_kernel(c_ptr, z_ptr, k_ptr, N, L, TILES_PER_SEGMENT, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
                ROWS: tl.constexpr, ONE_MODE_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    h = tl.program_id(0)
    first_tile = tl.program_id(1) * TILES_PER_SEGMENT
    last_tile = tl.minimum(first_tile + TILES_PER_SEGMENT, tl.cdiv(L, ROWS * BLOCK_L))
    row_offsets = tl.arange(0, ROWS)[:, None] * BLOCK_L
    columns = tl.arange(0, BLOCK_L)[None, :]
    n = tl.arange(0, BLOCK_N)
    if ONE_MODE_BLOCK:  # every mode in one block: the rows' and columns' powers serve all the program's tiles
        cr, ci = load_complex(c_ptr, h * N + n, n < N)  # padded modes: C = 0, log_z = 0 (finite powers)
        zr, zi = load_complex(z_ptr, h * N + n, n < N)
        rr, ri = exp_complex_scaled(zr[None, :], zi[None, :], row_offsets)
        tr, ti = _powers(zr[:, None], zi[:, None], columns, L)
        for tile in range(first_tile, last_tile):
            first = tile * (ROWS * BLOCK_L)
            acc = tl.zeros([ROWS, BLOCK_L], dtype=tl.float32)
            acc = _add_mode_block(acc, cr, ci, zr, zi, rr, ri, tr, ti, first, row_offsets, L, PRECISION)
            l = first + row_offsets + columns
            tl.store(k_ptr + h * L + l, 2 * acc, mask=l < L)
    else:
        for tile in range(first_tile, last_tile):
            first = tile * (ROWS * BLOCK_L)
            acc = tl.zeros([ROWS, BLOCK_L], dtype=tl.float32)
            for n0 in range(0, N, BLOCK_N):
                cr, ci = load_complex(c_ptr, h * N + n0 + n, n0 + n < N)
                zr, zi = load_complex(z_ptr, h * N + n0 + n, n0 + n < N)
                rr, ri = exp_complex_scaled(zr[None, :], zi[None, :], row_offsets)
                tr, ti = _powers(zr[:, None], zi[:, None], columns, L)
                acc = _add_mode_block(acc, cr, ci, zr, zi, rr, ri, tr, ti, first, row_offsets, L, PRECISION)
            l = first + row_offsets + columns
            tl.store(k_ptr + h * L + l, 2 * acc, mask=l < L)


@triton.jit
def _bwd_kernel(g_ptr, c_ptr, z_ptr, dc_ptr, dz_ptr, N, L, SEGMENTS, TILES_PER_SEGMENT,
                BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, ROWS: tl.constexpr, PRECISION: tl.constexpr):
    """Q_p[n, i] = sum over the segment's tiles and rows j of E[j, n] G_p[j, i] (matrix products over the rows),
    then S_p[n] = sum_i Q_p[n, i] T[n, i] once per block of modes, stored as the segment's parts of
    dC = 2 conj(S_0) and dlog_z = 2 conj(C S_1)."""
    h = tl.program_id(0)
    segment = tl.program_id(1)
    last_tile = tl.minimum((segment + 1) * TILES_PER_SEGMENT, tl.cdiv(L, ROWS * BLOCK_L))
    out = (h * SEGMENTS + segment) * N
    row_offsets = tl.arange(0, ROWS)[None, :] * BLOCK_L
    columns = tl.arange(0, BLOCK_L)[None, :]
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        zr, zi = load_complex(z_ptr, h * N + n, n < N)
        rr, ri = exp_complex_scaled(zr[:, None], zi[:, None], row_offsets)  # (BLOCK_N, ROWS)
        q0r = tl.zeros([BLOCK_N, BLOCK_L], dtype=tl.float32)
        q0i = tl.zeros([BLOCK_N, BLOCK_L], dtype=tl.float32)
        q1r = tl.zeros([BLOCK_N, BLOCK_L], dtype=tl.float32)
        q1i = tl.zeros([BLOCK_N, BLOCK_L], dtype=tl.float32)
        for tile in range(segment * TILES_PER_SEGMENT, last_tile):
            first = tile * (ROWS * BLOCK_L)
            l = first + tl.arange(0, ROWS)[:, None] * BLOCK_L + columns
            g = tl.load(g_ptr + h * L + l, mask=l < L, other=0.0)
            gl = g * l.to(tl.float32)
            er, ei = _shifted_powers(zr[:, None], zi[:, None], rr, ri, first, row_offsets, L)
            q0r = tl.dot(er, g, q0r, input_precision=PRECISION)  # (BLOCK_N, ROWS) x (ROWS, BLOCK_L)
            q0i = tl.dot(ei, g, q0i, input_precision=PRECISION)
            q1r = tl.dot(er, gl, q1r, input_precision=PRECISION)
            q1i = tl.dot(ei, gl, q1i, input_precision=PRECISION)
        tr, ti = _powers(zr[:, None], zi[:, None], columns, L)
        s0r, s0i = tl.sum(q0r * tr - q0i * ti, axis=1), tl.sum(q0r * ti + q0i * tr, axis=1)
        s1r, s1i = tl.sum(q1r * tr - q1i * ti, axis=1), tl.sum(q1r * ti + q1i * tr, axis=1)
        cr, ci = load_complex(c_ptr, h * N + n, n < N)
        store_complex(dc_ptr, out + n, 2 * s0r, -2 * s0i, n < N)
        store_complex(dz_ptr, out + n, 2 * (cr * s1r - ci * s1i), -2 * (cr * s1i + ci * s1r), n < N)


def _blocks(N: int, L: int, rows: int, max_block_l: int) -> Tuple[int, int]:
    """(BLOCK_N, BLOCK_L): at least 16 each (tl.dot), at most what the modes and positions need."""
    return (max(MIN_BLOCK, min(MAX_BLOCK_N, next_power_of_2(N))),
            max(MIN_BLOCK, min(max_block_l, next_power_of_2(cdiv(L, rows)))))


def _forward(C: Tensor, log_z: Tensor, L: int) -> Tensor:
    H, N = C.shape
    K = new_output((H, L), torch.float32, C.device)
    block_n, block_l = _blocks(N, L, ROWS, MAX_BLOCK_L)
    tiles_per_segment, segments = segments_for(cdiv(L, ROWS * block_l), H, FORWARD_PROGRAMS)
    launch(_fwd_kernel, (H, segments), torch.view_as_real(C), torch.view_as_real(log_z), K, N, L, tiles_per_segment,
           BLOCK_N=block_n, BLOCK_L=block_l, ROWS=ROWS, ONE_MODE_BLOCK=N <= block_n,
           PRECISION=DOT_PRECISION, num_warps=NUM_WARPS)
    return K


def _backward(grad: Tensor, C: Tensor, log_z: Tensor) -> Tuple[Tensor, Tensor]:
    (H, N), L = C.shape, grad.shape[-1]
    block_n, block_l = _blocks(N, L, BACKWARD_ROWS, MAX_BACKWARD_BLOCK_L)
    tiles_per_segment, segments = segments_for(cdiv(L, BACKWARD_ROWS * block_l), H, BACKWARD_PROGRAMS)
    dC, dlog_z = (new_output((H, segments, N), C.dtype, C.device) for _ in range(2))
    launch(_bwd_kernel, (H, segments), grad, torch.view_as_real(C), torch.view_as_real(log_z), torch.view_as_real(dC),
           torch.view_as_real(dlog_z), N, L, segments, tiles_per_segment, BLOCK_N=block_n,
           BLOCK_L=block_l, ROWS=BACKWARD_ROWS, PRECISION=BACKWARD_DOT_PRECISION,
           num_warps=BACKWARD_WARPS)
    return sum_segments(dC), sum_segments(dlog_z)


_vandermonde = define_vandermonde_op("vandermonde_kernel_triton", _forward, _backward)


def vandermonde_kernel_triton(C, log_z, L):
    """Triton backend (complex64 inputs, fp32 math). Returns K (H, L) float32."""
    return _vandermonde(C.contiguous(), log_z.contiguous(), L)
