"""Triton backend of the Cauchy kernel (complex64 math), as the custom ops ssm_kernels::cauchy_kernel_triton_{fwd,bwd}.

Shapes: v, w (H, N) complex64; z (L,) complex64; K (H, L) complex64:
    K[h, l] = sum_n v[h, n] r[h, n, l],   r = 1 / (z[l] - w[h, n])

Forward, grid (H, cdiv(L, BLOCK_L)): a program sums its (BLOCK_N, BLOCK_L) tiles of v r over n in registers (one
reciprocal of |z - w|^2 per term); no (H, N, L) tensor exists anywhere. Backward (torch's convention for
holomorphic functions: input grad = output grad * conj(derivative)):
    dv = sum_l g conj(r),   dw = conj(v) sum_l g conj(r)^2,   dz[l] = -sum_h g[h, l] conj(sum_n v r^2)
dv and dw on grid (H, cdiv(N, BLOCK_N), SEGMENTS): a program owns BLOCK_N modes and walks one segment of l, and
the segments' partial sums (H, SEGMENTS, N) are added by torch. dz (only when z needs a gradient) on grid
(cdiv(L, BLOCK_L), H_GROUPS): a program sums its group of heads, and the groups' partial sums (H_GROUPS, L) are
added by torch. Every output is written by one program: deterministic, no atomics.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton_complex import load_complex, store_complex
from .._triton_launch import launch
from .._utils import cdiv, new_output, next_power_of_2, segments_for, sum_segments
from ._common import define_cauchy_op

BLOCK_L = 128
MAX_BLOCK_N = 32
MAX_H_GROUPS = 32  # dz: the heads are summed in at most this many groups (partial sums added by torch)
# dv, dw: each head's positions are cut into segments until about this many programs exist. On the H200 one
# program per (head, block of modes) over all of L measured faster at H 256 and 768 (fwd+bwd 0.609 / 1.479 ms)
# than 2048 programs in segments (0.726 / 1.505): segments only where fewer heads would leave SMs idle.
BACKWARD_PROGRAMS = 256
NUM_WARPS = 4


@triton.jit
def _inverse_distance(zr, zi, wr, wi, valid):
    """r = 1 / (z - w) = conj(z - w) / |z - w|^2 for tiles z (1, BLOCK_L) and w (BLOCK_N, 1); 0 outside `valid`
    (the (BLOCK_N, BLOCK_L) mask of real terms: a padded z and a padded or zero w must not make 0 * inf)."""
    dr = zr - wr
    di = zi - wi
    scale = tl.where(valid, 1.0 / tl.where(valid, dr * dr + di * di, 1.0), 0.0)
    return dr * scale, -di * scale


@triton.jit
def _sum_over_modes(v_ptr, w_ptr, h, N, zr, zi, l, L, POWER: tl.constexpr, BLOCK_N: tl.constexpr):
    """sum_n v[h, n] r[h, n, l]^POWER (POWER 1 or 2) for the positions l (BLOCK_L,) with z = (zr, zi) there:
    (re, im), each (BLOCK_L,)."""
    sr = tl.zeros_like(zr)
    si = tl.zeros_like(zr)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        vr, vi = load_complex(v_ptr, h * N + n, n < N)
        wr, wi = load_complex(w_ptr, h * N + n, n < N)
        rr, ri = _inverse_distance(zr[None, :], zi[None, :], wr[:, None], wi[:, None],
                                   (n < N)[:, None] & (l < L)[None, :])
        if POWER == 2:
            rr, ri = rr * rr - ri * ri, 2 * rr * ri
        sr += tl.sum(vr[:, None] * rr - vi[:, None] * ri, axis=0)
        si += tl.sum(vr[:, None] * ri + vi[:, None] * rr, axis=0)
    return sr, si


@triton.jit
def _fwd_kernel(v_ptr, z_ptr, w_ptr, k_ptr, N, L, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    h = tl.program_id(0)
    l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    zr, zi = load_complex(z_ptr, l, l < L)
    kr, ki = _sum_over_modes(v_ptr, w_ptr, h, N, zr, zi, l, L, 1, BLOCK_N)
    store_complex(k_ptr, h * L + l, kr, ki, l < L)


@triton.jit
def _bwd_vw_kernel(g_ptr, v_ptr, z_ptr, w_ptr, dv_ptr, dw_ptr, N, L, SEGMENTS, SEGMENT_L,
                   BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    h = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    segment = tl.program_id(2)
    vr, vi = load_complex(v_ptr, h * N + n, n < N)
    wr, wi = load_complex(w_ptr, h * N + n, n < N)
    s1r = tl.zeros([BLOCK_N], dtype=tl.float32)  # sum_l g conj(r)
    s1i = tl.zeros([BLOCK_N], dtype=tl.float32)
    s2r = tl.zeros([BLOCK_N], dtype=tl.float32)  # sum_l g conj(r)^2
    s2i = tl.zeros([BLOCK_N], dtype=tl.float32)
    for l0 in range(segment * SEGMENT_L, (segment + 1) * SEGMENT_L, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)
        zr, zi = load_complex(z_ptr, l, l < L)
        gr, gi = load_complex(g_ptr, h * L + l, l < L)  # 0 where masked: those terms vanish
        rr, ri = _inverse_distance(zr[None, :], zi[None, :], wr[:, None], wi[:, None],
                                   (n < N)[:, None] & (l < L)[None, :])
        ri = -ri  # conj(r)
        gr = gr[None, :]
        gi = gi[None, :]
        s1r += tl.sum(gr * rr - gi * ri, axis=1)
        s1i += tl.sum(gr * ri + gi * rr, axis=1)
        qr = rr * rr - ri * ri  # conj(r)^2
        qi = 2 * rr * ri
        s2r += tl.sum(gr * qr - gi * qi, axis=1)
        s2i += tl.sum(gr * qi + gi * qr, axis=1)
    out = (h * SEGMENTS + segment) * N + n
    store_complex(dv_ptr, out, s1r, s1i, n < N)
    store_complex(dw_ptr, out, vr * s2r + vi * s2i, vr * s2i - vi * s2r, n < N)  # conj(v) s2


@triton.jit
def _bwd_z_kernel(g_ptr, v_ptr, z_ptr, w_ptr, dz_ptr, H, N, L, HEADS_PER_GROUP,
                  BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    l = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    group = tl.program_id(1)
    zr, zi = load_complex(z_ptr, l, l < L)
    acc_r = tl.zeros([BLOCK_L], dtype=tl.float32)
    acc_i = tl.zeros([BLOCK_L], dtype=tl.float32)
    for h in range(group * HEADS_PER_GROUP, tl.minimum((group + 1) * HEADS_PER_GROUP, H)):
        sr, si = _sum_over_modes(v_ptr, w_ptr, h, N, zr, zi, l, L, 2, BLOCK_N)
        gr, gi = load_complex(g_ptr, h * L + l, l < L)
        acc_r += gr * sr + gi * si  # g conj(s)
        acc_i += gi * sr - gr * si
    store_complex(dz_ptr, group * L + l, -acc_r, -acc_i, l < L)


def _block_n(N: int) -> int:
    return min(MAX_BLOCK_N, next_power_of_2(N))


def _forward(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    (H, N), L = v.shape, z.shape[0]
    K = new_output((H, L), v.dtype, v.device)
    if L == 0 or N == 0 or H == 0:  # N == 0: an empty sum
        return K.zero_()
    launch(_fwd_kernel, (H, cdiv(L, BLOCK_L)), torch.view_as_real(v), torch.view_as_real(z), torch.view_as_real(w),
           torch.view_as_real(K), N, L, BLOCK_N=_block_n(N), BLOCK_L=BLOCK_L,
           num_warps=NUM_WARPS)
    return K


def _backward(grad: Tensor, v: Tensor, z: Tensor, w: Tensor, need_z: bool) -> Tuple[Tensor, Tensor, Tensor]:
    (H, N), L = v.shape, z.shape[0]
    if L == 0 or N == 0 or H == 0:
        return torch.zeros_like(v), torch.zeros_like(w), torch.zeros_like(z) if need_z else z.new_empty(0)
    block_n = _block_n(N)
    mode_blocks = cdiv(N, block_n)
    blocks_per_segment, segments = segments_for(cdiv(L, BLOCK_L), H * mode_blocks, BACKWARD_PROGRAMS)
    dv, dw = (new_output((H, segments, N), v.dtype, v.device) for _ in range(2))
    real = [torch.view_as_real(t) for t in (grad, v, z, w)]
    launch(_bwd_vw_kernel, (H, mode_blocks, segments), *real, torch.view_as_real(dv), torch.view_as_real(dw), N, L,
           segments, blocks_per_segment * BLOCK_L, BLOCK_N=block_n,
           BLOCK_L=BLOCK_L, num_warps=NUM_WARPS)
    dv, dw = sum_segments(dv), sum_segments(dw)
    if not need_z:
        return dv, dw, z.new_empty(0)  # custom ops cannot return None
    groups = min(H, MAX_H_GROUPS)
    heads_per_group = cdiv(H, groups)
    groups = cdiv(H, heads_per_group)
    partial = new_output((groups, L), z.dtype, z.device)
    launch(_bwd_z_kernel, (cdiv(L, BLOCK_L), groups), *real, torch.view_as_real(partial), H, N, L, heads_per_group,
           BLOCK_N=block_n, BLOCK_L=BLOCK_L, num_warps=NUM_WARPS)
    return dv, dw, partial.sum(0)


_cauchy = define_cauchy_op("cauchy_kernel_triton", _forward, _backward)


def cauchy_kernel_triton(v, z, w):
    """Triton backend (complex64 inputs and math). Returns K (H, L) complex64."""
    return _cauchy(v.contiguous(), z.contiguous(), w.contiguous())
