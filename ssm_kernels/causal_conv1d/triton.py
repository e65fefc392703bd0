"""Triton backend of causal_conv1d: a streaming forward kernel and a persistent backward kernel.

Layout: x (B, D, L) with any strides. Both the channel-first layout (L contiguous) and the channel-last one
(D contiguous: Mamba's in_proj output viewed as (B, D, L)) are read in place; each kernel takes a
(BLOCK_D, BLOCK_L) tile whose long side follows the contiguous axis (Triton specialises a stride of 1, so
the loads are coalesced along it). Outputs y / dx get x's layout. Block sizes are module constants (below)
so that scripts/tune_causal_conv1d.py can sweep them.

Forward, grid (cdiv(L, BLOCK_L * FWD_TILES_PER_PROGRAM), cdiv(D, BLOCK_D), B): per tile
y[t] = act(bias + sum_k w_k xp[t + k - W + 1]). The k = W-1 tap is the aligned (vectorised) DRAM read of the
tile. Channel-first without seq_idx (FWD_PACKED): the tile is also read shifted back by one 16-byte vector of
E elements (L1 hits, aligned), both are split into their E interleaved parts (register moves: one thread
holds a vector) and each shifted tap is a part of the current or the previous group. Otherwise the W-1
shifted taps are unaligned re-reads of the same lines (L1 hits; channel-last taps are whole rows, aligned).
Positions < 0 come from initial_states by a second masked load, seq_idx drops taps that cross a sequence
boundary. Tiles away from the edges (and D a multiple of BLOCK_D) take an unmasked path. Nothing is stored
for backward but the inputs.

Backward, a persistent grid of P programs (BWD_PROGRAMS_PER_SM per SM on the GPU, INTERPRET_PROGRAMS in the
interpreter). The work is cut into units of `tiles_per_chunk` consecutive L tiles of one (batch row, channel
block); program p walks units p, p + P, ... Each program owns a scratch slot of BLOCK_D x (BLOCK_L + W_PAD)
fp32 in global memory (P slots, a few MB: it stays in L2 / L1). Per tile:
  1. g = dout * silu'(a) ONCE per position, a recomputed from the W taps of x, at the tile's BLOCK_L positions
     and at the W_PAD halo positions after it; both stored to the slot; barrier;
  2. the W shifted windows g[s + j] are read back from the slot: dx[s] = sum_j w_{W-1-j} g[s + j] and
     dweight[W-1-j] += sum_s x[s] g[s + j] (both with the same seq_idx mask same(s + j, s)), dbias += sum g;
  3. the first tile of a row also forms dinitial_states[p] (p = -(W-1) .. -1) and the initial states'
     share of dweight from the same slot; barrier before the next tile overwrites the slot.
dweight / dbias partial sums are written once per unit to a (B * n_lchunks, D, W) fp32 buffer and reduced
with torch.sum (deterministic, no atomics).
Channel-first without seq_idx (BWD_PACKED), every global load is an aligned 16-byte vector and there is no
scratch slot nor barrier: x is read on t - 2E .. t + 2E in steps of E (the aligned group loads of the forward,
L1 hits after the first), dout on t and t + E (t + 2E when W - 1 > E); the pre-activation of the tile and of
the tile one group ahead (two when W - 1 > E) is rebuilt from the parts with the forward's helper
(_packed_conv), so g is computed on t and on t + E, a second silu' per position instead of a scratch round
trip; the shifted windows g[s + j] are parts of the current or next group (registers: _tap), which give dx
and dweight; dinitial_states recomputes g[0 .. W-2] directly (first tile of a row only).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import define_custom_op
from .._utils import new_output
from ._common import gradients, save_for_backward

# --- block sizes (swept by scripts/tune_causal_conv1d.py) ---------------------------------------------
# Channel-first tiles (L contiguous): BLOCK_L = min(next_pow2(L), *_BLOCK_L, MAX_BLOCK_L) positions and
# BLOCK_D = *_TILE // BLOCK_L channels. Channel-last tiles (D contiguous): BLOCK_D = min(next_pow2(D),
# CL_BLOCK_D) channels and BLOCK_L = *_TILE // BLOCK_D positions.
MAX_BLOCK_L = 1024  # cap on BLOCK_L of both kernels (tests lower it to force many tiles)
CL_BLOCK_D = 128
FWD_BLOCK_L = 256
FWD_TILE = 4096
FWD_NUM_WARPS = 4
FWD_TILES_PER_PROGRAM = 1  # consecutive L tiles per forward program
# Channel-first forward without seq_idx: read the tile and the tile shifted back by one 16-byte vector (two for
# W - 1 > the vector) as aligned vectors and pick the shifted taps in registers, instead of W - 1 unaligned
# (scalar) L1 re-reads of the tile.
FWD_PACKED = True
# Channel-first backward without seq_idx: the same aligned packed taps, g recomputed on the tile and on the
# tile one vector ahead (no scratch slot, no barriers), the shifted g windows picked in registers.
BWD_PACKED = True
BWD_BLOCK_L = 256
BWD_TILE = 2048
BWD_NUM_WARPS = 4
# Persistent backward grid: BWD_PROGRAMS_PER_SM programs per SM on the GPU, INTERPRET_PROGRAMS on the CPU
# interpreter; BWD_TARGET_PROGRAMS (when set) overrides both (tests set it to force many units per program).
BWD_PROGRAMS_PER_SM = 4
INTERPRET_PROGRAMS = 3
BWD_TARGET_PROGRAMS: Optional[int] = None
# Units (dweight/dbias partial sums) per program: more balances the grid, fewer means fewer partials.
BWD_UNITS_PER_PROGRAM = 8


# --- kernels -------------------------------------------------------------------------------------------
@triton.jit
def _load_xp(x_row, init_row, d_mask, pos, L, sxl, sil, W: tl.constexpr, HAS_INIT: tl.constexpr,
             MASKED: tl.constexpr):
    """xp at positions pos (1, n) of the rows x_row / init_row (BLOCK_D, 1) pointers, fp32: x for 0 <= pos < L,
    initial_states for -(W-1) <= pos < 0, else 0. MASKED=False: every position is inside [0, L), every row
    inside D."""
    if MASKED:
        v = tl.load(x_row + pos * sxl, mask=d_mask & (pos >= 0) & (pos < L), other=0.0).to(tl.float32)
        if HAS_INIT:
            v += tl.load(init_row + (pos + (W - 1)) * sil, mask=d_mask & (pos < 0) & (pos >= 1 - W),
                         other=0.0).to(tl.float32)
    else:
        v = tl.load(x_row + pos * sxl).to(tl.float32)
    return v


@triton.jit
def _load_seq(seq_row, pos, L, ssl, MASKED: tl.constexpr):
    """Sequence id at positions pos (positions < 0 continue the first token's sequence)."""
    if MASKED:
        return tl.load(seq_row + tl.minimum(tl.maximum(pos, 0), L - 1) * ssl)
    return tl.load(seq_row + pos * ssl)


@triton.jit
def _pre_activation(x_row, w_row, bias_ptr, seq_row, init_row, d, d_mask, t, L, sxl, swk, sil, ssl,
                    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr,
                    MASKED: tl.constexpr):
    """(a, x_t): a = bias + sum_k w[:, k] xp[t - W + 1 + k] at positions t (1, n), fp32, taps across a
    sequence boundary of seq_idx dropped; x_t = xp[t] (the unshifted tap). Used by the forward and by the
    backward's one recomputation per position."""
    a = tl.zeros((d + t).shape, dtype=tl.float32)
    x_t = a
    if HAS_BIAS:
        a += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_SEQ:
        seq_t = _load_seq(seq_row, t, L, ssl, MASKED)
    for k in tl.static_range(W):
        pos = t + (k - (W - 1))
        v = _load_xp(x_row, init_row, d_mask, pos, L, sxl, sil, W, HAS_INIT, MASKED)
        if k == W - 1:
            x_t = v
        elif HAS_SEQ:
            v = tl.where(_load_seq(seq_row, pos, L, ssl, MASKED) == seq_t, v, 0.0)
        a += tl.load(w_row + k * swk, mask=d_mask, other=0.0).to(tl.float32) * v
    return a, x_t


@triton.jit
def _unpack(v, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, E: tl.constexpr):
    """The E interleaved parts v[:, E g + e] (BLOCK_D, BLOCK_L // E) of a tile, e = 0 .. E-1 (8 returned; for
    E = 4 the last four repeat the first). The E elements of a group are one thread's 16-byte vector, so the
    reshape / split are register moves."""
    if E == 8:
        v = tl.reshape(v, (BLOCK_D, BLOCK_L // 8, 2, 2, 2))  # e = 4 a + 2 b + c
        c0, c1 = tl.split(v)
        c0b0, c0b1 = tl.split(c0)
        c1b0, c1b1 = tl.split(c1)
        e0, e4 = tl.split(c0b0)
        e2, e6 = tl.split(c0b1)
        e1, e5 = tl.split(c1b0)
        e3, e7 = tl.split(c1b1)
    else:
        v = tl.reshape(v, (BLOCK_D, BLOCK_L // 4, 2, 2))  # e = 2 b + c
        c0, c1 = tl.split(v)
        e0, e2 = tl.split(c0)
        e1, e3 = tl.split(c1)
        e4, e5, e6, e7 = e0, e1, e2, e3
    return e0, e1, e2, e3, e4, e5, e6, e7


@triton.jit
def _pack(y0, y1, y2, y3, y4, y5, y6, y7, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, E: tl.constexpr):
    """The inverse of _unpack: (BLOCK_D, BLOCK_L) with v[:, E g + e] = y_e[:, g]."""
    if E == 8:
        v = tl.join(tl.join(tl.join(y0, y4), tl.join(y2, y6)), tl.join(tl.join(y1, y5), tl.join(y3, y7)))
    else:
        v = tl.join(tl.join(y0, y2), tl.join(y1, y3))
    return tl.reshape(v, (BLOCK_D, BLOCK_L))


@triton.jit
def _nth(e: tl.constexpr, v0, v1, v2, v3, v4, v5, v6, v7):
    if e == 0:
        r = v0
    elif e == 1:
        r = v1
    elif e == 2:
        r = v2
    elif e == 3:
        r = v3
    elif e == 4:
        r = v4
    elif e == 5:
        r = v5
    elif e == 6:
        r = v6
    else:
        r = v7
    return r


@triton.jit
def _tap(i: tl.constexpr, E: tl.constexpr, c0, c1, c2, c3, c4, c5, c6, c7, p0, p1, p2, p3, p4, p5, p6, p7,
         q0, q1, q2, q3, q4, q5, q6, q7):
    """The part at offset i (constexpr, -2E <= i < E) from a group's start in a run of three consecutive
    groups q, p, c (oldest first): part i of c (i >= 0), part i + E of p (i >= -E), part i + 2E of q."""
    if i >= 0:
        v = _nth(i, c0, c1, c2, c3, c4, c5, c6, c7)
    elif i >= -E:
        v = _nth(i + E, p0, p1, p2, p3, p4, p5, p6, p7)
    else:
        v = _nth(i + 2 * E, q0, q1, q2, q3, q4, q5, q6, q7)
    return v


@triton.jit
def _packed_out(e: tl.constexpr, E: tl.constexpr, W: tl.constexpr, SILU: tl.constexpr, acc,
                w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7):
    """Output e of every group: act(acc + sum_k w_k xp[E g + e - W + 1 + k]); the tap at offset i from the
    group start is part i of the group (c), of the previous group (p: i < 0) or of the one before (q)."""
    for k in tl.static_range(W):
        acc += _nth(k, w0, w1, w2, w3, w4, w5, w6, w7) * _tap(
            e - (W - 1) + k, E, c0, c1, c2, c3, c4, c5, c6, c7, p0, p1, p2, p3, p4, p5, p6, p7,
            q0, q1, q2, q3, q4, q5, q6, q7)
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    return acc


@triton.jit
def _packed_conv(acc, w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                 p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7,
                 E: tl.constexpr, W: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_L: tl.constexpr):
    """act(acc + sum_k w_k xp[t - W + 1 + k]) on a tile t, packed (BLOCK_D, BLOCK_L), from the parts of xp on
    t (c), on t - E (p) and on t - 2E (q; only read when W - 1 > E). Shared by the forward and by the packed
    backward's recomputation of the pre-activation."""
    y0 = _packed_out(0, E, W, SILU, acc, w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                     p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7)
    y1 = _packed_out(1, E, W, SILU, acc, w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                     p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7)
    y2 = _packed_out(2, E, W, SILU, acc, w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                     p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7)
    y3 = _packed_out(3, E, W, SILU, acc, w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                     p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7)
    y4, y5, y6, y7 = y0, y1, y2, y3
    if E == 8:
        y4 = _packed_out(4, E, W, SILU, acc, w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                         p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7)
        y5 = _packed_out(5, E, W, SILU, acc, w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                         p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7)
        y6 = _packed_out(6, E, W, SILU, acc, w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                         p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7)
        y7 = _packed_out(7, E, W, SILU, acc, w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                         p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7)
    return _pack(y0, y1, y2, y3, y4, y5, y6, y7, BLOCK_D, BLOCK_L, E)


@triton.jit
def _load_w8(w_row, d_mask, swk, W: tl.constexpr):
    """The W taps of the weight rows (BLOCK_D, 1) fp32, padded to 8 with zeros."""
    ws = tl.zeros(d_mask.shape, dtype=tl.float32)
    w0, w1, w2, w3, w4, w5, w6, w7 = ws, ws, ws, ws, ws, ws, ws, ws
    w0 = tl.load(w_row, mask=d_mask, other=0.0).to(tl.float32)
    if W > 1:
        w1 = tl.load(w_row + swk, mask=d_mask, other=0.0).to(tl.float32)
    if W > 2:
        w2 = tl.load(w_row + 2 * swk, mask=d_mask, other=0.0).to(tl.float32)
    if W > 3:
        w3 = tl.load(w_row + 3 * swk, mask=d_mask, other=0.0).to(tl.float32)
    if W > 4:
        w4 = tl.load(w_row + 4 * swk, mask=d_mask, other=0.0).to(tl.float32)
    if W > 5:
        w5 = tl.load(w_row + 5 * swk, mask=d_mask, other=0.0).to(tl.float32)
    if W > 6:
        w6 = tl.load(w_row + 6 * swk, mask=d_mask, other=0.0).to(tl.float32)
    if W > 7:
        w7 = tl.load(w_row + 7 * swk, mask=d_mask, other=0.0).to(tl.float32)
    return w0, w1, w2, w3, w4, w5, w6, w7


@triton.jit
def _load_parts(x_row, init_row, d_mask, pos, L, sxl, sil, W: tl.constexpr, HAS_INIT: tl.constexpr,
                MASKED: tl.constexpr, E: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """The E parts of xp at the (aligned) positions pos (1, BLOCK_L)."""
    return _unpack(_load_xp(x_row, init_row, d_mask, pos, L, sxl, sil, W, HAS_INIT, MASKED), BLOCK_D, BLOCK_L, E)


@triton.jit
def _fwd_tile_packed(x_row, w_row, bias_ptr, init_row, y_row, d, d_mask, t, L, sxl, swk, sil, syl,
                     W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
                     MASKED: tl.constexpr, E: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """The forward tile with one aligned load per tap group instead of W - 1 unaligned taps: the tile (t) and
    the tile shifted back by E (and 2E when W - 1 > E) positions, aligned 16-byte vectors; the shifted taps are
    picked from their parts in registers (channel-first only, without seq_idx)."""
    c0, c1, c2, c3, c4, c5, c6, c7 = _load_parts(x_row, init_row, d_mask, t, L, sxl, sil, W, HAS_INIT, MASKED,
                                                 E, BLOCK_D, BLOCK_L)
    p0, p1, p2, p3, p4, p5, p6, p7 = _load_parts(x_row, init_row, d_mask, t - E, L, sxl, sil, W, HAS_INIT,
                                                 MASKED, E, BLOCK_D, BLOCK_L)
    if W - 1 > E:
        q0, q1, q2, q3, q4, q5, q6, q7 = _load_parts(x_row, init_row, d_mask, t - 2 * E, L, sxl, sil, W, HAS_INIT,
                                                     MASKED, E, BLOCK_D, BLOCK_L)
    else:
        q0, q1, q2, q3, q4, q5, q6, q7 = p0, p1, p2, p3, p4, p5, p6, p7
    w0, w1, w2, w3, w4, w5, w6, w7 = _load_w8(w_row, d_mask, swk, W)
    acc = tl.zeros(c0.shape, dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    y = _packed_conv(acc, w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                     p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7,
                     E, W, SILU, BLOCK_D, BLOCK_L).to(y_row.dtype.element_ty)
    if MASKED:
        tl.store(y_row + t * syl, y, mask=d_mask & (t < L))
    else:
        tl.store(y_row + t * syl, y)


@triton.jit
def _fwd_tile(x_row, w_row, bias_ptr, seq_row, init_row, y_row, d, d_mask, t, L, sxl, swk, sil, ssl, syl,
              W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr,
              SILU: tl.constexpr, MASKED: tl.constexpr, PACK_E: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_L: tl.constexpr):
    if PACK_E > 0:
        _fwd_tile_packed(x_row, w_row, bias_ptr, init_row, y_row, d, d_mask, t, L, sxl, swk, sil, syl,
                         W, HAS_BIAS, HAS_INIT, SILU, MASKED, PACK_E, BLOCK_D, BLOCK_L)
    else:
        acc, _ = _pre_activation(x_row, w_row, bias_ptr, seq_row, init_row, d, d_mask, t, L, sxl, swk, sil, ssl,
                                 W, HAS_BIAS, HAS_SEQ, HAS_INIT, MASKED)
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc))
        if MASKED:
            tl.store(y_row + t * syl, acc.to(y_row.dtype.element_ty), mask=d_mask & (t < L))
        else:
            tl.store(y_row + t * syl, acc.to(y_row.dtype.element_ty))


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, y_ptr,
                D, L, sxb, sxd, sxl, swd, swk, sib, sid, sil, ssb, ssl, syb, syd, syl,
                W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr,
                SILU: tl.constexpr, EVEN_D: tl.constexpr, PACK_E: tl.constexpr, REACH: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, TILES: tl.constexpr):
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]
    d_mask = d < D
    d64 = d.to(tl.int64)
    x_row = x_ptr + b * sxb + d64 * sxd
    y_row = y_ptr + b * syb + d64 * syd
    init_row = init_ptr + b * sib + d64 * sid
    w_row = w_ptr + d * swd
    seq_row = seq_ptr + b * ssb
    for i in tl.static_range(TILES):
        t0 = (pid_l * TILES + i) * BLOCK_L
        t = t0 + tl.arange(0, BLOCK_L)[None, :]
        if EVEN_D:
            if (t0 >= REACH) & (t0 + BLOCK_L <= L):  # REACH: how far back the taps read
                _fwd_tile(x_row, w_row, bias_ptr, seq_row, init_row, y_row, d, d_mask, t, L, sxl, swk, sil, ssl,
                          syl, W, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, False, PACK_E, BLOCK_D, BLOCK_L)
            else:
                _fwd_tile(x_row, w_row, bias_ptr, seq_row, init_row, y_row, d, d_mask, t, L, sxl, swk, sil, ssl,
                          syl, W, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, True, PACK_E, BLOCK_D, BLOCK_L)
        else:
            _fwd_tile(x_row, w_row, bias_ptr, seq_row, init_row, y_row, d, d_mask, t, L, sxl, swk, sil, ssl,
                      syl, W, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, True, PACK_E, BLOCK_D, BLOCK_L)


@triton.jit
def _dsilu_mul(dy, a):
    """dy * silu'(a)."""
    s = 1.0 / (1.0 + tl.exp(-a))
    return dy * (s * (1.0 + a * (1.0 - s)))


@triton.jit
def _grad_pre(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, d, d_mask, t, L, sxl, swk, sil, ssl, sgl,
              W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr,
              SILU: tl.constexpr, MASKED: tl.constexpr):
    """(g, x_t) at positions t (1, n): g = dL/d(pre-activation) = dout * silu'(a), 0 outside [0, L); x_t = xp[t]."""
    if MASKED:
        dy = tl.load(dout_row + t * sgl, mask=d_mask & (t < L), other=0.0).to(tl.float32)
    else:
        dy = tl.load(dout_row + t * sgl).to(tl.float32)
    if SILU:
        a, x_t = _pre_activation(x_row, w_row, bias_ptr, seq_row, init_row, d, d_mask, t, L, sxl, swk, sil, ssl,
                                 W, HAS_BIAS, HAS_SEQ, HAS_INIT, MASKED)
        g = _dsilu_mul(dy, a)
    else:
        g = dy
        x_t = _load_xp(x_row, init_row, d_mask, t, L, sxl, sil, W, False, MASKED)
    return g, x_t


@triton.jit
def _bwd_init(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dinit_row, scr_row, d, d_mask, L, sxl, swk,
              sil, ssl, sgl, sjl, scr_l, dw,
              W: tl.constexpr, W_PAD: tl.constexpr, INIT_PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
              HAS_SEQ: tl.constexpr, SILU: tl.constexpr, FROM_SCRATCH: tl.constexpr):
    """The first tile of a row: dinitial_states[p] = sum_j w_{W-1-j} g[p + j], p = -(W-1) .. -1, and the
    initial states' share of dweight. g[0 .. W-2] is read from the scratch slot (FROM_SCRATCH) or recomputed
    (the packed path has no slot: W small recomputations, once per row)."""
    kk = tl.arange(0, W_PAD)[None, :]
    p = tl.arange(0, INIT_PAD)[None, :] - (W - 1)
    x_p = tl.load(init_row + (p + (W - 1)) * sil, mask=d_mask & (p < 0), other=0.0).to(tl.float32)
    if HAS_SEQ:
        seq_0 = tl.load(seq_row)
    dinit = tl.zeros(x_p.shape, dtype=tl.float32)
    for j in tl.static_range(W):
        idx = p + j
        # its own name: Triton 3.6 rejects rebinding a (BLOCK_D, BLOCK_L) variable to another shape
        if FROM_SCRATCH:
            gp = tl.load(scr_row + idx * scr_l, mask=(idx >= 0) & (p < 0), other=0.0)
        else:
            gp, _ = _grad_pre(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, d, d_mask, tl.maximum(idx, 0),
                              L, sxl, swk, sil, ssl, sgl, W, HAS_BIAS, HAS_SEQ, True, SILU, True)
            gp = tl.where((idx >= 0) & (p < 0), gp, 0.0)
        if HAS_SEQ:
            gp = tl.where(_load_seq(seq_row, idx, L, ssl, True) == seq_0, gp, 0.0)
        dinit += tl.load(w_row + (W - 1 - j) * swk, mask=d_mask, other=0.0).to(tl.float32) * gp
        dw += tl.where(kk == W - 1 - j, tl.sum(x_p * gp, axis=1)[:, None], 0.0)
    tl.store(dinit_row + (p + (W - 1)) * sjl, dinit.to(dinit_row.dtype.element_ty), mask=d_mask & (p < 0))
    return dw


@triton.jit
def _bwd_tile_scratch(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row, scr_row, d,
                      d_mask, s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, scr_l, dw, db,
                      W: tl.constexpr, W_PAD: tl.constexpr, INIT_PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
                      HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, BLOCK_L: tl.constexpr,
                      MASKED: tl.constexpr):
    """One (BLOCK_D, BLOCK_L) tile starting at position s0 through the scratch slot (any layout, seq_idx):
    writes dx (and dinitial_states when s0 == 0), returns dw / db with the tile's share added. The scratch
    slot is free on entry and on exit."""
    ri = tl.arange(0, BLOCK_L)[None, :]
    kk = tl.arange(0, W_PAD)[None, :]
    t = s0 + ri
    # 1. g once per position: the tile and the W-1 (padded to W_PAD) halo positions after it
    g, x_t = _grad_pre(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, d, d_mask, t, L, sxl, swk, sil,
                       ssl, sgl, W, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, MASKED)
    tl.store(scr_row + ri * scr_l, g)
    if W > 1:
        rh = tl.arange(0, W_PAD)[None, :]
        gh, _ = _grad_pre(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, d, d_mask, s0 + BLOCK_L + rh, L,
                          sxl, swk, sil, ssl, sgl, W, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, MASKED)
        tl.store(scr_row + (BLOCK_L + rh) * scr_l, gh)
    tl.debug_barrier()
    # 2. the W shifted windows of g: dx, dweight, dbias
    dx = tl.zeros(g.shape, dtype=tl.float32)
    if HAS_SEQ:
        seq_t = _load_seq(seq_row, t, L, ssl, MASKED)
    for j in tl.static_range(W):
        gj = tl.load(scr_row + (ri + j) * scr_l)
        if j == 0:
            db += tl.sum(gj, axis=1)[:, None]
        elif HAS_SEQ:
            gj = tl.where(_load_seq(seq_row, t + j, L, ssl, MASKED) == seq_t, gj, 0.0)
        dx += tl.load(w_row + (W - 1 - j) * swk, mask=d_mask, other=0.0).to(tl.float32) * gj
        dw += tl.where(kk == W - 1 - j, tl.sum(x_t * gj, axis=1)[:, None], 0.0)
    if MASKED:
        tl.store(dx_row + t * sdl, dx.to(dx_row.dtype.element_ty), mask=d_mask & (t < L))
    else:
        tl.store(dx_row + t * sdl, dx.to(dx_row.dtype.element_ty))
    # 3. the first tile of a row: dinitial_states and the initial states' share of dweight
    if HAS_INIT:
        if s0 == 0:
            dw = _bwd_init(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dinit_row, scr_row, d, d_mask, L,
                           sxl, swk, sil, ssl, sgl, sjl, scr_l, dw, W, W_PAD, INIT_PAD, HAS_BIAS, HAS_SEQ, SILU,
                           True)
    tl.debug_barrier()  # every read of the slot is done before the next tile overwrites it
    return dw, db


@triton.jit
def _packed_dx(e: tl.constexpr, E: tl.constexpr, W: tl.constexpr, acc, w0, w1, w2, w3, w4, w5, w6, w7,
               g0, g1, g2, g3, g4, g5, g6, g7, n0, n1, n2, n3, n4, n5, n6, n7, m0, m1, m2, m3, m4, m5, m6, m7):
    """Part e of dx: sum_j w_{W-1-j} g[E grp + e + j]; offset e + j is part of the group (g), of the next
    group (n) or of the one after (m): _tap on the run g, n, m read from its far end."""
    for j in tl.static_range(W):
        acc += _nth(W - 1 - j, w0, w1, w2, w3, w4, w5, w6, w7) * _tap(
            e + j - 2 * E, E, m0, m1, m2, m3, m4, m5, m6, m7, n0, n1, n2, n3, n4, n5, n6, n7,
            g0, g1, g2, g3, g4, g5, g6, g7)
    return acc


@triton.jit
def _bwd_tile_packed(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row, d, d_mask,
                     s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, dw, db,
                     W: tl.constexpr, W_PAD: tl.constexpr, INIT_PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_INIT: tl.constexpr, SILU: tl.constexpr, MASKED: tl.constexpr, E: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """One tile without scratch, every global load an aligned 16-byte vector (channel-first, no seq_idx).
    g is computed on the tile (t) and on the tile one group ahead (t + E; and t + 2E when W - 1 > E), each
    from the forward's packed taps (x on t - 2E .. t + 2E, aligned loads of the same lines); the shifted
    windows g[s + j] are parts of the current or next groups (registers), as in the forward mirrored."""
    kk = tl.arange(0, W_PAD)[None, :]
    t = s0 + tl.arange(0, BLOCK_L)[None, :]
    w0, w1, w2, w3, w4, w5, w6, w7 = _load_w8(w_row, d_mask, swk, W)
    c0, c1, c2, c3, c4, c5, c6, c7 = _load_parts(x_row, init_row, d_mask, t, L, sxl, sil, W, HAS_INIT, MASKED,
                                                 E, BLOCK_D, BLOCK_L)
    if MASKED:
        dy = tl.load(dout_row + t * sgl, mask=d_mask & (t < L), other=0.0).to(tl.float32)
        dyn = tl.load(dout_row + (t + E) * sgl, mask=d_mask & (t + E < L), other=0.0).to(tl.float32)
    else:
        dy = tl.load(dout_row + t * sgl).to(tl.float32)
        dyn = tl.load(dout_row + (t + E) * sgl).to(tl.float32)
    if W - 1 > E:
        if MASKED:
            dym = tl.load(dout_row + (t + 2 * E) * sgl, mask=d_mask & (t + 2 * E < L), other=0.0).to(tl.float32)
        else:
            dym = tl.load(dout_row + (t + 2 * E) * sgl).to(tl.float32)
    else:
        dym = dyn
    if SILU:
        p0, p1, p2, p3, p4, p5, p6, p7 = _load_parts(x_row, init_row, d_mask, t - E, L, sxl, sil, W, HAS_INIT,
                                                     MASKED, E, BLOCK_D, BLOCK_L)
        n0, n1, n2, n3, n4, n5, n6, n7 = _load_parts(x_row, init_row, d_mask, t + E, L, sxl, sil, W, HAS_INIT,
                                                     MASKED, E, BLOCK_D, BLOCK_L)
        if W - 1 > E:
            q0, q1, q2, q3, q4, q5, q6, q7 = _load_parts(x_row, init_row, d_mask, t - 2 * E, L, sxl, sil, W,
                                                         HAS_INIT, MASKED, E, BLOCK_D, BLOCK_L)
            m0, m1, m2, m3, m4, m5, m6, m7 = _load_parts(x_row, init_row, d_mask, t + 2 * E, L, sxl, sil, W,
                                                         HAS_INIT, MASKED, E, BLOCK_D, BLOCK_L)
        else:
            q0, q1, q2, q3, q4, q5, q6, q7 = p0, p1, p2, p3, p4, p5, p6, p7
            m0, m1, m2, m3, m4, m5, m6, m7 = n0, n1, n2, n3, n4, n5, n6, n7
        acc = tl.zeros(c0.shape, dtype=tl.float32)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
        g = _dsilu_mul(dy, _packed_conv(acc, w0, w1, w2, w3, w4, w5, w6, w7, c0, c1, c2, c3, c4, c5, c6, c7,
                                        p0, p1, p2, p3, p4, p5, p6, p7, q0, q1, q2, q3, q4, q5, q6, q7,
                                        E, W, False, BLOCK_D, BLOCK_L))
        gn = _dsilu_mul(dyn, _packed_conv(acc, w0, w1, w2, w3, w4, w5, w6, w7, n0, n1, n2, n3, n4, n5, n6, n7,
                                          c0, c1, c2, c3, c4, c5, c6, c7, p0, p1, p2, p3, p4, p5, p6, p7,
                                          E, W, False, BLOCK_D, BLOCK_L))
        if W - 1 > E:
            gm = _dsilu_mul(dym, _packed_conv(acc, w0, w1, w2, w3, w4, w5, w6, w7, m0, m1, m2, m3, m4, m5, m6, m7,
                                              n0, n1, n2, n3, n4, n5, n6, n7, c0, c1, c2, c3, c4, c5, c6, c7,
                                              E, W, False, BLOCK_D, BLOCK_L))
        else:
            gm = gn
    else:
        g, gn, gm = dy, dyn, dym
    db += tl.sum(g, axis=1)[:, None]
    g0, g1, g2, g3, g4, g5, g6, g7 = _unpack(g, BLOCK_D, BLOCK_L, E)
    gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7 = _unpack(gn, BLOCK_D, BLOCK_L, E)
    gm0, gm1, gm2, gm3, gm4, gm5, gm6, gm7 = _unpack(gm, BLOCK_D, BLOCK_L, E)
    zero = tl.zeros(c0.shape, dtype=tl.float32)
    dx0 = _packed_dx(0, E, W, zero, w0, w1, w2, w3, w4, w5, w6, w7, g0, g1, g2, g3, g4, g5, g6, g7,
                     gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7, gm0, gm1, gm2, gm3, gm4, gm5, gm6, gm7)
    dx1 = _packed_dx(1, E, W, zero, w0, w1, w2, w3, w4, w5, w6, w7, g0, g1, g2, g3, g4, g5, g6, g7,
                     gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7, gm0, gm1, gm2, gm3, gm4, gm5, gm6, gm7)
    dx2 = _packed_dx(2, E, W, zero, w0, w1, w2, w3, w4, w5, w6, w7, g0, g1, g2, g3, g4, g5, g6, g7,
                     gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7, gm0, gm1, gm2, gm3, gm4, gm5, gm6, gm7)
    dx3 = _packed_dx(3, E, W, zero, w0, w1, w2, w3, w4, w5, w6, w7, g0, g1, g2, g3, g4, g5, g6, g7,
                     gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7, gm0, gm1, gm2, gm3, gm4, gm5, gm6, gm7)
    dx4, dx5, dx6, dx7 = dx0, dx1, dx2, dx3
    if E == 8:
        dx4 = _packed_dx(4, E, W, zero, w0, w1, w2, w3, w4, w5, w6, w7, g0, g1, g2, g3, g4, g5, g6, g7,
                         gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7, gm0, gm1, gm2, gm3, gm4, gm5, gm6, gm7)
        dx5 = _packed_dx(5, E, W, zero, w0, w1, w2, w3, w4, w5, w6, w7, g0, g1, g2, g3, g4, g5, g6, g7,
                         gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7, gm0, gm1, gm2, gm3, gm4, gm5, gm6, gm7)
        dx6 = _packed_dx(6, E, W, zero, w0, w1, w2, w3, w4, w5, w6, w7, g0, g1, g2, g3, g4, g5, g6, g7,
                         gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7, gm0, gm1, gm2, gm3, gm4, gm5, gm6, gm7)
        dx7 = _packed_dx(7, E, W, zero, w0, w1, w2, w3, w4, w5, w6, w7, g0, g1, g2, g3, g4, g5, g6, g7,
                         gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7, gm0, gm1, gm2, gm3, gm4, gm5, gm6, gm7)
    dx = _pack(dx0, dx1, dx2, dx3, dx4, dx5, dx6, dx7, BLOCK_D, BLOCK_L, E).to(dx_row.dtype.element_ty)
    if MASKED:
        tl.store(dx_row + t * sdl, dx, mask=d_mask & (t < L))
    else:
        tl.store(dx_row + t * sdl, dx)
    # dweight[W-1-j] += sum_s x[s] g[s + j]: the parts of x times the window parts, summed over parts, then
    # one reduction per tap
    for j in tl.static_range(W):
        corr = zero
        for e in tl.static_range(E):
            corr += _nth(e, c0, c1, c2, c3, c4, c5, c6, c7) * _tap(
                e + j - 2 * E, E, gm0, gm1, gm2, gm3, gm4, gm5, gm6, gm7, gn0, gn1, gn2, gn3, gn4, gn5, gn6, gn7,
                g0, g1, g2, g3, g4, g5, g6, g7)
        dw += tl.where(kk == W - 1 - j, tl.sum(corr, axis=1)[:, None], 0.0)
    if HAS_INIT:
        if s0 == 0:
            dw = _bwd_init(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dinit_row, dinit_row, d, d_mask, L,
                           sxl, swk, sil, ssl, sgl, sjl, 0, dw, W, W_PAD, INIT_PAD, HAS_BIAS, False, SILU, False)
    return dw, db


@triton.jit
def _bwd_tile(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row, scr_row, d, d_mask,
              s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, scr_l, dw, db,
              W: tl.constexpr, W_PAD: tl.constexpr, INIT_PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
              HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, MASKED: tl.constexpr,
              PACK_E: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    if PACK_E > 0:
        dw, db = _bwd_tile_packed(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row, d,
                                  d_mask, s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, dw, db, W, W_PAD, INIT_PAD,
                                  HAS_BIAS, HAS_INIT, SILU, MASKED, PACK_E, BLOCK_D, BLOCK_L)
    else:
        dw, db = _bwd_tile_scratch(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row,
                                   scr_row, d, d_mask, s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, scr_l, dw, db,
                                   W, W_PAD, INIT_PAD, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, BLOCK_L, MASKED)
    return dw, db


@triton.jit
def _bwd_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, dout_ptr, dx_ptr, dinit_ptr, dw_ptr, db_ptr, scr_ptr,
                D, L, n_dblk, n_ltiles, n_lchunks, tiles_per_chunk, n_units, n_programs,
                sxb, sxd, sxl, swd, swk, sib, sid, sil, ssb, ssl, sgb, sgd, sgl, sdb, sdd, sdl, sjb, sjd, sjl,
                scr_d, scr_l,
                W: tl.constexpr, W_PAD: tl.constexpr, INIT_PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
                HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, EVEN_D: tl.constexpr,
                PACK_E: tl.constexpr, BACK: tl.constexpr, AHEAD: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    rd = tl.arange(0, BLOCK_D)[:, None]
    kk = tl.arange(0, W_PAD)[None, :]
    scr_row = scr_ptr + pid * (BLOCK_D * (BLOCK_L + W_PAD)) + rd * scr_d
    for u in range(pid, n_units, n_programs):
        lchunk = u % n_lchunks
        row = u // n_lchunks
        d = (row % n_dblk) * BLOCK_D + rd
        b = (row // n_dblk).to(tl.int64)
        d_mask = d < D
        d64 = d.to(tl.int64)
        x_row = x_ptr + b * sxb + d64 * sxd
        init_row = init_ptr + b * sib + d64 * sid
        dout_row = dout_ptr + b * sgb + d64 * sgd
        dx_row = dx_ptr + b * sdb + d64 * sdd
        dinit_row = dinit_ptr + b * sjb + d64 * sjd
        w_row = w_ptr + d * swd
        seq_row = seq_ptr + b * ssb
        dw = tl.zeros((BLOCK_D, W_PAD), dtype=tl.float32)
        db = tl.zeros((BLOCK_D, 1), dtype=tl.float32)
        first = lchunk * tiles_per_chunk
        for ltile in range(first, tl.minimum(first + tiles_per_chunk, n_ltiles)):
            s0 = ltile * BLOCK_L
            if EVEN_D:
                # BACK / AHEAD: how far before / after the tile the loads reach
                if (s0 >= BACK) & (s0 + BLOCK_L + AHEAD <= L):
                    dw, db = _bwd_tile(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row,
                                       scr_row, d, d_mask, s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, scr_l, dw, db,
                                       W, W_PAD, INIT_PAD, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, False, PACK_E,
                                       BLOCK_D, BLOCK_L)
                else:
                    dw, db = _bwd_tile(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row,
                                       scr_row, d, d_mask, s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, scr_l, dw, db,
                                       W, W_PAD, INIT_PAD, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, True, PACK_E,
                                       BLOCK_D, BLOCK_L)
            else:
                dw, db = _bwd_tile(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row,
                                   scr_row, d, d_mask, s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, scr_l, dw, db,
                                   W, W_PAD, INIT_PAD, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, True, PACK_E,
                                   BLOCK_D, BLOCK_L)
        part = b * n_lchunks + lchunk
        tl.store(dw_ptr + part * D * W + d * W + kk, dw, mask=d_mask & (kk < W))
        tl.store(db_ptr + part * D + d, db, mask=d_mask)


# --- launchers -----------------------------------------------------------------------------------------
def _channel_last(x: Tensor) -> bool:
    return x.stride(1) == 1 and x.stride(2) != 1 and x.shape[2] > 1


def _like_layout(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A fresh (NaN-poisoned in tests) tensor of x's shape and layout (channel-first or channel-last)."""
    batch, dim, length = x.shape
    if _channel_last(x):
        return new_output((batch, length, dim), dtype, x.device).transpose(1, 2)
    return new_output((batch, dim, length), dtype, x.device)


@functools.lru_cache(maxsize=None)
def _blocks(dim: int, length: int, channel_last: bool, tile: int, block_l: int, cl_block_d: int
            ) -> Tuple[int, int]:
    """(BLOCK_D, BLOCK_L): `tile` elements, the long side along the contiguous axis."""
    if channel_last:
        block_d = min(triton.next_power_of_2(dim), cl_block_d)
        block_l = max(1, min(triton.next_power_of_2(length), tile // block_d))
    else:
        block_l = min(triton.next_power_of_2(length), block_l)
        block_d = max(1, min(triton.next_power_of_2(dim), tile // block_l))
    return block_d, block_l


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _bwd_programs(device: torch.device) -> int:
    """The persistent backward grid size."""
    if BWD_TARGET_PROGRAMS is not None:
        return BWD_TARGET_PROGRAMS
    if device.type != "cuda":
        return INTERPRET_PROGRAMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index) * BWD_PROGRAMS_PER_SM


def _strides3(t: Optional[Tensor]) -> Tuple[int, int, int]:
    return (0, 0, 0) if t is None else t.stride()


def _pack_e(x: Tensor, width: int, seq_idx: Optional[Tensor], block_l: int, enabled: bool) -> int:
    """E, the elements of one 16-byte vector (8 bf16 / fp16, 4 fp32), when the packed taps apply: channel-first
    (L contiguous), no seq_idx, BLOCK_L a multiple of E; else 0 (the per-tap path)."""
    pack_e = 16 // x.element_size()
    if enabled and width > 1 and seq_idx is None and x.stride(2) == 1 and block_l % pack_e == 0:
        return pack_e
    return 0


def _forward_launch(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
                    initial_states: Optional[Tensor], silu: bool) -> Tensor:
    batch, dim, length = x.shape
    width = weight.shape[1]
    y = _like_layout(x, x.dtype)
    block_d, block_l = _blocks(dim, length, _channel_last(x), FWD_TILE, min(FWD_BLOCK_L, MAX_BLOCK_L),
                               CL_BLOCK_D)
    tiles = max(1, min(FWD_TILES_PER_PROGRAM, triton.cdiv(length, block_l)))
    pack_e = _pack_e(x, width, seq_idx, block_l, FWD_PACKED)
    reach = width - 1 if pack_e == 0 else pack_e * triton.cdiv(width - 1, pack_e)
    grid = (triton.cdiv(length, block_l * tiles), triton.cdiv(dim, block_d), batch)
    _fwd_kernel[grid](
        x, weight, x if bias is None else bias, x if seq_idx is None else seq_idx,
        x if initial_states is None else initial_states, y,
        dim, length, *x.stride(), *weight.stride(), *_strides3(initial_states),
        *((0, 0) if seq_idx is None else seq_idx.stride()), *y.stride(),
        W=width, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, HAS_INIT=initial_states is not None,
        SILU=silu, EVEN_D=dim % block_d == 0, PACK_E=pack_e, REACH=reach, BLOCK_D=block_d, BLOCK_L=block_l,
        TILES=tiles,
        num_warps=FWD_NUM_WARPS)
    return y


def _backward_launch(x, weight, bias, seq_idx, initial_states, dout, silu, need_dinit):
    batch, dim, length = x.shape
    width = weight.shape[1]
    channel_last = _channel_last(x)
    block_d, block_l = _blocks(dim, length, channel_last, BWD_TILE, min(BWD_BLOCK_L, MAX_BLOCK_L), CL_BLOCK_D)
    w_pad = triton.next_power_of_2(width)
    n_dblk = triton.cdiv(dim, block_d)
    n_ltiles = triton.cdiv(length, block_l)
    programs = _bwd_programs(x.device)
    # units of consecutive L tiles (one dweight/dbias partial sum each), about BWD_UNITS_PER_PROGRAM per program
    tiles_per_chunk = max(1, min(n_ltiles, (batch * n_dblk * n_ltiles) // (programs * BWD_UNITS_PER_PROGRAM)))
    n_lchunks = triton.cdiv(n_ltiles, tiles_per_chunk)
    tiles_per_chunk = triton.cdiv(n_ltiles, n_lchunks)  # even chunks
    n_units = batch * n_dblk * n_lchunks
    programs = max(1, min(programs, n_units))
    dx = _like_layout(x, x.dtype)
    dinit = new_output((batch, dim, width - 1), x.dtype if initial_states is None else initial_states.dtype,
                       x.device)
    dw_part = new_output((batch * n_lchunks, dim, width), torch.float32, x.device)
    db_part = new_output((batch * n_lchunks, dim), torch.float32, x.device)
    pack_e = _pack_e(x, width, seq_idx, block_l, BWD_PACKED)
    # BACK / AHEAD: how far before / after a tile its loads reach (the unmasked path needs both inside [0, L))
    if pack_e:
        back = ahead = pack_e * triton.cdiv(width - 1, pack_e)
    else:
        back, ahead = width - 1, w_pad
    # g scratch of the per-tap path, one slot per program, laid out like x's tiles (the contiguous axis stays
    # contiguous); the packed path has none
    scr_numel = 1 if pack_e else programs * block_d * (block_l + w_pad)
    scratch = torch.empty((scr_numel,), dtype=torch.float32, device=x.device)
    scr_d, scr_l = (1, block_d) if channel_last else (block_l + w_pad, 1)
    has_init = initial_states is not None and width > 1
    _bwd_kernel[(programs,)](
        x, weight, x if bias is None else bias, x if seq_idx is None else seq_idx,
        x if initial_states is None else initial_states, dout, dx, dinit, dw_part, db_part, scratch,
        dim, length, n_dblk, n_ltiles, n_lchunks, tiles_per_chunk, n_units, programs,
        *x.stride(), *weight.stride(), *_strides3(initial_states),
        *((0, 0) if seq_idx is None else seq_idx.stride()), *dout.stride(), *dx.stride(), *dinit.stride(),
        scr_d, scr_l,
        W=width, W_PAD=w_pad, INIT_PAD=triton.next_power_of_2(max(width - 1, 1)),
        HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, HAS_INIT=has_init, SILU=silu,
        EVEN_D=dim % block_d == 0, PACK_E=pack_e, BACK=back, AHEAD=ahead, BLOCK_D=block_d, BLOCK_L=block_l,
        num_warps=BWD_NUM_WARPS)
    if not has_init and need_dinit:
        dinit.zero_()  # W == 1: an empty state, nothing to write
    return dx, dw_part.sum(0), db_part.sum(0), dinit


# --- autograd wiring -----------------------------------------------------------------------------------
def _forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
             initial_states: Optional[Tensor], silu: bool) -> Tensor:
    return _forward_launch(x, weight, bias, seq_idx, initial_states, silu)


def _forward_fake(x, weight, bias, seq_idx, initial_states, silu):
    batch, dim, length = x.shape
    if _channel_last(x):
        return x.new_empty((batch, length, dim)).transpose(1, 2)
    return x.new_empty((batch, dim, length))


def _backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
              initial_states: Optional[Tensor], dout: Tensor, silu: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dw, db, dinit = _backward_launch(x, weight, bias, seq_idx, initial_states, dout, silu, True)
    return dx, dw.to(weight.dtype), db.to(weight.dtype if bias is None else bias.dtype), dinit


def _backward_fake(x, weight, bias, seq_idx, initial_states, dout, silu):
    batch, dim, length = x.shape
    dx = x.new_empty((batch, length, dim)).transpose(1, 2) if _channel_last(x) else x.new_empty(x.shape)
    return (dx, weight.new_empty(weight.shape), (weight if bias is None else bias).new_empty((dim,)),
            (x if initial_states is None else initial_states).new_empty((batch, dim, weight.shape[1] - 1)))


_run = define_custom_op("causal_conv1d_triton", _forward, _forward_fake, _backward, _backward_fake,
                        save_for_backward, gradients)


# --- backend function ----------------------------------------------------------------------------------
def causal_conv1d_triton(x, weight, bias=None, activation=None, seq_idx=None, initial_states=None):
    """Triton backend of ssm_kernels.causal_conv1d (arguments already validated). Returns y (B, D, L)."""
    return _run(x, weight, bias, seq_idx, initial_states, activation == "silu")
