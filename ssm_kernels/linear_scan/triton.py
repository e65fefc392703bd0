"""Triton backend of linear_scan: x_t = a_t * x_{t-1} + b_t, real or complex, forward and a fused backward.

One kernel does both directions. A program owns a tile of BLOCK_R rows (channels of one batch row or one
packed sequence) and walks its stretch of positions in scan order, one BLOCK_L tile at a time: tl.associative_scan
over the tile, then the carry entering it is folded in (x = X + A * carry) and the carry leaves from its last
position.

Tiles sit at multiples of BLOCK_L in memory (of a packed sequence too: its first and last tiles are partly
masked) and are read in runs of RUN consecutive positions per thread (16 bytes: one vector load per tensor and
run); a complex tensor with a unit stride along L is read as runs of (re, im) pairs. A descending scan (reverse,
and the forward scan's backward) reads the tile's runs last-first and flips each run in its thread, so loads
stay aligned and ascending in memory either way: that is what lets Triton give every load the run layout
(offsets counted from the sequence's end hid their alignment, and one element per thread made the backward
instruction-bound, 45% of the bandwidth in bf16).

Backward (BACKWARD): the adjoint g_t = dy_t + conj(a_next) g_next is the same scan in the opposite direction with
each gate on the step out of its own position (combine_folded: no load of the neighbouring gate); what leaves
the last position, conj(a_0) g_0, is dinitial_state. dgates_t = conj(x_prev) g_t reads the forward output one
position away (the initial state past the end). Nothing but the output x is saved for backward.

Long sequences with few rows (too few tiles to fill the GPU) are cut into SEGMENTS of whole tiles, in two
passes of the same kernel: pass 1 (MODE_SUMMARY) scans each segment from a zero carry and keeps only its
composition (A, X) = (factor on the entering carry, carry leaving); pass 2 (MODE_APPLY) scans every segment
again, its carry composed from the summaries of the segments before it (an associative scan over at most
BLOCK_S of them) and the initial state. Reads double, but every SM works.

A real input of a complex scan is read as real (its imaginary part is zero) and its gradient is written as the
real part only. Packed sequences (cu_seqlens): tensors (1, D, T); row tiles are (sequence, channel block), each
with its own start and length; initial states (S, D).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton_affine import combine, combine_complex, combine_folded, combine_folded_complex
from .._triton_launch import launch
from .._utils import cdiv, multiprocessor_count, next_power_of_2
from ._common import define_scan_ops, kernel_functions, kernel_view, packed_rows, segments

# Tiles: BLOCK_L = min(next_pow2(L), MAX_BLOCK_L, tile) positions x BLOCK_R = tile // BLOCK_L rows (capped by D),
# tile = TILE, or less where the H200 measured less to be faster (benchmarks/results/h200_linear_scan_tiles.txt):
# complex scans carry 4 (forward) or 6 (backward) fp32 per position through the scan, 168 / 255 registers at 2048
# positions (12-18% occupancy); the 16-bit backward gained 7% at 1024.
MAX_BLOCK_L = 2048
TILE = 2048
COMPLEX_TILE = 512
HALF_BACKWARD_TILE = 1024
NUM_WARPS = 4
RUN_BYTES = 16  # positions per thread and run: one 16-byte load of the tokens (dy in the backward)
# Segments: when the row tiles are fewer than this many per SM, long rows are cut (two passes).
TILES_PER_SM = 4
MAX_SEGMENTS = 1024  # BLOCK_S: the carry of a segment is composed from at most this many summaries
MIN_BLOCK_S = 4  # Triton 3.6 fails to lower the scan over a (BLOCK_R, 2) tile of summaries to LLVM
INTERPRET_SMS = 4  # the interpreter's stand-in for the SM count (tests lower MAX_BLOCK_L to reach segments)

MODE_WHOLE, MODE_SUMMARY, MODE_APPLY = 0, 1, 2
# How a (B, D, L) tensor is read: real; complex, (re, im) at 2 * offset + (0, 1); complex with a unit stride
# along L, runs of RUN positions read as 2 * RUN consecutive scalars
REAL, COMPLEX, PACKED = 0, 1, 2


@triton.jit
def _cmul(ar, ai, br, bi, COMPLEX: tl.constexpr):
    """(ar + i ai)(br + i bi); a real scan keeps its imaginary parts zero and skips them."""
    if COMPLEX:
        return ar * br - ai * bi, ar * bi + ai * br
    else:
        return ar * br, ai


@triton.jit
def _last(v):
    """The last column of a (BLOCK_R, BLOCK_L) tile, (BLOCK_R,)."""
    idx = tl.arange(0, v.shape[1])
    return tl.sum(tl.where(idx[None, :] == v.shape[1] - 1, v, 0.0), axis=1)


@triton.jit
def _load_rows(ptr, offsets, mask, COMPLEX: tl.constexpr):
    """(re, im) in fp32 of (BLOCK_R,) values at element offsets (im zero for a real tensor)."""
    if COMPLEX:
        re = tl.load(ptr + 2 * offsets, mask=mask, other=0.0).to(tl.float32)
        im = tl.load(ptr + 2 * offsets + 1, mask=mask, other=0.0).to(tl.float32)
    else:
        re = tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        im = tl.zeros_like(re)
    return re, im


@triton.jit
def _columns(tile, WIDTH: tl.constexpr, RUN: tl.constexpr, DESC: tl.constexpr):
    """Memory positions (WIDTH,) of the columns of a tile (WIDTH positions from tile * WIDTH) in runs of RUN:
    ascending, or with DESC the runs last-first, each run still ascending. Runs stay aligned either way: what
    gives every load the layout of a run per thread."""
    c = tl.arange(0, WIDTH)
    if DESC:
        c = (WIDTH // RUN - 1 - c // RUN) * RUN + c % RUN
    return tile * WIDTH + c


@triton.jit
def _load_tile(ptr, row, stride_l, tile, shift, row_ok, lo, hi, other, KIND: tl.constexpr, BLOCK_L: tl.constexpr,
               RUN: tl.constexpr, DESC: tl.constexpr):
    """(re, im) in fp32, (BLOCK_R, BLOCK_L) in _columns' order, of rows at element offsets row (BLOCK_R,), every
    position moved by shift; positions outside [lo, hi) or in rows not ok read (other, 0)."""
    m = _columns(tile, BLOCK_L, RUN, DESC) + shift
    mask = row_ok[:, None] & ((m >= lo) & (m < hi))[None, :]
    if KIND == 2:  # (re, im) pairs: runs of 2 RUN scalars
        sc = _columns(tile, 2 * BLOCK_L, 2 * RUN, DESC) + 2 * shift
        mask2 = row_ok[:, None] & ((sc >= 2 * lo) & (sc < 2 * hi))[None, :]
        pair = tl.load(ptr + (2 * row[:, None] + sc[None, :]), mask=mask2, other=0.0).to(tl.float32)
        re, im = tl.split(tl.reshape(pair, (pair.shape[0], BLOCK_L, 2)))
        re = tl.where(mask, re, other)
    else:
        offsets = row[:, None] + m[None, :] * stride_l
        if KIND == 1:
            re = tl.load(ptr + 2 * offsets, mask=mask, other=other).to(tl.float32)
            im = tl.load(ptr + 2 * offsets + 1, mask=mask, other=0.0).to(tl.float32)
        else:
            re = tl.load(ptr + offsets, mask=mask, other=other).to(tl.float32)
            im = tl.zeros_like(re)
    return re, im


@triton.jit
def _store_tile(ptr, row, stride_l, tile, row_ok, lo, hi, re, im, KIND: tl.constexpr, BLOCK_L: tl.constexpr,
                RUN: tl.constexpr, DESC: tl.constexpr):
    """Store (re, im) as _load_tile reads them (re only into a real tensor)."""
    if KIND == 2:
        sc = _columns(tile, 2 * BLOCK_L, 2 * RUN, DESC)
        mask2 = row_ok[:, None] & ((sc >= 2 * lo) & (sc < 2 * hi))[None, :]
        pair = tl.reshape(tl.join(re, im), (re.shape[0], 2 * BLOCK_L))
        tl.store(ptr + (2 * row[:, None] + sc[None, :]), pair, mask=mask2)
    else:
        m = _columns(tile, BLOCK_L, RUN, DESC)
        mask = row_ok[:, None] & ((m >= lo) & (m < hi))[None, :]
        offsets = row[:, None] + m[None, :] * stride_l
        if KIND == 1:
            tl.store(ptr + 2 * offsets, re, mask=mask)
            tl.store(ptr + 2 * offsets + 1, im, mask=mask)
        else:
            tl.store(ptr + offsets, re, mask=mask)


@triton.jit
def _flip_runs(v, RUN: tl.constexpr, DESC: tl.constexpr):
    """Between _columns' order and scan order (its own inverse): with DESC each run of a (BLOCK_R, BLOCK_L) tile
    is reversed within its thread, which makes the last-first runs one descending sequence."""
    if DESC:
        v = tl.reshape(tl.flip(tl.reshape(v, (v.shape[0], v.shape[1] // RUN, RUN)), 2), v.shape)
    return v


@triton.jit
def _scan_tile(a_r, a_i, u_r, u_i, c_r, c_i, FOLDED: tl.constexpr, COMPLEX: tl.constexpr, FACTOR: tl.constexpr):
    """One (BLOCK_R, BLOCK_L) tile in scan order entered with the carry c (BLOCK_R,): (values, carry leaving,
    and with FACTOR the tile's factor on the entering carry (ones otherwise)).
    Plain: x_p = a_p x_{p-1} + u_p, carry x_last. FOLDED: x_p = u_p + (a x)_{p-1}, carry (a x)_last."""
    if FOLDED:
        one = tl.full(a_r.shape, 1.0, tl.float32)
        if COMPLEX:
            x_r, x_i, p_r, p_i, _, _ = tl.associative_scan((u_r, u_i, one, one * 0.0, a_r, a_i), 1,
                                                           combine_folded_complex)
        else:
            x_r, p_r, _ = tl.associative_scan((u_r, one, a_r), 1, combine_folded)
            x_i, p_i = u_i, a_i
    else:
        if COMPLEX:
            p_r, p_i, x_r, x_i = tl.associative_scan((a_r, a_i, u_r, u_i), 1, combine_complex)
        else:
            p_r, x_r = tl.associative_scan((a_r, u_r), 1, combine)
            p_i, x_i = a_i, u_i
    m_r, m_i = _cmul(p_r, p_i, c_r[:, None], c_i[:, None], COMPLEX)
    v_r, v_i = x_r + m_r, x_i + m_i  # masked positions are identities: the last column carries on
    if FOLDED:
        o_r, o_i = _cmul(a_r, a_i, v_r, v_i, COMPLEX)
        if FACTOR:
            p_r, p_i = _cmul(a_r, a_i, p_r, p_i, COMPLEX)
    else:
        o_r, o_i = v_r, v_i
    leave_r, leave_i, k_r, k_i = _last(o_r), c_i, c_r * 0.0 + 1.0, c_i
    if FACTOR:
        k_r = _last(p_r)
    if COMPLEX:
        leave_i = _last(o_i)
        if FACTOR:
            k_i = _last(p_i)
    return v_r, v_i, leave_r, leave_i, k_r, k_i


@triton.jit
def _linear_scan_kernel(
    gates, stride_ab, stride_ad, stride_al,
    inputs, stride_ib, stride_id, stride_il,  # forward: tokens b; backward: dy
    outputs, stride_ob, stride_od, stride_ol,  # forward: x; backward: dtokens (g)
    states, stride_sb, stride_sd, stride_sl,  # backward: the forward output x
    dgates, stride_gb, stride_gd, stride_gl,  # backward: dgates, (B, D, L)
    h0, stride_hb, stride_hd,  # initial state, compute dtype (B, D) or (S, D)
    dh0,  # backward: dinitial_state, contiguous (B, D) or (S, D), compute dtype
    summaries,  # (rows, n_segments, 4) fp32: (A re, A im, X re, X im) of each segment
    cu_seqlens, dim, length, seg_tiles, n_segments,
    REVERSE: tl.constexpr, BACKWARD: tl.constexpr, MODE: tl.constexpr, HAS_H0: tl.constexpr,
    VARLEN: tl.constexpr, SCAN_COMPLEX: tl.constexpr, GATES_KIND: tl.constexpr, INPUTS_KIND: tl.constexpr,
    OUTPUTS_KIND: tl.constexpr, STATES_KIND: tl.constexpr, DGATES_KIND: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, RUN: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # strides count elements of each tensor (complex ones for a complex tensor)
    pid_r, seg = tl.program_id(0), tl.program_id(1)
    d_blocks = tl.cdiv(dim, BLOCK_R)
    batch, d0 = pid_r // d_blocks, (pid_r % d_blocks) * BLOCK_R
    d = d0 + tl.arange(0, BLOCK_R)
    row_ok = d < dim
    if VARLEN:  # tensors (1, D, T): sequence `batch` is positions [lo, hi)
        lo = tl.load(cu_seqlens + batch).to(tl.int64)
        hi = tl.load(cu_seqlens + batch + 1).to(tl.int64)
        tensor_b = 0
    else:
        tensor_b = batch.to(tl.int64)
        lo = tensor_b * 0
        hi = lo + length
    first_tile = lo // BLOCK_L
    n_tiles = tl.where(hi > lo, (hi - 1) // BLOCK_L - first_tile + 1, 0)
    i_begin = seg * seg_tiles
    i_end = tl.minimum(i_begin + seg_tiles, n_tiles)  # an empty stretch stores only identities
    rows = batch.to(tl.int64) * dim + d  # summary / state rows
    h0_rows = batch.to(tl.int64) * stride_hb + d * stride_hd

    # the carry entering this stretch
    zero = tl.zeros((BLOCK_R,), dtype=tl.float32)
    carry_r, carry_i = zero, zero
    if HAS_H0 and (not BACKWARD) and MODE != 1:
        carry_r, carry_i = _load_rows(h0, h0_rows, row_ok, SCAN_COMPLEX)
    if MODE == 2:  # compose the summaries of the segments before this one
        s = tl.arange(0, BLOCK_S)
        before = row_ok[:, None] & (s[None, :] < seg)
        base = (rows[:, None] * n_segments + s[None, :]) * 4
        ar = tl.load(summaries + base, mask=before, other=1.0)
        ai = tl.load(summaries + base + 1, mask=before, other=0.0)
        xr = tl.load(summaries + base + 2, mask=before, other=0.0)
        xi = tl.load(summaries + base + 3, mask=before, other=0.0)
        if SCAN_COMPLEX:
            ar, ai, xr, xi = tl.associative_scan((ar, ai, xr, xi), 1, combine_complex)
            ai, xi = _last(ai), _last(xi)
        else:
            ar, xr = tl.associative_scan((ar, xr), 1, combine)
            ai, xi = zero, zero
        ar, xr = _last(ar), _last(xr)
        mr, mi = _cmul(ar, ai, carry_r, carry_i, SCAN_COMPLEX)
        carry_r, carry_i = mr + xr, mi + xi
    factor_r, factor_i = zero + 1.0, zero  # MODE_SUMMARY: this segment's factor on its entering carry

    row_a = tensor_b * stride_ab + d * stride_ad
    row_i = tensor_b * stride_ib + d * stride_id
    row_o = tensor_b * stride_ob + d * stride_od
    row_s = tensor_b * stride_sb + d * stride_sd
    row_g = tensor_b * stride_gb + d * stride_gd
    for i in range(i_begin, i_end):
        tile = first_tile + (n_tiles - 1 - i if REVERSE else i)
        a_r, a_i = _load_tile(gates, row_a, stride_al, tile, 0, row_ok, lo, hi, 1.0, GATES_KIND, BLOCK_L, RUN,
                              REVERSE)
        u_r, u_i = _load_tile(inputs, row_i, stride_il, tile, 0, row_ok, lo, hi, 0.0, INPUTS_KIND, BLOCK_L, RUN,
                              REVERSE)
        if BACKWARD:
            a_i = -a_i
        v_r, v_i, carry_r, carry_i, k_r, k_i = _scan_tile(
            _flip_runs(a_r, RUN, REVERSE), _flip_runs(a_i, RUN, REVERSE), _flip_runs(u_r, RUN, REVERSE),
            _flip_runs(u_i, RUN, REVERSE), carry_r, carry_i, BACKWARD, SCAN_COMPLEX, MODE == 1)
        if MODE == 1:
            factor_r, factor_i = _cmul(k_r, k_i, factor_r, factor_i, SCAN_COMPLEX)
        else:
            v_r, v_i = _flip_runs(v_r, RUN, REVERSE), _flip_runs(v_i, RUN, REVERSE)
            _store_tile(outputs, row_o, stride_ol, tile, row_ok, lo, hi, v_r, v_i, OUTPUTS_KIND, BLOCK_L, RUN,
                        REVERSE)
            if BACKWARD:  # dgates_t = conj(x before step t) g_t: the forward scan's previous position
                x_r, x_i = _load_tile(states, row_s, stride_sl, tile, -1 if REVERSE else 1, row_ok, lo, hi, 0.0,
                                      STATES_KIND, BLOCK_L, RUN, REVERSE)
                if HAS_H0:  # the initial state before the forward scan's first position
                    m = _columns(tile, BLOCK_L, RUN, REVERSE)
                    entry = ((m == lo) if REVERSE else (m == hi - 1))[None, :]
                    e_r, e_i = _load_rows(h0, h0_rows, row_ok, SCAN_COMPLEX)
                    x_r = tl.where(entry, e_r[:, None], x_r)
                    x_i = tl.where(entry, e_i[:, None], x_i)
                g_r, g_i = _cmul(x_r, -x_i, v_r, v_i, SCAN_COMPLEX)
                _store_tile(dgates, row_g, stride_gl, tile, row_ok, lo, hi, g_r, g_i, DGATES_KIND, BLOCK_L, RUN,
                            REVERSE)

    if MODE == 1:
        base = (rows * n_segments + seg) * 4
        tl.store(summaries + base, factor_r, mask=row_ok)
        tl.store(summaries + base + 1, factor_i, mask=row_ok)
        tl.store(summaries + base + 2, carry_r, mask=row_ok)
        tl.store(summaries + base + 3, carry_i, mask=row_ok)
    elif BACKWARD and HAS_H0:
        if (i_end == n_tiles) & (i_begin < n_tiles):  # what leaves the last position: conj(a_0) g_0
            if SCAN_COMPLEX:
                tl.store(dh0 + 2 * rows, carry_r, mask=row_ok)
                tl.store(dh0 + 2 * rows + 1, carry_i, mask=row_ok)
            else:
                tl.store(dh0 + rows, carry_r, mask=row_ok)


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRET_SMS
    return multiprocessor_count(device)


def tile_size(scan_complex: bool, backward: bool, element_bytes: int) -> int:
    """Positions a program scans at a time (BLOCK_L x BLOCK_R) for a scan of this kind."""
    if scan_complex:
        return min(TILE, COMPLEX_TILE)
    if backward and element_bytes == 2:
        return min(TILE, HALF_BACKWARD_TILE)
    return TILE


def plan(batch: int, dim: int, length: int, device: torch.device, packed: bool = False,
         tile: Optional[int] = None):
    """(BLOCK_L, BLOCK_R, segments per row, tiles per segment) of a scan of (batch, dim, length) in tiles of
    `tile` positions (TILE by default); packed sequences (at any offset) may touch one tile more than their
    length needs."""
    tile = TILE if tile is None else tile
    block_l = min(MAX_BLOCK_L, next_power_of_2(length), tile)
    block_r = min(next_power_of_2(dim), max(1, tile // block_l))
    n_segments, seg_tiles = segments(batch * cdiv(dim, block_r), length, block_l, packed,
                                     TILES_PER_SM * _multiprocessors(device), MAX_SEGMENTS)
    return block_l, block_r, n_segments, seg_tiles


def _tensor_arg(t: Optional[Tensor]):
    """(tensor the kernel reads, its strides in its own elements, how it is read: REAL / COMPLEX / PACKED)."""
    view, strides, is_complex = kernel_view(t, complex_strides=True)
    if not is_complex:
        return view, strides, REAL
    return view, strides, PACKED if strides[-1] == 1 or t.shape[-1] == 1 else COMPLEX


def _launch(gates: Tensor, inputs: Tensor, outputs: Tensor, h0: Optional[Tensor], cu_seqlens: Optional[Tensor],
            reverse: bool, scan_complex: bool, *, states: Optional[Tensor] = None, dgates: Optional[Tensor] = None,
            dh0: Optional[Tensor] = None) -> None:
    """One scan over (B, D, L) views of any strides (forward, or backward when `states` is given); with
    cu_seqlens each packed sequence of the (1, D, T) views is scanned on its own."""
    batch, dim, length = inputs.shape
    if cu_seqlens is not None:  # rows are (sequence, channel); the plan takes the longest sequence
        batch, length = packed_rows(cu_seqlens)
    backward = states is not None
    element_bytes = 8 if scan_complex else inputs.element_size()
    block_l, block_r, n_segments, seg_tiles = plan(batch, dim, length, inputs.device, cu_seqlens is not None,
                                                   tile_size(scan_complex, backward, element_bytes))
    row_tiles = batch * cdiv(dim, block_r)
    run = min(block_l, max(1, RUN_BYTES // element_bytes))

    (a, sa, a_kind), (u, su, u_kind), (o, so, o_kind), (s, ss, s_kind), (g, sg, g_kind) = map(
        _tensor_arg, (gates, inputs, outputs, states, dgates))
    h, sh, _ = kernel_view(h0, complex_strides=True)
    dh = None if dh0 is None else (torch.view_as_real(dh0) if dh0.is_complex() else dh0)
    summaries = inputs.new_empty((batch * dim * n_segments * 4,) if n_segments > 1 else (1,),
                                 dtype=torch.float32)
    flags = dict(REVERSE=reverse, BACKWARD=backward, HAS_H0=h0 is not None, VARLEN=cu_seqlens is not None,
                 SCAN_COMPLEX=scan_complex, GATES_KIND=a_kind, INPUTS_KIND=u_kind, OUTPUTS_KIND=o_kind,
                 STATES_KIND=s_kind, DGATES_KIND=g_kind, BLOCK_R=block_r, BLOCK_L=block_l, RUN=run,
                 num_warps=NUM_WARPS)
    dummy = u

    def run_mode(mode: int, block_s: int):
        launch(_linear_scan_kernel, (row_tiles, n_segments),
               a, *sa, u, *su, o, *so, s if backward else dummy, *ss, g if backward else dummy, *sg,
               h if h0 is not None else dummy, *sh[:2], dh if dh is not None else dummy, summaries,
               cu_seqlens, dim, length, seg_tiles, n_segments, MODE=mode, BLOCK_S=block_s, **flags)

    if length == 0:
        return
    if n_segments == 1:
        run_mode(MODE_WHOLE, 1)
    else:
        run_mode(MODE_SUMMARY, 1)
        run_mode(MODE_APPLY, max(MIN_BLOCK_S, next_power_of_2(n_segments)))


linear_scan_triton = define_scan_ops("triton", *kernel_functions(_launch))
linear_scan_triton.__doc__ = "Triton backend: (gates, tokens, initial_state, reverse) -> x (B, D, L)."
