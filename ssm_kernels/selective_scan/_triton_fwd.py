"""Triton forward kernel of the selective scan (real A); launched from triton.py.

One program per (batch row, block of BLOCK_D channels). It keeps the state h (BLOCK_D, BLOCK_N) in fp32
registers and walks L in chunks of BLOCK_L positions. Per chunk it forms a_t = exp(Δ_t A) and
b_t = Δ_t u_t B_t as (BLOCK_D, BLOCK_N, BLOCK_L) tiles, scans them along L with the linear-recurrence
combine (a1, b1), (a2, b2) -> (a1 a2, a2 b1 + b2), adds the carried state (h_t = Π a * h_prev + scanned b),
reduces y_t = C_t . h_t over N, adds D u_t, gates with silu(z_t) and stores y. The state entering every
chunk is stored as a checkpoint (B, n_chunks, D, N) fp32 for the backward (SAVE_CKPT; skipped for inference).

Packed sequences (VARLEN, batch 1): seq_start[t] is the index of the sequence starting at t (else -1),
seq_end[t] that of the sequence ending at t (else -1). At a start a_t is replaced by 0 (exact restart) and
the sequence's initial state enters as b_t += exp(Δ_t A) h0; at an end the state is stored as that
sequence's final state.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _log1p_exp(x):
    """softplus(x) = log(1 + exp(x)), accurate for negative x (log1p through the w - 1 correction)."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    one = w == 1.0
    lp = tl.where(one, e, tl.log(w) * (e / tl.where(one, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _load_bc(ptr, pid_b, group, offs_n, offs_l, mask_n, mask_l, s_b, s_g, s_n, s_l, FIXED: tl.constexpr,
             offs_d, mask_d):
    """B or C for this chunk, fp32: (BLOCK_D, BLOCK_N) when FIXED (per channel, constant in time), else the
    group's (BLOCK_N, BLOCK_L)."""
    # one return after a constexpr if/else: Triton 3.6 rejects early returns of differently shaped values
    if FIXED:
        p = ptr + offs_d[:, None] * s_g + offs_n[None, :] * s_n
        out = tl.load(p, mask=mask_d[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
    else:
        p = ptr + pid_b * s_b + group * s_g + offs_n[:, None] * s_n + offs_l[None, :] * s_l
        out = tl.load(p, mask=mask_n[:, None] & mask_l[None, :], other=0.0).to(tl.float32)
    return out


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, start_ptr, end_ptr,
    y_ptr, final_ptr, ckpt_ptr,
    L, DIM, N, n_chunks, cpg_B, cpg_C,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l,
    s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    s_h0_b, s_h0_d, s_h0_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, VARLEN: tl.constexpr, B_FIXED: tl.constexpr, C_FIXED: tl.constexpr,
    SAVE_CKPT: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)  # int64 offsets: B * D * L may pass 2**31
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    ar_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < DIM
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    # every channel of the block reads one group of B / C (the launcher makes BLOCK_D divide D / G)
    d0 = pid_d * BLOCK_D
    group_B = d0 // cpg_B
    group_C = d0 // cpg_C
    state_off = offs_d[:, None] * N + offs_n[None, :]  # checkpoint / final-state layout (.., D, N)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_H0:
        if not VARLEN:
            h = tl.load(h0_ptr + pid_b * s_h0_b + offs_d[:, None] * s_h0_d + offs_n[None, :] * s_h0_n,
                        mask=mask_dn, other=0.0).to(tl.float32)
    for c in range(0, n_chunks):
        offs_l = c * BLOCK_L + ar_l
        mask_l = offs_l < L
        mask_dl = mask_d[:, None] & mask_l[None, :]
        dt = tl.load(delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d + offs_l[None, :] * s_dt_l,
                     mask=mask_dl, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _log1p_exp(dt)
        dt = tl.where(mask_dl, dt, 0.0)  # padded positions: a = 1, b = 0 (the state passes through)
        u = tl.load(u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d + offs_l[None, :] * s_u_l,
                    mask=mask_dl, other=0.0).to(tl.float32)
        Bt = _load_bc(B_ptr, pid_b, group_B, offs_n, offs_l, mask_n, mask_l, s_B_b, s_B_g, s_B_n, s_B_l,
                      B_FIXED, offs_d, mask_d)
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        if B_FIXED:
            b = (dt * u)[:, None, :] * Bt[:, :, None]
        else:
            b = (dt * u)[:, None, :] * Bt[None, :, :]
        if VARLEN:
            sid = tl.load(start_ptr + offs_l, mask=mask_l, other=-1)
            is_start = (sid >= 0)[None, None, :]
            if HAS_H0:
                h0 = tl.load(h0_ptr + sid[None, None, :] * s_h0_b + offs_d[:, None, None] * s_h0_d
                             + offs_n[None, :, None] * s_h0_n,
                             mask=is_start & mask_dn[:, :, None], other=0.0).to(tl.float32)
                b = b + a * h0
            a = tl.where(is_start, 0.0, a)
        if SAVE_CKPT:
            ckpt = ckpt_ptr + ((pid_b * n_chunks + c) * DIM) * N
            tl.store(ckpt + state_off, h, mask=mask_dn)
        a_cum, b_cum = tl.associative_scan((a, b), 2, _combine)
        hs = a_cum * h[:, :, None] + b_cum
        Ct = _load_bc(C_ptr, pid_b, group_C, offs_n, offs_l, mask_n, mask_l, s_C_b, s_C_g, s_C_n, s_C_l,
                      C_FIXED, offs_d, mask_d)
        if C_FIXED:
            y = tl.sum(hs * Ct[:, :, None], axis=1)
        else:
            y = tl.sum(hs * Ct[None, :, :], axis=1)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d + offs_l[None, :] * s_z_l,
                        mask=mask_dl, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(y_ptr + (pid_b * DIM + offs_d[:, None]) * L + offs_l[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=mask_dl)
        if VARLEN:
            eid = tl.load(end_ptr + offs_l, mask=mask_l, other=-1)
            tl.store(final_ptr + eid[None, None, :] * (DIM * N) + state_off[:, :, None], hs,
                     mask=(eid >= 0)[None, None, :] & mask_dn[:, :, None])
        # the state after the chunk's last position (padded positions pass it through unchanged)
        h = tl.sum(tl.where((ar_l == BLOCK_L - 1)[None, None, :], hs, 0.0), axis=2)
    if not VARLEN:
        tl.store(final_ptr + pid_b * DIM * N + state_off, h, mask=mask_dn)


# --- complex A ----------------------------------------------------------------------------------------------
# The state holds one mode of each conjugate pair: h complex, a = exp(Δ A) complex, y = 2 Re(C . h). Complex
# tensors arrive as their real views: every complex operand is (pointer, strides, offset of the imaginary
# part), which also covers mamba_ssm's real B / C of length 2L with interleaved (re, im) pairs.

@triton.jit
def _ccombine(a1r, a1i, b1r, b1i, a2r, a2i, b2r, b2i):
    return (a1r * a2r - a1i * a2i, a1r * a2i + a1i * a2r,
            a2r * b1r - a2i * b1i + b2r, a2r * b1i + a2i * b1r + b2i)


@triton.jit
def _selective_scan_fwd_complex_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, start_ptr, end_ptr,
    y_ptr, final_ptr, ckpt_ptr,
    L, DIM, N, n_chunks, cpg_B, cpg_C,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l,
    s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_B_l, s_B_im, s_C_b, s_C_g, s_C_n, s_C_l, s_C_im,
    s_h0_b, s_h0_d, s_h0_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, VARLEN: tl.constexpr, B_FIXED: tl.constexpr, C_FIXED: tl.constexpr,
    SAVE_CKPT: tl.constexpr,
):
    """As _selective_scan_fwd_kernel with complex A, B, C and state; A and the states (h0, final state,
    checkpoints) are interleaved (re, im) fp32 with the imaginary part at offset 1."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    ar_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < DIM
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    a_off = offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n
    Ar = tl.load(A_ptr + a_off, mask=mask_dn, other=0.0).to(tl.float32)
    Ai = tl.load(A_ptr + a_off + 1, mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    d0 = pid_d * BLOCK_D
    group_B = d0 // cpg_B
    group_C = d0 // cpg_C
    state_off = (offs_d[:, None] * N + offs_n[None, :]) * 2
    hr = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    hi = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if HAS_H0:
        if not VARLEN:
            p0 = h0_ptr + pid_b * s_h0_b + offs_d[:, None] * s_h0_d + offs_n[None, :] * s_h0_n
            hr = tl.load(p0, mask=mask_dn, other=0.0).to(tl.float32)
            hi = tl.load(p0 + 1, mask=mask_dn, other=0.0).to(tl.float32)
    for c in range(0, n_chunks):
        offs_l = c * BLOCK_L + ar_l
        mask_l = offs_l < L
        mask_dl = mask_d[:, None] & mask_l[None, :]
        dt = tl.load(delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d + offs_l[None, :] * s_dt_l,
                     mask=mask_dl, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _log1p_exp(dt)
        dt = tl.where(mask_dl, dt, 0.0)
        u = tl.load(u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d + offs_l[None, :] * s_u_l,
                    mask=mask_dl, other=0.0).to(tl.float32)
        Br = _load_bc(B_ptr, pid_b, group_B, offs_n, offs_l, mask_n, mask_l, s_B_b, s_B_g, s_B_n, s_B_l,
                      B_FIXED, offs_d, mask_d)
        Bi = _load_bc(B_ptr + s_B_im, pid_b, group_B, offs_n, offs_l, mask_n, mask_l, s_B_b, s_B_g, s_B_n,
                      s_B_l, B_FIXED, offs_d, mask_d)
        if B_FIXED:
            Br = Br[:, :, None]
            Bi = Bi[:, :, None]
        else:
            Br = Br[None, :, :]
            Bi = Bi[None, :, :]
        dt3 = dt[:, None, :]
        mag = tl.exp(dt3 * Ar[:, :, None])
        ang = dt3 * Ai[:, :, None]
        a_r = mag * tl.cos(ang)
        a_i = mag * tl.sin(ang)
        du3 = (dt * u)[:, None, :]
        b_r = du3 * Br
        b_i = du3 * Bi
        if VARLEN:
            sid = tl.load(start_ptr + offs_l, mask=mask_l, other=-1)
            is_start = (sid >= 0)[None, None, :]
            if HAS_H0:
                p0 = (h0_ptr + sid[None, None, :] * s_h0_b + offs_d[:, None, None] * s_h0_d
                      + offs_n[None, :, None] * s_h0_n)
                m0 = is_start & mask_dn[:, :, None]
                h0r = tl.load(p0, mask=m0, other=0.0).to(tl.float32)
                h0i = tl.load(p0 + 1, mask=m0, other=0.0).to(tl.float32)
                b_r = b_r + a_r * h0r - a_i * h0i
                b_i = b_i + a_r * h0i + a_i * h0r
            a_r = tl.where(is_start, 0.0, a_r)
            a_i = tl.where(is_start, 0.0, a_i)
        if SAVE_CKPT:
            ckpt = ckpt_ptr + ((pid_b * n_chunks + c) * DIM) * N * 2
            tl.store(ckpt + state_off, hr, mask=mask_dn)
            tl.store(ckpt + state_off + 1, hi, mask=mask_dn)
        acr, aci, bcr, bci = tl.associative_scan((a_r, a_i, b_r, b_i), 2, _ccombine)
        hsr = acr * hr[:, :, None] - aci * hi[:, :, None] + bcr
        hsi = acr * hi[:, :, None] + aci * hr[:, :, None] + bci
        Cr = _load_bc(C_ptr, pid_b, group_C, offs_n, offs_l, mask_n, mask_l, s_C_b, s_C_g, s_C_n, s_C_l,
                      C_FIXED, offs_d, mask_d)
        Ci = _load_bc(C_ptr + s_C_im, pid_b, group_C, offs_n, offs_l, mask_n, mask_l, s_C_b, s_C_g, s_C_n,
                      s_C_l, C_FIXED, offs_d, mask_d)
        if C_FIXED:
            y = 2.0 * tl.sum(hsr * Cr[:, :, None] - hsi * Ci[:, :, None], axis=1)
        else:
            y = 2.0 * tl.sum(hsr * Cr[None, :, :] - hsi * Ci[None, :, :], axis=1)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d + offs_l[None, :] * s_z_l,
                        mask=mask_dl, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(y_ptr + (pid_b * DIM + offs_d[:, None]) * L + offs_l[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=mask_dl)
        if VARLEN:
            eid = tl.load(end_ptr + offs_l, mask=mask_l, other=-1)
            pf = final_ptr + eid[None, None, :] * (DIM * N * 2) + state_off[:, :, None]
            mf = (eid >= 0)[None, None, :] & mask_dn[:, :, None]
            tl.store(pf, hsr, mask=mf)
            tl.store(pf + 1, hsi, mask=mf)
        last = (ar_l == BLOCK_L - 1)[None, None, :]
        hr = tl.sum(tl.where(last, hsr, 0.0), axis=2)
        hi = tl.sum(tl.where(last, hsi, 0.0), axis=2)
    if not VARLEN:
        tl.store(final_ptr + pid_b * DIM * N * 2 + state_off, hr, mask=mask_dn)
        tl.store(final_ptr + pid_b * DIM * N * 2 + state_off + 1, hi, mask=mask_dn)
