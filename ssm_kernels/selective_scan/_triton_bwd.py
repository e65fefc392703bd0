"""Triton backward kernels of the selective scan (real and complex A); launched from triton.py.

One program per (batch row, block of BLOCK_D channels), walking the forward's chunks (BLOCK_L positions, the
checkpoint spacing) in reverse. Per chunk the group's B_t / C_t tiles are loaded once; then per channel of
the block, on the chunk's tiles ((RUN, BLOCK_L / RUN, BLOCK_N) for real A, see _triton_fwd.py; (BLOCK_N,
BLOCK_L) for complex A):
  * recompute the states h_t of the chunk from the channel's checkpoint (the forward's scan);
  * reverse scan of the adjoint state
        G_t = C_t dy_t + a_{t+1} G_{t+1}        (dy = dout * silu(z); G after the last position = dfinal)
    with the same combine (real A: each run flipped in registers and scanned forward, the runs' totals
    scanned in reverse; Triton's reverse scan applies the combine in reverse order but flips every operand
    across the warp with five shuffles per element), a_{t+1} recomputed from the next position's Δ (a
    shifted load; 1 past the end and at a packed sequence's end it is 0 / identity);
  * with hb_t = h_t - b_t = a_t h_{t-1}:
        du_t = D dy_t + Δ_t Σ_n G_t B_t        dΔ_t = u_t Σ_n G_t B_t + Σ_n A G_t hb_t
        dA   = Σ_t Δ_t G_t hb_t                dB_t = Σ_d G_t Δ_t u_t          dC_t = Σ_d dy_t h_t
        dh0  = a_0 G_0 (a_start G_start of every packed sequence)
Carried per channel in registers: G entering the chunk (BLOCK_D, BLOCK_N), and the accumulators dA (and
dB / dC when fixed) (BLOCK_D, BLOCK_N), dD / dbias (BLOCK_D,); rows are read with a masked sum and updated
with a where (see _triton_fwd.py). dB / dC of variable B / C accumulate over the block's channels in
registers (the chunk's tiles) and leave once per (program, chunk): added with fp32 atomics into the group's
(B, groups, N, L) rows (ATOMIC_BC, real A, as mamba_ssm does per channel), or, in torch's deterministic mode and
for complex A, written as the partial (B, n_dblocks, N, L) fp32 that the launcher sums with torch (the same
bits every run, at the cost of 2 x 4 B L N D / BLOCK_D: 268 MB at (4, 4096, 4096) N 16). Sums over the batch
and over time for fixed B / C are the launcher's too.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_math import softplus
from ._triton_fwd import (LOG2E, _at_position, _block_rows, _ccombine, _channel_scalars, _combine, _complex_decay,
                          _complex_row, _complex_tile, _delta_row, _enter_complex_state, _exp2, _load_row, _row_of,
                          _run_element, _run_grid, _run_tile, _run_varlen_marks, _scan_run_totals, _scan_runs,
                          _softplus_row, _sum_positions, _varlen_marks)


@triton.jit
def _first_delta(delta_ptr, bias_ptr, pid_b, offs_d, mask_d, s_dt_b, s_dt_d, HAS_BIAS: tl.constexpr,
                 SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """Δ at position 0 of the channels offs_d (BLOCK_D,), fp32: what a_0 of the initial state's gradient
    needs."""
    dt0 = tl.load(delta_ptr + pid_b * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt0 = dt0 + tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt0 = softplus(dt0, FAST)
    return dt0


@triton.jit
def _chunk_from_the_end(i, n_chunks, ar_l, mask_n, L, BLOCK_L: tl.constexpr):
    """The backward walks the chunks last to first: step i's chunk c, its positions offs_l (BLOCK_L,), their
    mask and the (BLOCK_N, BLOCK_L) mask of valid (mode, position) pairs."""
    c = n_chunks - 1 - i
    offs_l = c * BLOCK_L + ar_l
    mask_l = offs_l < L
    return c, offs_l, mask_l, mask_n[:, None] & mask_l[None, :]


@triton.jit
def _channel_inputs_bwd(delta_ptr, u_ptr, z_ptr, dout_ptr, bias_ptr, D_ptr, A_ptr, ck_ptr, pid_b, d, ok, offs_l,
                        next_chunk, offs_n, L, N, s_dt_b, s_dt_d, s_dt_l, s_u_b, s_u_d, s_u_l, s_z_b, s_z_d, s_z_l,
                        s_do_b, s_do_d, s_do_l, s_A_d, s_A_n,
                        HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """Channel d's inputs for one chunk of the backward, as loaded (zeros where not `ok`): the rows of delta,
    u, dout, z (BLOCK_L,), delta at the next chunk's first position `next_chunk`, delta_bias and D (fp32
    scalars), the row of A and the checkpoint (BLOCK_N,)."""
    lim = tl.where(ok, L, 0)
    m = offs_l < lim
    row_dt = delta_ptr + pid_b * s_dt_b + d * s_dt_d
    dt = tl.load(row_dt + offs_l * s_dt_l, mask=m, other=0.0)
    dtn = tl.load(row_dt + next_chunk * s_dt_l, mask=next_chunk < lim, other=0.0)
    u = tl.load(u_ptr + pid_b * s_u_b + d * s_u_d + offs_l * s_u_l, mask=m, other=0.0)
    dout = tl.load(dout_ptr + pid_b * s_do_b + d * s_do_d + offs_l * s_do_l, mask=m, other=0.0)
    z = u
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_z_b + d * s_z_d + offs_l * s_z_l, mask=m, other=0.0)
    bias, Dv = _channel_scalars(bias_ptr, D_ptr, d, ok, HAS_BIAS, HAS_D)
    mn = offs_n < tl.where(ok, N, 0)
    A = tl.load(A_ptr + d * s_A_d + offs_n * s_A_n, mask=mn, other=0.0)
    h = tl.load(ck_ptr + d * N + offs_n, mask=mn, other=0.0)
    return dt, dtn, u, dout, z, bias, Dv, A, h


@triton.jit
def _next_position(x, after):
    """x (RUN, runs) of a _run_grid at the next position: x[r + 1, j] inside a run, the next run's first
    element at a run's end, `after` (1,) at the chunk's last position. Δ is computed once per position (its
    softplus was a tenth of the backward's instructions when a shifted row was loaded and activated again)."""
    r = tl.arange(0, x.shape[0])[:, None]
    j = tl.arange(0, x.shape[1])
    inside = tl.gather(x, tl.broadcast_to(tl.minimum(r + 1, x.shape[0] - 1), x.shape), 0)
    firsts = tl.sum(tl.where(r == 0, x, 0.0), axis=0)  # (runs,)
    next_first = tl.gather(firsts, tl.minimum(j + 1, x.shape[1] - 1), 0)
    next_first = tl.where(j == x.shape[1] - 1, after, next_first)
    return tl.where(r == x.shape[0] - 1, next_first[None, :], inside)


@triton.jit
def _store_input_grads(du_ptr, ddelta_ptr, row, offs_l, m, L, du, ddt, slope, SOFTPLUS: tl.constexpr):
    """Row `row` (b * D + d) of du and ddelta, ddt taken through the softplus (its slope from _softplus_row);
    returns ddt as stored (0 where not m) for the delta_bias sum."""
    if SOFTPLUS:
        ddt = ddt * slope
    ddt = tl.where(m, ddt, 0.0)
    tl.store(du_ptr + row * L + offs_l, du.to(du_ptr.dtype.element_ty), mask=m)
    tl.store(ddelta_ptr + row * L + offs_l, ddt.to(ddelta_ptr.dtype.element_ty), mask=m)
    return ddt


@triton.jit
def _flip_runs(x):
    """x (runs, BLOCK_N) with its runs in reverse order: one gather (a shuffle per element)."""
    last = x.shape[0] - 1
    return tl.gather(x, tl.broadcast_to((last - tl.arange(0, x.shape[0]))[:, None], x.shape), 0)


@triton.jit
def _scan_runs_reverse(alpha, cy, g_after, FAST: tl.constexpr):
    """Adjoints G_p = cy_p + alpha_p G_(p+1) of one chunk from G after it, g_after (BLOCK_N,), on the
    (RUN, runs, BLOCK_N) tiles of _run_grid: an inclusive scan of every run from its end, then the runs'
    totals (runs, BLOCK_N) scanned from the last run (exclusive) across lanes give G after each run.
    FAST (native GPU runs) scans forward over flipped operands: the runs in registers (tl.flip along the
    in-thread axis: no shuffles), their totals with one gather each way (_flip_runs), where Triton's reverse
    scan flips every operand, constants included, with five butterfly shuffles per element before and after
    (160 of the kernel's 420 shuffles per channel and chunk). The interpreter takes the reverse scans: one
    numpy call where tl.flip costs it a dozen (a third of the CPU suite's selective-scan time)."""
    if FAST:
        al_in, g_in = tl.associative_scan((tl.flip(alpha, 0), tl.flip(cy, 0)), 0, _combine)
        al_after, g_after_run = _scan_run_totals(_flip_runs(_run_element(al_in, alpha.shape[0] - 1)),
                                                 _flip_runs(_run_element(g_in, alpha.shape[0] - 1)), False)
        al_after = _flip_runs(al_after)
        g_after_run = _flip_runs(g_after_run)
    else:
        al_in, g_in = tl.associative_scan((alpha, cy), 0, _combine, reverse=True)
        al_after, g_after_run = _scan_run_totals(_run_element(al_in, 0), _run_element(g_in, 0), True)
    G = al_in * (al_after * g_after[None, :] + g_after_run)[None, :, :] + g_in
    if FAST:
        G = tl.flip(G, 0)
    return G


@triton.jit
def _write_bc_grad(ptr, tile, pid_b, pid_d, group, n_groups, n_dblocks, offs_n, pos, mask, N, L,
                   ATOMIC: tl.constexpr):
    """A chunk's dB or dC of a variable B / C summed over the program's channels, tile (RUN, runs, BLOCK_N):
    ATOMIC adds it into the group's rows of (B, groups, N, L) fp32, else stores it as the program's partial
    (B, n_dblocks, N, L) for torch to sum (deterministic)."""
    if ATOMIC:
        row = pid_b * n_groups + group
    else:
        row = pid_b * n_dblocks + pid_d
    at = ptr + (row * N + offs_n[None, None, :]) * L + pos[:, :, None]
    if ATOMIC:
        tl.atomic_add(at, tile, mask=mask, sem="relaxed")
    else:
        tl.store(at, tile, mask=mask)


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, start_ptr, end_ptr,
    dout_ptr, dfinal_ptr, ckpt_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr, dh0_ptr,
    L, DIM, N, n_chunks, n_dblocks, cpg_B, cpg_C,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l, s_do_b, s_do_d, s_do_l, s_dz_b, s_dz_d,
    s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    s_h0_b, s_h0_d, s_h0_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, RUN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DFINAL: tl.constexpr, VARLEN: tl.constexpr,
    B_FIXED: tl.constexpr, C_FIXED: tl.constexpr, FAST: tl.constexpr, ATOMIC_BC: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d0, rows, offs_n, ar_l, mask_n, mask_d, mask_dn = _block_rows(pid_d, DIM, N, BLOCK_D, BLOCK_N, BLOCK_L)
    state_off = (d0 + rows)[:, None] * N + offs_n[None, :]
    group_B = d0 // cpg_B
    group_C = d0 // cpg_C
    d_end = tl.minimum(d0 + BLOCK_D, DIM)

    Gn = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # adjoint of the state after the chunk, per channel
    if HAS_DFINAL:
        if not VARLEN:
            Gn = tl.load(dfinal_ptr + pid_b * DIM * N + state_off, mask=mask_dn, other=0.0)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dBf_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dCf_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    mask_n3 = mask_n[None, None, :]
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i  # the chunks last to first
        pos = _run_grid(c, BLOCK_L, RUN)
        mask_l = pos < L
        if not B_FIXED:
            Bt = _run_tile(B_ptr, pid_b, group_B, offs_n, pos, mask_n, mask_l, s_B_b, s_B_g, s_B_n, s_B_l)
            dB_t = tl.zeros((RUN, BLOCK_L // RUN, BLOCK_N), dtype=tl.float32)
        if not C_FIXED:
            Ct = _run_tile(C_ptr, pid_b, group_C, offs_n, pos, mask_n, mask_l, s_C_b, s_C_g, s_C_n, s_C_l)
            dC_t = tl.zeros((RUN, BLOCK_L // RUN, BLOCK_N), dtype=tl.float32)
        if VARLEN:
            sid, eid, is_start, is_end = _run_varlen_marks(start_ptr, end_ptr, pos, mask_l)
        ck = ckpt_ptr + (pid_b * n_chunks + c) * DIM * N
        next_chunk = (c + 1) * BLOCK_L
        # the chunk's first channel; every step prefetches the next channel's inputs while it computes
        dn = d0.to(tl.int64)
        dt_nx, dtn_nx, u_nx, do_nx, z_nx, bias_nx, D_nx, A_nx, h_nx = _channel_inputs_bwd(
            delta_ptr, u_ptr, z_ptr, dout_ptr, bias_ptr, D_ptr, A_ptr, ck, pid_b, dn, dn < d_end, pos,
            next_chunk, offs_n, L, N, s_dt_b, s_dt_d, s_dt_l, s_u_b, s_u_d, s_u_l, s_z_b, s_z_d, s_z_l, s_do_b,
            s_do_d, s_do_l, s_A_d, s_A_n, HAS_Z, HAS_BIAS, HAS_D)
        for dd in range(0, BLOCK_D):
            d = (d0 + dd).to(tl.int64)
            ok = d < DIM
            lim_l = tl.where(ok, L, 0)  # (block & scalar masks misbehave in the interpreter)
            m = pos < lim_l
            mn = offs_n < tl.where(ok, N, 0)
            mn3 = mn[None, None, :]
            sel = rows[:, None] == dd
            dt_in = dt_nx
            dtn_in = dtn_nx
            u_in = u_nx
            do_in = do_nx
            z_in = z_nx
            bias = bias_nx
            Dv = D_nx
            A = A_nx[None, None, :]
            h_prev = h_nx
            dt_nx, dtn_nx, u_nx, do_nx, z_nx, bias_nx, D_nx, A_nx, h_nx = _channel_inputs_bwd(
                delta_ptr, u_ptr, z_ptr, dout_ptr, bias_ptr, D_ptr, A_ptr, ck, pid_b, d + 1, d + 1 < d_end, pos,
                next_chunk, offs_n, L, N, s_dt_b, s_dt_d, s_dt_l, s_u_b, s_u_d, s_u_l, s_z_b, s_z_d, s_z_l,
                s_do_b, s_do_d, s_do_l, s_A_d, s_A_n, HAS_Z, HAS_BIAS, HAS_D)
            dt_raw = dt_in.to(tl.float32) + bias
            dt, slope = _softplus_row(dt_raw, m, SOFTPLUS, FAST)
            # Δ of the next position, for a_(p+1) of the adjoint's recurrence (0 past the end: G_L = dfinal)
            dt_after, _ = _softplus_row(dtn_in.to(tl.float32) + bias, next_chunk < lim_l, SOFTPLUS, FAST)
            dt_next = _next_position(dt, dt_after)
            u = u_in.to(tl.float32)
            dout = do_in.to(tl.float32)
            A2 = A * LOG2E
            if B_FIXED:
                Bt = _load_row(B_ptr, d, offs_n, mn, s_B_g, s_B_n)[None, None, :]
            if C_FIXED:
                Ct = _load_row(C_ptr, d, offs_n, mn, s_C_g, s_C_n)[None, None, :]

            # recompute the chunk's states from the checkpoint
            dtu = dt * u
            a = _exp2(A2 * dt[:, :, None], FAST)
            b = Bt * dtu[:, :, None]
            alpha = _exp2(A2 * dt_next[:, :, None], FAST)
            a_scan = a
            b_scan = b
            if VARLEN:
                if HAS_H0:
                    h0 = tl.load(h0_ptr + sid[:, :, None] * s_h0_b + d * s_h0_d + offs_n[None, None, :] * s_h0_n,
                                 mask=is_start & mn3, other=0.0).to(tl.float32)
                    b_scan = b + a * h0
                a_scan = tl.where(is_start, 0.0, a)
                alpha = tl.where(is_end, 0.0, alpha)  # the next position starts a new sequence
            hs = _scan_runs(a_scan, b_scan, h_prev)

            dy = dout
            if HAS_Z:
                z = z_in.to(tl.float32)
                sz = tl.sigmoid(z)
                y = tl.sum(hs * Ct, axis=2) + Dv * u
                dz = dout * y * sz * (1.0 + z * (1.0 - sz))
                tl.store(dz_ptr + pid_b * s_dz_b + d * s_dz_d + pos, dz.to(dz_ptr.dtype.element_ty), mask=m)
                dy = dout * z * sz

            # adjoint of the states: reverse scan of G_p = C_p dy_p + a_(p+1) G_(p+1)
            cy = Ct * dy[:, :, None]
            if VARLEN:
                if HAS_DFINAL:
                    cy += tl.load(dfinal_ptr + eid[:, :, None] * (DIM * N) + d * N + offs_n[None, None, :],
                                  mask=is_end & mn3, other=0.0)
            G = _scan_runs_reverse(alpha, cy, _row_of(Gn, rows, dd), FAST)

            hb = hs - b  # a_p h_(p-1) (a_p h0 at a sequence start)
            GB = tl.sum(G * Bt, axis=2)
            du = Dv * dy + dt * GB
            Ghb = G * hb
            ddt = _store_input_grads(du_ptr, ddelta_ptr, pid_b * DIM + d, pos, m, L, du,
                                     u * GB + tl.sum(Ghb * A, axis=2), slope, SOFTPLUS)
            dA_acc += tl.where(sel, _sum_positions(Ghb * dt[:, :, None])[None, :], 0.0)
            dD_acc += tl.where(rows == dd, tl.sum(tl.sum(dy * u, axis=1), axis=0), 0.0)
            dbias_acc += tl.where(rows == dd, tl.sum(tl.sum(ddt, axis=1), axis=0), 0.0)
            Gdu = G * dtu[:, :, None]
            if B_FIXED:
                dBf_acc += tl.where(sel, _sum_positions(Gdu)[None, :], 0.0)
            else:
                dB_t += Gdu
            hdy = hs * dy[:, :, None]
            if C_FIXED:
                dCf_acc += tl.where(sel, _sum_positions(hdy)[None, :], 0.0)
            else:
                dC_t += hdy
            if VARLEN:
                if HAS_H0:
                    tl.store(dh0_ptr + sid[:, :, None] * (DIM * N) + d * N + offs_n[None, None, :], a * G,
                             mask=is_start & mn3)
            # G at the chunk's first position: the previous chunk's last position adds alpha * G
            Gn = tl.where(sel, _at_position(G, pos, c * BLOCK_L)[None, :], Gn)
        if not B_FIXED:
            _write_bc_grad(dB_ptr, dB_t, pid_b, pid_d, group_B, DIM // cpg_B, n_dblocks, offs_n, pos,
                           mask_l[:, :, None] & mask_n3, N, L, ATOMIC_BC)
        if not C_FIXED:
            _write_bc_grad(dC_ptr, dC_t, pid_b, pid_d, group_C, DIM // cpg_C, n_dblocks, offs_n, pos,
                           mask_l[:, :, None] & mask_n3, N, L, ATOMIC_BC)
    if HAS_H0:
        if not VARLEN:
            offs_d = d0 + rows
            dt0 = _first_delta(delta_ptr, bias_ptr, pid_b, offs_d, mask_d, s_dt_b, s_dt_d, HAS_BIAS, SOFTPLUS,
                               FAST)
            A_all = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn,
                            other=0.0).to(tl.float32)
            a0 = tl.exp(dt0[:, None] * A_all)
            tl.store(dh0_ptr + pid_b * DIM * N + state_off, a0 * Gn, mask=mask_dn)
    acc = pid_b * DIM * N + state_off
    tl.store(dA_ptr + acc, dA_acc, mask=mask_dn)
    if B_FIXED:
        tl.store(dB_ptr + acc, dBf_acc, mask=mask_dn)
    if C_FIXED:
        tl.store(dC_ptr + acc, dCf_acc, mask=mask_dn)
    tl.store(dD_ptr + pid_b * DIM + d0 + rows, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + pid_b * DIM + d0 + rows, dbias_acc, mask=mask_d)


@triton.jit
def _selective_scan_bwd_complex_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, start_ptr, end_ptr,
    dout_ptr, dfinal_ptr, ckpt_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr, dh0_ptr,
    L, DIM, N, n_chunks, n_dblocks, cpg_B, cpg_C,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l, s_do_b, s_do_d, s_do_l, s_dz_b, s_dz_d,
    s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_B_l, s_B_im, s_C_b, s_C_g, s_C_n, s_C_l, s_C_im,
    s_h0_b, s_h0_d, s_h0_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_DFINAL: tl.constexpr, VARLEN: tl.constexpr,
    B_FIXED: tl.constexpr, C_FIXED: tl.constexpr, FAST: tl.constexpr,
):
    """As _selective_scan_bwd_kernel with complex A, B, C and state. Gradients of complex values are
    dL/dRe + i dL/dIm (torch's convention); the adjoint recurrence is G_t = 2 dy_t conj(C_t) +
    conj(a_{t+1}) G_{t+1}, dA = sum Δ conj(hb) G, dh0 = conj(a_0) G_0, dC = 2 dy conj(h), dB = Δ u G.
    Complex outputs (dA, dB, dC, dh0, partials) are interleaved (re, im) fp32."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d0, rows, offs_n, ar_l, mask_n, mask_d, mask_dn = _block_rows(pid_d, DIM, N, BLOCK_D, BLOCK_N, BLOCK_L)
    state_off = ((d0 + rows)[:, None] * N + offs_n[None, :]) * 2
    first = (ar_l == 0)[None, :]
    group_B = d0 // cpg_B
    group_C = d0 // cpg_C

    Gnr = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    Gni = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_DFINAL:
        if not VARLEN:
            Gnr = tl.load(dfinal_ptr + pid_b * DIM * N * 2 + state_off, mask=mask_dn, other=0.0)
            Gni = tl.load(dfinal_ptr + pid_b * DIM * N * 2 + state_off + 1, mask=mask_dn, other=0.0)
    dAr_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dAi_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dBr_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dBi_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dCr_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dCi_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(0, n_chunks):
        c, offs_l, mask_l, mask_nl = _chunk_from_the_end(i, n_chunks, ar_l, mask_n, L, BLOCK_L)
        if not B_FIXED:
            Br, Bi = _complex_tile(B_ptr, s_B_im, pid_b, group_B, offs_n, offs_l, mask_n, mask_l, s_B_b, s_B_g,
                                   s_B_n, s_B_l)
            dBr_t = tl.zeros((BLOCK_N, BLOCK_L), dtype=tl.float32)
            dBi_t = tl.zeros((BLOCK_N, BLOCK_L), dtype=tl.float32)
        if not C_FIXED:
            Cr, Ci = _complex_tile(C_ptr, s_C_im, pid_b, group_C, offs_n, offs_l, mask_n, mask_l, s_C_b, s_C_g,
                                   s_C_n, s_C_l)
            dCr_t = tl.zeros((BLOCK_N, BLOCK_L), dtype=tl.float32)
            dCi_t = tl.zeros((BLOCK_N, BLOCK_L), dtype=tl.float32)
        if VARLEN:
            sid, eid, is_start, is_end = _varlen_marks(start_ptr, end_ptr, offs_l, mask_l)
        ck = ckpt_ptr + (pid_b * n_chunks + c) * DIM * N * 2
        for dd in range(0, BLOCK_D):
            d = (d0 + dd).to(tl.int64)
            ok = d < DIM
            lim_l = tl.where(ok, L, 0)  # (block & scalar masks misbehave in the interpreter)
            m = offs_l < lim_l
            mn = offs_n < tl.where(ok, N, 0)
            sel = rows[:, None] == dd
            row_dt = pid_b * s_dt_b + d * s_dt_d
            dt, slope = _delta_row(delta_ptr, bias_ptr, row_dt, offs_l, m, s_dt_l, d, ok, HAS_BIAS, SOFTPLUS,
                                   FAST)
            dt_next, _ = _delta_row(delta_ptr, bias_ptr, row_dt, offs_l + 1, offs_l + 1 < lim_l, s_dt_l, d,
                                    ok, HAS_BIAS, SOFTPLUS, FAST)
            u = tl.load(u_ptr + pid_b * s_u_b + d * s_u_d + offs_l * s_u_l, mask=m, other=0.0).to(tl.float32)
            dout = tl.load(dout_ptr + pid_b * s_do_b + d * s_do_d + offs_l * s_do_l, mask=m,
                           other=0.0).to(tl.float32)
            Ar, Ai = _complex_row(A_ptr, 1, d, offs_n, mn, s_A_d, s_A_n)
            if B_FIXED:
                Br, Bi = _complex_row(B_ptr, s_B_im, d, offs_n, mn, s_B_g, s_B_n)
            if C_FIXED:
                Cr, Ci = _complex_row(C_ptr, s_C_im, d, offs_n, mn, s_C_g, s_C_n)
            _, Dv = _channel_scalars(bias_ptr, D_ptr, d, ok, False, HAS_D)

            dt2 = dt[None, :]
            a_r, a_i = _complex_decay(Ar, Ai, dt2, False)
            dtu = dt * u
            du2 = dtu[None, :]
            b_r = Br * du2
            b_i = Bi * du2
            al_r, al_i = _complex_decay(Ar, Ai, dt_next[None, :], True)  # conj(a_{t+1})
            as_r = a_r
            as_i = a_i
            bs_r = b_r
            bs_i = b_i
            if VARLEN:
                if HAS_H0:
                    bs_r, bs_i = _enter_complex_state(h0_ptr, sid, d, offs_n, s_h0_b, s_h0_d, s_h0_n, is_start, mn,
                                                      a_r, a_i, b_r, b_i)
                as_r = tl.where(is_start, 0.0, a_r)
                as_i = tl.where(is_start, 0.0, a_i)
                al_r = tl.where(is_end, 0.0, al_r)
                al_i = tl.where(is_end, 0.0, al_i)
            hpr = tl.load(ck + (d * N + offs_n) * 2, mask=mn, other=0.0)[:, None]
            hpi = tl.load(ck + (d * N + offs_n) * 2 + 1, mask=mn, other=0.0)[:, None]
            acr, aci, bcr, bci = tl.associative_scan((as_r, as_i, bs_r, bs_i), 1, _ccombine)
            hsr = acr * hpr - aci * hpi + bcr
            hsi = acr * hpi + aci * hpr + bci

            dy = dout
            if HAS_Z:
                z = tl.load(z_ptr + pid_b * s_z_b + d * s_z_d + offs_l * s_z_l, mask=m, other=0.0).to(tl.float32)
                sz = tl.sigmoid(z)
                y = 2.0 * tl.sum(hsr * Cr - hsi * Ci, axis=0) + Dv * u
                dz = dout * y * sz * (1.0 + z * (1.0 - sz))
                tl.store(dz_ptr + pid_b * s_dz_b + d * s_dz_d + offs_l, dz.to(dz_ptr.dtype.element_ty),
                         mask=m)
                dy = dout * z * sz

            dy2 = 2.0 * dy[None, :]
            cy_r = Cr * dy2
            cy_i = -Ci * dy2
            if VARLEN:
                if HAS_DFINAL:
                    pf = dfinal_ptr + eid[None, :] * (DIM * N * 2) + (d * N + offs_n[:, None]) * 2
                    mf = is_end & mn[:, None]
                    cy_r += tl.load(pf, mask=mf, other=0.0)
                    cy_i += tl.load(pf + 1, mask=mf, other=0.0)
            pr, pi, gr, gi = tl.associative_scan((al_r, al_i, cy_r, cy_i), 1, _ccombine, reverse=True)
            gnr = _row_of(Gnr, rows, dd)[:, None]
            gni = _row_of(Gni, rows, dd)[:, None]
            Gr = pr * gnr - pi * gni + gr
            Gi = pr * gni + pi * gnr + gi

            hbr = hsr - b_r
            hbi = hsi - b_i
            GB = tl.sum(Br * Gr + Bi * Gi, axis=0)
            du = Dv * dy + dt * GB
            ddt = _store_input_grads(du_ptr, ddelta_ptr, pid_b * DIM + d, offs_l, m, L, du,
                                     u * GB + tl.sum((Ar * hbr - Ai * hbi) * Gr + (Ar * hbi + Ai * hbr) * Gi, axis=0),
                                     slope, SOFTPLUS)
            dAr_acc += tl.where(sel, tl.sum((hbr * Gr + hbi * Gi) * dt2, axis=1)[None, :], 0.0)
            dAi_acc += tl.where(sel, tl.sum((hbr * Gi - hbi * Gr) * dt2, axis=1)[None, :], 0.0)
            dD_acc += tl.where(rows == dd, tl.sum(dy * u, axis=0), 0.0)
            dbias_acc += tl.where(rows == dd, tl.sum(ddt, axis=0), 0.0)
            if B_FIXED:
                dBr_acc += tl.where(sel, tl.sum(Gr * du2, axis=1)[None, :], 0.0)
                dBi_acc += tl.where(sel, tl.sum(Gi * du2, axis=1)[None, :], 0.0)
            else:
                dBr_t += Gr * du2
                dBi_t += Gi * du2
            if C_FIXED:
                dCr_acc += tl.where(sel, tl.sum(hsr * dy2, axis=1)[None, :], 0.0)
                dCi_acc -= tl.where(sel, tl.sum(hsi * dy2, axis=1)[None, :], 0.0)
            else:
                dCr_t += hsr * dy2
                dCi_t -= hsi * dy2
            if VARLEN:
                if HAS_H0:
                    ph = dh0_ptr + sid[None, :] * (DIM * N * 2) + (d * N + offs_n[:, None]) * 2
                    mh = is_start & mn[:, None]
                    tl.store(ph, a_r * Gr + a_i * Gi, mask=mh)
                    tl.store(ph + 1, a_r * Gi - a_i * Gr, mask=mh)
            Gnr = tl.where(sel, tl.sum(tl.where(first, Gr, 0.0), axis=1)[None, :], Gnr)
            Gni = tl.where(sel, tl.sum(tl.where(first, Gi, 0.0), axis=1)[None, :], Gni)
        part = (((pid_b * n_dblocks + pid_d) * N + offs_n[:, None]) * L + offs_l[None, :]) * 2
        if not B_FIXED:
            tl.store(dB_ptr + part, dBr_t, mask=mask_nl)
            tl.store(dB_ptr + part + 1, dBi_t, mask=mask_nl)
        if not C_FIXED:
            tl.store(dC_ptr + part, dCr_t, mask=mask_nl)
            tl.store(dC_ptr + part + 1, dCi_t, mask=mask_nl)
    if HAS_H0:
        if not VARLEN:
            offs_d = d0 + rows
            dt0 = _first_delta(delta_ptr, bias_ptr, pid_b, offs_d, mask_d, s_dt_b, s_dt_d, HAS_BIAS, SOFTPLUS,
                               FAST)
            a_off = offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n
            Ar_all = tl.load(A_ptr + a_off, mask=mask_dn, other=0.0).to(tl.float32)
            Ai_all = tl.load(A_ptr + a_off + 1, mask=mask_dn, other=0.0).to(tl.float32)
            mag0 = tl.exp(dt0[:, None] * Ar_all)
            a0r = mag0 * tl.cos(dt0[:, None] * Ai_all)
            a0i = mag0 * tl.sin(dt0[:, None] * Ai_all)
            ph = dh0_ptr + pid_b * DIM * N * 2 + state_off
            tl.store(ph, a0r * Gnr + a0i * Gni, mask=mask_dn)
            tl.store(ph + 1, a0r * Gni - a0i * Gnr, mask=mask_dn)
    acc = pid_b * DIM * N * 2 + state_off
    tl.store(dA_ptr + acc, dAr_acc, mask=mask_dn)
    tl.store(dA_ptr + acc + 1, dAi_acc, mask=mask_dn)
    if B_FIXED:
        tl.store(dB_ptr + acc, dBr_acc, mask=mask_dn)
        tl.store(dB_ptr + acc + 1, dBi_acc, mask=mask_dn)
    if C_FIXED:
        tl.store(dC_ptr + acc, dCr_acc, mask=mask_dn)
        tl.store(dC_ptr + acc + 1, dCi_acc, mask=mask_dn)
    tl.store(dD_ptr + pid_b * DIM + d0 + rows, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + pid_b * DIM + d0 + rows, dbias_acc, mask=mask_d)
