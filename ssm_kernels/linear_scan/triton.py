"""Triton backend of linear_scan: x_t = a_t * x_{t-1} + b_t, real or complex, forward and a fused backward.

One kernel does both directions. A program owns a tile of BLOCK_R rows (channels of one batch row or one
packed sequence) and walks its stretch of positions in scan order, BLOCK_L at a time: tl.associative_scan
over the (gate, token) pairs of the tile, then the carry entering the tile is folded in (x = X + A * carry)
and the carry leaves as the tile's last column. Positions are visited in scan order p = 0, 1, ...; the
position in memory is t = p, or len - 1 - p with reverse, so both directions are the same code.

Backward (BACKWARD): the adjoint g_t = dy_t + conj(a_next) g_next is the same scan in the opposite direction,
its gate at scan position p being the gate of position p - 1; in the same pass dgates_t = conj(x_prev) g_t
reads the forward output at scan position p + 1 (the initial state at the end) and dinitial_state =
conj(a at the last position) g there. Nothing but the output x is saved for backward.

Long sequences with few rows (too few tiles to fill the GPU) are cut into SEGMENTS of whole blocks, in two
passes of the same kernel: pass 1 (MODE_SUMMARY) scans each segment from a zero carry and keeps only its
composition (A, X) = (product of the gates, last value); pass 2 (MODE_APPLY) scans every segment again, its
carry composed from the summaries of the segments before it (an associative scan over at most BLOCK_S of
them) and the initial state. Reads double, but every SM works.

Complex tensors are read through their real views (re, im interleaved); a real input of a complex scan is
read as real (its imaginary part is zero) and its gradient is written as the real part only.
Packed sequences (cu_seqlens): tensors (1, D, T); row tiles are (sequence, channel block), each with its own
start and length; initial states (S, D).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton_affine import combine, combine_complex
from .._utils import cdiv, next_power_of_2
from ._common import define_scan_ops, kernel_functions, kernel_view, packed_rows

# Tiles: BLOCK_L = min(next_pow2(L), MAX_BLOCK_L) positions x BLOCK_R = TILE // BLOCK_L rows (capped by D).
MAX_BLOCK_L = 2048
TILE = 2048
NUM_WARPS = 4
# Segments: when the row tiles are fewer than this many per SM, long rows are cut (two passes).
TILES_PER_SM = 4
MAX_SEGMENTS = 1024  # BLOCK_S: the carry of a segment is composed from at most this many summaries
MIN_BLOCK_S = 4  # Triton 3.6 fails to lower the scan over a (BLOCK_R, 2) tile of summaries to LLVM
INTERPRET_SMS = 4  # the interpreter's stand-in for the SM count (tests lower MAX_BLOCK_L to reach segments)

MODE_WHOLE, MODE_SUMMARY, MODE_APPLY = 0, 1, 2


@triton.jit
def _cmul(ar, ai, br, bi, COMPLEX: tl.constexpr):
    """(ar + i ai)(br + i bi); a real scan keeps its imaginary parts zero and skips them."""
    if COMPLEX:
        return ar * br - ai * bi, ar * bi + ai * br
    else:
        return ar * br, ai


@triton.jit
def _scan(ar, ai, br, bi, AXIS: tl.constexpr, COMPLEX: tl.constexpr):
    """Inclusive scan of the affine maps x -> a x + b along AXIS: (A, X) with x_p = A_p x_entry + X_p."""
    if COMPLEX:
        ar, ai, br, bi = tl.associative_scan((ar, ai, br, bi), AXIS, combine_complex)
    else:
        ar, br = tl.associative_scan((ar, br), AXIS, combine)
    return ar, ai, br, bi


@triton.jit
def _load(ptr, offsets, mask, other, COMPLEX: tl.constexpr):
    """(re, im) in fp32 from a real tensor or the real view of a complex one (im zero for a real one)."""
    re = tl.load(ptr + offsets, mask=mask, other=other).to(tl.float32)
    if COMPLEX:
        im = tl.load(ptr + offsets + 1, mask=mask, other=0.0).to(tl.float32)
    else:
        im = tl.zeros_like(re)
    return re, im


@triton.jit
def _store(ptr, offsets, re, im, mask, COMPLEX: tl.constexpr):
    tl.store(ptr + offsets, re, mask=mask)
    if COMPLEX:
        tl.store(ptr + offsets + 1, im, mask=mask)


@triton.jit
def _last(v, idx, LAST: tl.constexpr):
    """The column LAST of a (BLOCK_R, BLOCK_L) tile, (BLOCK_R,)."""
    return tl.sum(tl.where(idx[None, :] == LAST, v, 0.0), axis=1)


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
    cu_seqlens, dim, length, seg_len, n_segments,
    REVERSE: tl.constexpr, BACKWARD: tl.constexpr, MODE: tl.constexpr, HAS_H0: tl.constexpr,
    VARLEN: tl.constexpr, SCAN_COMPLEX: tl.constexpr, GATES_COMPLEX: tl.constexpr,
    INPUTS_COMPLEX: tl.constexpr, OUTPUTS_COMPLEX: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid_r, seg = tl.program_id(0), tl.program_id(1)
    d_blocks = tl.cdiv(dim, BLOCK_R)
    batch, d0 = pid_r // d_blocks, (pid_r % d_blocks) * BLOCK_R
    d = d0 + tl.arange(0, BLOCK_R)
    row_ok = d < dim
    if VARLEN:  # tensors (1, D, T): sequence `batch` is positions [start, start + n)
        start = tl.load(cu_seqlens + batch).to(tl.int64)
        n = tl.load(cu_seqlens + batch + 1).to(tl.int64) - start
        tensor_b = 0
    else:
        tensor_b = batch.to(tl.int64)
        start = tensor_b * 0
        n = length
    p_begin = seg * seg_len
    p_end = tl.minimum(p_begin + seg_len, n)  # an empty stretch (p_begin >= n) stores only identities
    rows = batch.to(tl.int64) * dim + d  # summary / state rows
    h0_rows = batch.to(tl.int64) * stride_hb + d * stride_hd

    # the carry entering this stretch
    zero = tl.zeros((BLOCK_R,), dtype=tl.float32)
    carry_r, carry_i = zero, zero
    if HAS_H0 and (not BACKWARD) and MODE != 1:
        carry_r, carry_i = _load(h0, h0_rows, row_ok, 0.0, SCAN_COMPLEX)
    if MODE == 2:  # compose the summaries of the segments before this one
        s = tl.arange(0, BLOCK_S)
        before = row_ok[:, None] & (s[None, :] < seg)
        base = (rows[:, None] * n_segments + s[None, :]) * 4
        ar = tl.load(summaries + base, mask=before, other=1.0)
        ai = tl.load(summaries + base + 1, mask=before, other=0.0)
        xr = tl.load(summaries + base + 2, mask=before, other=0.0)
        xi = tl.load(summaries + base + 3, mask=before, other=0.0)
        ar, ai, xr, xi = _scan(ar, ai, xr, xi, 1, SCAN_COMPLEX)
        ar, ai, xr, xi = _last(ar, s, BLOCK_S - 1), _last(ai, s, BLOCK_S - 1), \
            _last(xr, s, BLOCK_S - 1), _last(xi, s, BLOCK_S - 1)
        mr, mi = _cmul(ar, ai, carry_r, carry_i, SCAN_COMPLEX)
        carry_r, carry_i = mr + xr, mi + xi
    prod_r, prod_i = zero + 1.0, zero  # MODE_SUMMARY: the product of this segment's gates

    idx = tl.arange(0, BLOCK_L)
    b_a = tensor_b * stride_ab + d[:, None] * stride_ad
    b_i = tensor_b * stride_ib + d[:, None] * stride_id
    b_o = tensor_b * stride_ob + d[:, None] * stride_od
    b_s = tensor_b * stride_sb + d[:, None] * stride_sd
    b_g = tensor_b * stride_gb + d[:, None] * stride_gd
    for p0 in range(p_begin, p_end, BLOCK_L):
        p = p0 + idx
        valid = row_ok[:, None] & (p < p_end)[None, :]
        t = start + (n - 1 - p if REVERSE else p)
        if BACKWARD:  # the gate of the previous scan position (position p - 1 in scan order), conjugated
            t_gate = t + 1 if REVERSE else t - 1
            gate_ok = valid & (p >= 1)[None, :]
        else:
            t_gate = t
            gate_ok = valid
        a_r, a_i = _load(gates, b_a + t_gate[None, :] * stride_al, gate_ok, 1.0, GATES_COMPLEX)
        if BACKWARD:
            a_i = -a_i
        u_r, u_i = _load(inputs, b_i + t[None, :] * stride_il, valid, 0.0, INPUTS_COMPLEX)
        a_r, a_i, v_r, v_i = _scan(a_r, a_i, u_r, u_i, 1, SCAN_COMPLEX)
        m_r, m_i = _cmul(a_r, a_i, carry_r[:, None], carry_i[:, None], SCAN_COMPLEX)
        v_r, v_i = v_r + m_r, v_i + m_i  # masked positions are identities: the last column is the carry
        carry_r, carry_i = _last(v_r, idx, BLOCK_L - 1), _last(v_i, idx, BLOCK_L - 1)
        if MODE == 1:
            pl_r, pl_i = _last(a_r, idx, BLOCK_L - 1), _last(a_i, idx, BLOCK_L - 1)
            prod_r, prod_i = _cmul(pl_r, pl_i, prod_r, prod_i, SCAN_COMPLEX)
        else:
            _store(outputs, b_o + t[None, :] * stride_ol, v_r, v_i, valid, OUTPUTS_COMPLEX)
            if BACKWARD:  # dgates_t = conj(x at scan position p + 1, the initial state past the end) g_t
                t_x = t - 1 if REVERSE else t + 1
                x_ok = valid & (p + 1 < n)[None, :]
                x_r, x_i = _load(states, b_s + t_x[None, :] * stride_sl, x_ok, 0.0, SCAN_COMPLEX)
                if HAS_H0:
                    at_end = valid & (p + 1 == n)[None, :]
                    e_r, e_i = _load(h0, h0_rows, row_ok, 0.0, SCAN_COMPLEX)
                    x_r = tl.where(at_end, e_r[:, None], x_r)
                    x_i = tl.where(at_end, e_i[:, None], x_i)
                g_r, g_i = _cmul(x_r, -x_i, v_r, v_i, SCAN_COMPLEX)
                _store(dgates, b_g + t[None, :] * stride_gl, g_r, g_i, valid, GATES_COMPLEX)

    if MODE == 1:
        base = (rows * n_segments + seg) * 4
        tl.store(summaries + base, prod_r, mask=row_ok)
        tl.store(summaries + base + 1, prod_i, mask=row_ok)
        tl.store(summaries + base + 2, carry_r, mask=row_ok)
        tl.store(summaries + base + 3, carry_i, mask=row_ok)
    elif BACKWARD and HAS_H0:
        if (p_end == n) & (p_begin < n):  # dinitial_state = conj(gate at the last scan position) g there
            t_last = start + (0 if REVERSE else n - 1)
            l_r, l_i = _load(gates, tensor_b * stride_ab + d * stride_ad + t_last * stride_al, row_ok, 0.0,
                             GATES_COMPLEX)
            r_r, r_i = _cmul(l_r, -l_i, carry_r, carry_i, SCAN_COMPLEX)
            _store(dh0, rows * (2 if SCAN_COMPLEX else 1), r_r, r_i, row_ok, SCAN_COMPLEX)


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRET_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan(batch: int, dim: int, length: int, device: torch.device):
    """(BLOCK_L, BLOCK_R, segments per row, positions per segment) of a scan of (batch, dim, length)."""
    block_l = min(MAX_BLOCK_L, next_power_of_2(length))
    block_r = min(next_power_of_2(dim), max(1, TILE // block_l))
    row_tiles = batch * cdiv(dim, block_r)
    blocks = cdiv(length, block_l)
    wanted = TILES_PER_SM * _multiprocessors(device)
    n_segments = 1 if row_tiles >= wanted else min(blocks, cdiv(wanted, row_tiles), MAX_SEGMENTS)
    seg_len = cdiv(blocks, n_segments) * block_l
    return block_l, block_r, cdiv(length, seg_len), seg_len


def _launch(gates: Tensor, inputs: Tensor, outputs: Tensor, h0: Optional[Tensor], cu_seqlens: Optional[Tensor],
            reverse: bool, scan_complex: bool, *, states: Optional[Tensor] = None, dgates: Optional[Tensor] = None,
            dh0: Optional[Tensor] = None) -> None:
    """One scan over (B, D, L) views of any strides (forward, or backward when `states` is given); with
    cu_seqlens each packed sequence of the (1, D, T) views is scanned on its own."""
    batch, dim, length = inputs.shape
    if cu_seqlens is not None:  # rows are (sequence, channel); the plan takes the longest sequence
        batch, length = packed_rows(cu_seqlens)
    backward = states is not None
    block_l, block_r, n_segments, seg_len = plan(batch, dim, length, inputs.device)
    row_tiles = batch * cdiv(dim, block_r)

    (a, sa, a_complex), (u, su, u_complex), (o, so, o_complex) = map(kernel_view, (gates, inputs, outputs))
    s, ss, _ = kernel_view(states)
    g, sg, _ = kernel_view(dgates)
    h, sh, _ = kernel_view(h0)
    dh = None if dh0 is None else (torch.view_as_real(dh0) if dh0.is_complex() else dh0)
    summaries = inputs.new_empty((batch * dim * n_segments * 4,) if n_segments > 1 else (1,),
                                 dtype=torch.float32)
    flags = dict(REVERSE=reverse, BACKWARD=backward, HAS_H0=h0 is not None, VARLEN=cu_seqlens is not None,
                 SCAN_COMPLEX=scan_complex, GATES_COMPLEX=a_complex, INPUTS_COMPLEX=u_complex,
                 OUTPUTS_COMPLEX=o_complex, BLOCK_R=block_r, BLOCK_L=block_l, num_warps=NUM_WARPS)
    dummy = u

    def run(mode: int, block_s: int):
        _linear_scan_kernel[(row_tiles, n_segments)](
            a, *sa, u, *su, o, *so, s if backward else dummy, *ss, g if backward else dummy, *sg,
            h if h0 is not None else dummy, *sh[:2], dh if dh is not None else dummy, summaries,
            cu_seqlens, dim, length, seg_len, n_segments, MODE=mode, BLOCK_S=block_s, **flags)

    if length == 0:
        return
    if n_segments == 1:
        run(MODE_WHOLE, 1)
    else:
        run(MODE_SUMMARY, 1)
        run(MODE_APPLY, max(MIN_BLOCK_S, next_power_of_2(n_segments)))


linear_scan_triton = define_scan_ops("triton", *kernel_functions(_launch))
linear_scan_triton.__doc__ = "Triton backend: (gates, tokens, initial_state, reverse) -> x (B, D, L)."
