"""Triton forward kernels of the selective scan (real and complex A); launched from triton.py.

One program per (batch row, block of BLOCK_D channels). The program walks L in chunks of BLOCK_L positions
(the checkpoint spacing). Per chunk it loads the group's B_t / C_t tiles ONCE and then runs the block's
channels one at a time: the rows of u / delta / z / y are contiguous (coalesced), a_t = exp(Δ_t A) and
b_t = Δ_t u_t B_t are scanned along the positions with the linear-recurrence combine (a1, b1), (a2, b2) ->
(a1 a2, a2 b1 + b2), the carried state enters as h_t = Π a * h_prev + scanned b, y_t = C_t . h_t is reduced
over N, then D u_t and the silu(z_t) gate are applied.

Real A (the performance case) lays a chunk out as (RUN, BLOCK_L / RUN, BLOCK_N) tiles (_run_grid): runs of
RUN consecutive positions (one 16-byte load) sit in one thread's registers, so the scan inside a run is
plain arithmetic, and only the runs' totals, 8x fewer values, are scanned across lanes (_scan_runs). A 1-D
scan along a (BLOCK_N, BLOCK_L) tile, which Triton lays out one position per lane, cost most of the kernels'
instructions in warp shuffles (H200: the backward issued ~1700 shuffles per channel and chunk, over half of
its instructions). The complex kernels keep the (BLOCK_N, BLOCK_L) tiles.

The states of the block's channels stay in registers as one (BLOCK_D, BLOCK_N) fp32 tensor H: channel dd's
row is read with a masked sum over the rows and written back with a where (O(BLOCK_D * N) per channel and
chunk, small next to the tile work; no scratch memory, no barriers). H entering every chunk is stored as the
checkpoint (B, n_chunks, D, N) fp32 for the backward (SAVE_CKPT; skipped for inference).

Padded positions (t >= L) have Δ = 0: a = 1, b = 0, so the state passes through to the chunk's last column.

Latency and instruction count (real A, the performance case): every channel step first issues the loads of
the NEXT channel's rows / scalars / A row (software prefetch, ~5 registers), then computes; a = 2**(Δ A log2 e)
with log2 e folded into the per-channel A row; on the GPU (FAST) that exp2 is a single ex2.approx.ftz
instruction through inline PTX (tl.exp costs five with its denormal fix-up), in the interpreter tl.exp2.
Softplus (once per position, not per state entry) is _triton_math.softplus: one exp2 and a short series, ~17
instructions where log(1 + e) with precise exp, log and division took ~40. Complex A keeps tl.exp / cos / sin.

Packed sequences (VARLEN, batch 1): seq_start[t] is the index of the sequence starting at t (else -1),
seq_end[t] that of the sequence ending at t (else -1). At a start a_t is replaced by 0 (exact restart) and
the sequence's initial state enters as b_t += exp(Δ_t A) h0; at an end the state is stored as that
sequence's final state.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_affine import combine as _combine
from .._triton_affine import combine_complex as _ccombine
from .._triton_affine import combine_with_exclusive as _combine_excl
from .._triton_math import LOG2E, softplus_and_sigmoid
from .._triton_math import exp2 as _exp2


@triton.jit
def _load_tile(ptr, pid_b, group, offs_n, offs_l, mask_n, mask_l, s_b, s_g, s_n, s_l):
    """The group's variable B or C for one chunk: (BLOCK_N, BLOCK_L) fp32, zero outside."""
    p = ptr + pid_b * s_b + group * s_g + offs_n[:, None] * s_n + offs_l[None, :] * s_l
    return tl.load(p, mask=mask_n[:, None] & mask_l[None, :], other=0.0).to(tl.float32)


@triton.jit
def _load_row(ptr, d, offs_n, mask_n, s_g, s_n):
    """Channel d's fixed B or C (or A): (BLOCK_N,) fp32; callers pass mask_n & (d < DIM)."""
    return tl.load(ptr + d * s_g + offs_n * s_n, mask=mask_n, other=0.0).to(tl.float32)


@triton.jit
def _complex_tile(ptr, s_im, pid_b, group, offs_n, offs_l, mask_n, mask_l, s_b, s_g, s_n, s_l):
    """(re, im) (BLOCK_N, BLOCK_L) tiles of a complex B or C read through its real view (imaginary part at
    offset s_im)."""
    re = _load_tile(ptr, pid_b, group, offs_n, offs_l, mask_n, mask_l, s_b, s_g, s_n, s_l)
    im = _load_tile(ptr + s_im, pid_b, group, offs_n, offs_l, mask_n, mask_l, s_b, s_g, s_n, s_l)
    return re, im


@triton.jit
def _complex_row(ptr, s_im, d, offs_n, mask_n, s_g, s_n):
    """(re, im) (BLOCK_N, 1) columns of channel d's row of a complex A, B or C (imaginary part at s_im)."""
    re = _load_row(ptr, d, offs_n, mask_n, s_g, s_n)
    im = _load_row(ptr + s_im, d, offs_n, mask_n, s_g, s_n)
    return re[:, None], im[:, None]


@triton.jit
def _complex_decay(Ar, Ai, dt, CONJUGATE: tl.constexpr):
    """a = exp(dt A), or its conjugate, for complex A (BLOCK_N, 1) and a row of steps dt (1, BLOCK_L): (re, im)."""
    magnitude = tl.exp(Ar * dt)
    angle = Ai * dt
    if CONJUGATE:
        return magnitude * tl.cos(angle), -magnitude * tl.sin(angle)
    return magnitude * tl.cos(angle), magnitude * tl.sin(angle)


@triton.jit
def _enter_complex_state(h0_ptr, sid, d, offs_n, s_h0_b, s_h0_d, s_h0_n, is_start, mask_n, a_r, a_i, b_r, b_i):
    """Packed sequences: b + a h0 where a sequence starts (its initial state h0[sid], complex, interleaved)."""
    p0 = h0_ptr + sid[None, :] * s_h0_b + d * s_h0_d + offs_n[:, None] * s_h0_n
    m0 = is_start & mask_n[:, None]
    h0r = tl.load(p0, mask=m0, other=0.0).to(tl.float32)
    h0i = tl.load(p0 + 1, mask=m0, other=0.0).to(tl.float32)
    return b_r + a_r * h0r - a_i * h0i, b_i + a_r * h0i + a_i * h0r


@triton.jit
def _delta_row(delta_ptr, bias_ptr, row_off, offs_l, mask, s_dt_l, d, ok, HAS_BIAS: tl.constexpr,
               SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """(Δ, dΔ / d(delta)) of one channel's chunk: (BLOCK_L,) fp32 each (see _softplus_row)."""
    raw = tl.load(delta_ptr + row_off + offs_l * s_dt_l, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + tl.load(bias_ptr + d, mask=ok, other=0.0).to(tl.float32)
    return _softplus_row(raw, mask, SOFTPLUS, FAST)


@triton.jit
def _softplus_row(raw, mask, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """(Δ, dΔ / d(raw)) from raw = delta + delta_bias (fp32): softplus and its slope sigmoid, or raw and 1;
    Δ = 0 outside `mask` (a = 1, b = 0 there). A kernel that does not use the slope does not compute it."""
    dt = raw
    slope = tl.full(raw.shape, 1.0, tl.float32)
    if SOFTPLUS:
        dt, slope = softplus_and_sigmoid(raw, FAST)
    return tl.where(mask, dt, 0.0), slope


@triton.jit
def _row_of(T, rows, dd):
    """Row dd of a (BLOCK_D, BLOCK_N) register tensor: (BLOCK_N,)."""
    return tl.sum(tl.where(rows[:, None] == dd, T, 0.0), axis=0)


@triton.jit
def _block_rows(pid_d, DIM, N, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """What every kernel derives from its block of channels: (d0, rows, offs_n, ar_l, mask_n, mask_d,
    mask_dn), d0 the block's first channel, rows / offs_n / ar_l the aranges of channels, modes and chunk
    positions, the masks of the valid ones."""
    d0 = pid_d * BLOCK_D
    rows = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    ar_l = tl.arange(0, BLOCK_L)
    mask_n = offs_n < N
    mask_d = (d0 + rows) < DIM
    return d0, rows, offs_n, ar_l, mask_n, mask_d, mask_d[:, None] & mask_n[None, :]


@triton.jit
def _varlen_marks(start_ptr, end_ptr, offs_l, mask_l):
    """Packed sequences at positions offs_l: (sid, eid, is_start, is_end): the index of the sequence that
    starts / ends there (-1 elsewhere) and, as (1, BLOCK_L) masks, whether one does."""
    sid = tl.load(start_ptr + offs_l, mask=mask_l, other=-1)
    eid = tl.load(end_ptr + offs_l, mask=mask_l, other=-1)
    return sid, eid, (sid >= 0)[None, :], (eid >= 0)[None, :]


@triton.jit
def _run_varlen_marks(start_ptr, end_ptr, pos, mask):
    """_varlen_marks on a _run_grid: sid, eid (RUN, runs) and the masks as (RUN, runs, 1)."""
    sid = tl.load(start_ptr + pos, mask=mask, other=-1)
    eid = tl.load(end_ptr + pos, mask=mask, other=-1)
    return sid, eid, (sid >= 0)[:, :, None], (eid >= 0)[:, :, None]


@triton.jit
def _channel_scalars(bias_ptr, D_ptr, d, ok, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """(delta_bias, D) of channel d as fp32 (1,) tensors, 0 when absent or not `ok` (tensors either way: the
    kernels carry them from one channel's step to the next)."""
    bias = tl.zeros([1], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=ok, other=0.0).to(tl.float32)
    Dv = tl.zeros([1], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=ok, other=0.0).to(tl.float32)
    return bias, Dv


@triton.jit
def _channel_inputs(delta_ptr, u_ptr, z_ptr, bias_ptr, D_ptr, A_ptr, pid_b, d, ok, offs_l, offs_n, L, N,
                    s_dt_b, s_dt_d, s_dt_l, s_u_b, s_u_d, s_u_l, s_z_b, s_z_d, s_z_l, s_A_d, s_A_n,
                    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """Channel d's inputs for one chunk, as loaded (zeros where not `ok`): the rows of delta, u and z
    (BLOCK_L,), delta_bias and D (fp32 scalars, 0 when absent) and the row of A times log2(e) (BLOCK_N,)."""
    m = offs_l < tl.where(ok, L, 0)
    dt = tl.load(delta_ptr + pid_b * s_dt_b + d * s_dt_d + offs_l * s_dt_l, mask=m, other=0.0)
    u = tl.load(u_ptr + pid_b * s_u_b + d * s_u_d + offs_l * s_u_l, mask=m, other=0.0)
    z = dt
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_z_b + d * s_z_d + offs_l * s_z_l, mask=m, other=0.0)
    bias, Dv = _channel_scalars(bias_ptr, D_ptr, d, ok, HAS_BIAS, HAS_D)
    A = tl.load(A_ptr + d * s_A_d + offs_n * s_A_n, mask=offs_n < tl.where(ok, N, 0), other=0.0) * LOG2E
    return dt, u, z, bias, Dv, A


@triton.jit
def _store_output(y_row, offs_l, m, y, u, Dv, z, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """One (batch, channel) row of the output (y_row: its first position; positions contiguous):
    (y + D u) silu(z), each term where its option is set."""
    if HAS_D:
        y += Dv * u
    if HAS_Z:
        z = z.to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(y_row + offs_l, y.to(y_row.dtype.element_ty), mask=m)


@triton.jit
def _run_grid(c, BLOCK_L: tl.constexpr, RUN: tl.constexpr):
    """Positions of chunk c as a (RUN, BLOCK_L // RUN) grid, pos[r, j] = c BLOCK_L + j RUN + r: each run of RUN
    consecutive positions is one column, and the (RUN, runs, BLOCK_N) tiles built on it keep a column in one
    thread's registers (their loads are contiguous along axis 0), so scans along the runs need no shuffles."""
    r = tl.arange(0, RUN)
    j = tl.arange(0, BLOCK_L // RUN)
    return c * BLOCK_L + j[None, :] * RUN + r[:, None]


@triton.jit
def _run_element(x, i):
    """Element i of every run of x (RUN, runs, BLOCK_N): (runs, BLOCK_N). (The runs' totals are taken from
    their inclusive scans this way, not with tl.reduce and the scan's combine: Triton's reductions across
    lanes assume a commutative combine, and affine maps do not commute.)"""
    at = tl.arange(0, x.shape[0]) == i
    return tl.sum(tl.where(at[:, None, None], x, 0.0), axis=0)


@triton.jit
def _scan_run_totals(a_run, b_run, REVERSE: tl.constexpr):
    """Exclusive scan of the runs' totals (runs, BLOCK_N) across lanes: the composition of the runs before
    each run (after it, REVERSE), as (gate product, value from a zero start)."""
    _, _, a_excl, b_excl = tl.associative_scan(
        (a_run, b_run, tl.full(a_run.shape, 1.0, tl.float32), tl.zeros(a_run.shape, tl.float32)), 0, _combine_excl,
        reverse=REVERSE)
    return a_excl, b_excl


@triton.jit
def _scan_runs(a, b, h):
    """States x_p = a_p x_(p-1) + b_p of one chunk from the entering state h (BLOCK_N,), on (RUN, runs,
    BLOCK_N) tiles laid out by _run_grid: inclusive scans inside the runs (in registers), then an exclusive
    scan of the runs' totals (runs, BLOCK_N) across lanes gives the state entering each run."""
    a_in, b_in = tl.associative_scan((a, b), 0, _combine)
    a_before, b_before = _scan_run_totals(_run_element(a_in, a.shape[0] - 1), _run_element(b_in, a.shape[0] - 1),
                                          False)
    h_run = a_before * h[None, :] + b_before
    return a_in * h_run[None, :, :] + b_in


@triton.jit
def _run_tile(ptr, pid_b, group, offs_n, pos, mask_n, mask, s_b, s_g, s_n, s_l):
    """The group's variable B or C on a chunk's (RUN, runs) positions: (RUN, runs, BLOCK_N) fp32, 0 outside."""
    p = ptr + pid_b * s_b + group * s_g + pos[:, :, None] * s_l + offs_n[None, None, :] * s_n
    return tl.load(p, mask=mask[:, :, None] & mask_n[None, None, :], other=0.0).to(tl.float32)


@triton.jit
def _at_position(x, pos, p):
    """x (RUN, runs, BLOCK_N) at the chunk position p: (BLOCK_N,)."""
    return _sum_positions(tl.where((pos == p)[:, :, None], x, 0.0))


@triton.jit
def _sum_positions(x):
    """Sum of x (RUN, runs, BLOCK_N) over the chunk's positions: (BLOCK_N,)."""
    return tl.sum(tl.sum(x, axis=0), axis=0)


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, start_ptr, end_ptr,
    y_ptr, final_ptr, ckpt_ptr, s_y_b, s_y_d,
    L, DIM, N, n_chunks, cpg_B, cpg_C,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l,
    s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    s_h0_b, s_h0_d, s_h0_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, RUN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, VARLEN: tl.constexpr, B_FIXED: tl.constexpr, C_FIXED: tl.constexpr,
    SAVE_CKPT: tl.constexpr, FAST: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)  # int64 offsets: B * D * L may pass 2**31
    pid_d = tl.program_id(1)
    d0, rows, offs_n, ar_l, mask_n, mask_d, mask_dn = _block_rows(pid_d, DIM, N, BLOCK_D, BLOCK_N, BLOCK_L)
    state_off = (d0 + rows)[:, None] * N + offs_n[None, :]  # checkpoint / final-state layout (.., D, N)
    # every channel of the block reads one group of B / C (the launcher makes BLOCK_D divide D / G)
    group_B = d0 // cpg_B
    group_C = d0 // cpg_C
    H = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_H0:
        if not VARLEN:
            H = tl.load(h0_ptr + pid_b * s_h0_b + (d0 + rows)[:, None] * s_h0_d + offs_n[None, :] * s_h0_n,
                        mask=mask_dn, other=0.0).to(tl.float32)
    d_end = tl.minimum(d0 + BLOCK_D, DIM)
    for c in range(0, n_chunks):
        pos = _run_grid(c, BLOCK_L, RUN)
        mask_l = pos < L
        if not B_FIXED:
            Bt = _run_tile(B_ptr, pid_b, group_B, offs_n, pos, mask_n, mask_l, s_B_b, s_B_g, s_B_n, s_B_l)
        if not C_FIXED:
            Ct = _run_tile(C_ptr, pid_b, group_C, offs_n, pos, mask_n, mask_l, s_C_b, s_C_g, s_C_n, s_C_l)
        if VARLEN:
            sid, eid, is_start, is_end = _run_varlen_marks(start_ptr, end_ptr, pos, mask_l)
        if SAVE_CKPT:
            tl.store(ckpt_ptr + (pid_b * n_chunks + c) * DIM * N + state_off, H, mask=mask_dn)
        # the chunk's first channel; every step prefetches the next channel's rows while it computes
        dn = d0.to(tl.int64)
        dt_nx, u_nx, z_nx, bias_nx, D_nx, A_nx = _channel_inputs(
            delta_ptr, u_ptr, z_ptr, bias_ptr, D_ptr, A_ptr, pid_b, dn, dn < d_end, pos, offs_n, L, N,
            s_dt_b, s_dt_d, s_dt_l, s_u_b, s_u_d, s_u_l, s_z_b, s_z_d, s_z_l, s_A_d, s_A_n, HAS_Z, HAS_BIAS, HAS_D)
        for dd in range(0, BLOCK_D):
            d = (d0 + dd).to(tl.int64)
            ok = d < DIM
            m = pos < tl.where(ok, L, 0)  # (block & scalar masks misbehave in the interpreter)
            mn = offs_n < tl.where(ok, N, 0)
            dt_in = dt_nx
            u_in = u_nx
            z_in = z_nx
            bias = bias_nx
            Dv = D_nx
            A = A_nx
            dt_nx, u_nx, z_nx, bias_nx, D_nx, A_nx = _channel_inputs(
                delta_ptr, u_ptr, z_ptr, bias_ptr, D_ptr, A_ptr, pid_b, d + 1, d + 1 < d_end, pos, offs_n, L,
                N, s_dt_b, s_dt_d, s_dt_l, s_u_b, s_u_d, s_u_l, s_z_b, s_z_d, s_z_l, s_A_d, s_A_n, HAS_Z, HAS_BIAS,
                HAS_D)
            dt, _ = _softplus_row(dt_in.to(tl.float32) + bias, m, SOFTPLUS, FAST)
            u = u_in.to(tl.float32)
            a = _exp2(A[None, None, :] * dt[:, :, None], FAST)  # A holds A log2(e)
            if B_FIXED:
                Bt = _load_row(B_ptr, d, offs_n, mn, s_B_g, s_B_n)[None, None, :]
            b = Bt * (dt * u)[:, :, None]
            if VARLEN:
                if HAS_H0:
                    h0 = tl.load(h0_ptr + sid[:, :, None] * s_h0_b + d * s_h0_d + offs_n[None, None, :] * s_h0_n,
                                 mask=is_start & mn[None, None, :], other=0.0).to(tl.float32)
                    b = b + a * h0
                a = tl.where(is_start, 0.0, a)
            hs = _scan_runs(a, b, _row_of(H, rows, dd))
            if C_FIXED:
                Ct = _load_row(C_ptr, d, offs_n, mn, s_C_g, s_C_n)[None, None, :]
            _store_output(y_ptr + pid_b * s_y_b + d * s_y_d, pos, m, tl.sum(hs * Ct, axis=2), u, Dv, z_in, HAS_D,
                          HAS_Z)
            if VARLEN:
                tl.store(final_ptr + eid[:, :, None] * (DIM * N) + d * N + offs_n[None, None, :], hs,
                         mask=is_end & mn[None, None, :])
            # the state after the chunk's last position (padded positions pass it through unchanged)
            h_new = _at_position(hs, pos, c * BLOCK_L + BLOCK_L - 1)
            H = tl.where(rows[:, None] == dd, h_new[None, :], H)
    if not VARLEN:
        tl.store(final_ptr + pid_b * DIM * N + state_off, H, mask=mask_dn)


# --- complex A ----------------------------------------------------------------------------------------------
# The state holds one mode of each conjugate pair: h complex, a = exp(Δ A) complex, y = 2 Re(C . h). Complex
# tensors arrive as their real views: every complex operand is (pointer, strides, offset of the imaginary
# part), which also covers mamba_ssm's real B / C of length 2L with interleaved (re, im) pairs. The carried
# state is two (BLOCK_D, BLOCK_N) tensors (real, imaginary).

@triton.jit
def _selective_scan_fwd_complex_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, start_ptr, end_ptr,
    y_ptr, final_ptr, ckpt_ptr, s_y_b, s_y_d,
    L, DIM, N, n_chunks, cpg_B, cpg_C,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l,
    s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_B_l, s_B_im, s_C_b, s_C_g, s_C_n, s_C_l, s_C_im,
    s_h0_b, s_h0_d, s_h0_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, VARLEN: tl.constexpr, B_FIXED: tl.constexpr, C_FIXED: tl.constexpr,
    SAVE_CKPT: tl.constexpr, FAST: tl.constexpr,
):
    """As _selective_scan_fwd_kernel with complex A, B, C and state; A and the states (h0, final state,
    checkpoints) are interleaved (re, im) fp32 with the imaginary part at offset 1."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d0, rows, offs_n, ar_l, mask_n, mask_d, mask_dn = _block_rows(pid_d, DIM, N, BLOCK_D, BLOCK_N, BLOCK_L)
    state_off = ((d0 + rows)[:, None] * N + offs_n[None, :]) * 2
    last = (ar_l == BLOCK_L - 1)[None, :]
    group_B = d0 // cpg_B
    group_C = d0 // cpg_C
    Hr = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    Hi = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_H0:
        if not VARLEN:
            p0 = h0_ptr + pid_b * s_h0_b + (d0 + rows)[:, None] * s_h0_d + offs_n[None, :] * s_h0_n
            Hr = tl.load(p0, mask=mask_dn, other=0.0).to(tl.float32)
            Hi = tl.load(p0 + 1, mask=mask_dn, other=0.0).to(tl.float32)
    for c in range(0, n_chunks):
        offs_l = c * BLOCK_L + ar_l
        mask_l = offs_l < L
        if not B_FIXED:
            Br, Bi = _complex_tile(B_ptr, s_B_im, pid_b, group_B, offs_n, offs_l, mask_n, mask_l, s_B_b, s_B_g,
                                   s_B_n, s_B_l)
        if not C_FIXED:
            Cr, Ci = _complex_tile(C_ptr, s_C_im, pid_b, group_C, offs_n, offs_l, mask_n, mask_l, s_C_b, s_C_g,
                                   s_C_n, s_C_l)
        if VARLEN:
            sid, eid, is_start, is_end = _varlen_marks(start_ptr, end_ptr, offs_l, mask_l)
        if SAVE_CKPT:
            ck = ckpt_ptr + (pid_b * n_chunks + c) * DIM * N * 2 + state_off
            tl.store(ck, Hr, mask=mask_dn)
            tl.store(ck + 1, Hi, mask=mask_dn)
        for dd in range(0, BLOCK_D):
            d = (d0 + dd).to(tl.int64)
            ok = d < DIM
            lim_l = tl.where(ok, L, 0)  # (block & scalar masks misbehave in the interpreter)
            m = offs_l < lim_l
            mn = offs_n < tl.where(ok, N, 0)
            dt, _ = _delta_row(delta_ptr, bias_ptr, pid_b * s_dt_b + d * s_dt_d, offs_l, m, s_dt_l, d, ok,
                               HAS_BIAS, SOFTPLUS, FAST)
            u = tl.load(u_ptr + pid_b * s_u_b + d * s_u_d + offs_l * s_u_l, mask=m, other=0.0).to(tl.float32)
            Ar, Ai = _complex_row(A_ptr, 1, d, offs_n, mn, s_A_d, s_A_n)
            a_r, a_i = _complex_decay(Ar, Ai, dt[None, :], False)
            if B_FIXED:
                Br, Bi = _complex_row(B_ptr, s_B_im, d, offs_n, mn, s_B_g, s_B_n)
            du2 = (dt * u)[None, :]
            b_r = Br * du2
            b_i = Bi * du2
            if VARLEN:
                if HAS_H0:
                    b_r, b_i = _enter_complex_state(h0_ptr, sid, d, offs_n, s_h0_b, s_h0_d, s_h0_n, is_start, mn,
                                                    a_r, a_i, b_r, b_i)
                a_r = tl.where(is_start, 0.0, a_r)
                a_i = tl.where(is_start, 0.0, a_i)
            hr = _row_of(Hr, rows, dd)[:, None]
            hi = _row_of(Hi, rows, dd)[:, None]
            acr, aci, bcr, bci = tl.associative_scan((a_r, a_i, b_r, b_i), 1, _ccombine)
            hsr = acr * hr - aci * hi + bcr
            hsi = acr * hi + aci * hr + bci
            if C_FIXED:
                Cr, Ci = _complex_row(C_ptr, s_C_im, d, offs_n, mn, s_C_g, s_C_n)
            _, Dv = _channel_scalars(bias_ptr, D_ptr, d, ok, False, HAS_D)
            z = u
            if HAS_Z:
                z = tl.load(z_ptr + pid_b * s_z_b + d * s_z_d + offs_l * s_z_l, mask=m, other=0.0)
            _store_output(y_ptr + pid_b * s_y_b + d * s_y_d, offs_l, m, 2.0 * tl.sum(hsr * Cr - hsi * Ci, axis=0), u,
                          Dv, z, HAS_D, HAS_Z)
            if VARLEN:
                pf = final_ptr + eid[None, :] * (DIM * N * 2) + (d * N + offs_n[:, None]) * 2
                mf = is_end & mn[:, None]
                tl.store(pf, hsr, mask=mf)
                tl.store(pf + 1, hsi, mask=mf)
            sel = rows[:, None] == dd
            Hr = tl.where(sel, tl.sum(tl.where(last, hsr, 0.0), axis=1)[None, :], Hr)
            Hi = tl.where(sel, tl.sum(tl.where(last, hsi, 0.0), axis=1)[None, :], Hi)
    if not VARLEN:
        tl.store(final_ptr + pid_b * DIM * N * 2 + state_off, Hr, mask=mask_dn)
        tl.store(final_ptr + pid_b * DIM * N * 2 + state_off + 1, Hi, mask=mask_dn)
