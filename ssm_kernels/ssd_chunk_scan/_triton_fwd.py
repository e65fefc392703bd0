"""Triton kernels of the chunked SSD forward (see triton.py for the algorithm, grids and buffers).

Notation per batch row b, head h (group g = h // (H / G)), chunk c of T positions, i / j positions in it:
    dt'_j (after bias / softplus / clamp), cs_i = sum_{k <= i} dt'_k A_h (fp64, within the chunk),
    seg: segment ids (equal exactly when no sequence boundary lies between two positions).
Segment tests use the id of a clamped position, so positions >= L (zero dt', zero x) continue the last
sequence, as the torch backend's padding does.
The chunk size T, headdim P and d_state N are constexprs in every SSD kernel (here and in _triton_bwd.py): the
masks and index arithmetic on them fold (offline, Triton 3.6 sm_90: the dB / dC kernel's loop 362 -> 221
instructions, the output kernel's 314 -> 288; natively, H100, the output kernel 356 -> 337 us at B4 L4096 H64
P64 N128), at one compile per value, which a model fixes.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_math import LOG2E, exp2, softplus


@triton.jit
def _dot(a, b, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """a @ b with fp32 accumulation, operands rounded to DOT_DTYPE. EMULATE (the CPU interpreter, whose bf16
    tl.dot is broken in Triton 3.9): the same rounding, then an exact fp32 product."""
    if EMULATE:
        out = tl.dot(a.to(DOT_DTYPE).to(tl.float32), b.to(DOT_DTYPE).to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=PRECISION)
    return out


@triton.jit
def _log_decays(cs_ptr, t, T, ROWS: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """cs log2(e) at in-chunk positions t (cs_ptr: the chunk's first), the base-2 exponents of the intra-chunk
    decays exp(cs_i - cs_j): -inf past the chunk for rows i, +inf for columns j, so that those decays are 0
    without a mask. fp64 beside fp32 dots; fp32 beside bf16 / fp16 operands (an error of 2^-24 of the chunk's
    total log-decay in each exponent, below their rounding)."""
    cs = tl.load(cs_ptr + t, mask=t < T, other=-float("inf") if ROWS else float("inf")) * LOG2E
    if DOT_DTYPE != tl.float32:
        cs = cs.to(tl.float32)
    return cs


@triton.jit
def _decays(ex_i, ex_j, keep, FAST: tl.constexpr):
    """M[i, j] = exp(cs_i - cs_j) = 2^(ex_i - ex_j) where keep, else 0 (fp32; a power that overflows where not
    kept is dropped). FAST: one ex2.approx.ftz per element (relative error ~2^-22; tl.exp adds a scaling and a
    denormal-range fix-up around it, five instructions where the element's other work is about as many)."""
    return tl.where(keep, exp2((ex_i[:, None] - ex_j[None, :]).to(tl.float32), FAST), 0.0)


@triton.jit
def _chunk_rows(program, T, L, BLOCK: tl.constexpr):
    """Program `program` of nc * cdiv(T, BLOCK) as (chunk, block of its rows): (c, r0, r, pos, valid), chunk c,
    the block's first row r0, its rows r (BLOCK,), their positions in the sequence and whether they lie inside
    the chunk and the sequence."""
    n_blocks = tl.cdiv(T, BLOCK)
    c = program // n_blocks
    r0 = (program % n_blocks) * BLOCK
    r = r0 + tl.arange(0, BLOCK)
    pos = c * T + r
    return c, r0, r, pos, (r < T) & (pos < L)


@triton.jit
def _batch_head(bh, H, HPG):
    """Program `bh` of B * H as (batch row, head): (b, h, g), g the head's group of B and C."""
    h = bh % H
    return bh // H, h, h // HPG


@triton.jit
def _state_tile(tile, P, N, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program `tile` of cdiv(P, BLOCK_P) * cdiv(N, BLOCK_N) as a tile of the (P, N) state:
    (p, n, p_mask, n_mask)."""
    n_blocks = tl.cdiv(N, BLOCK_N)
    p = (tile // n_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = (tile % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    return p, n, p < P, n < N


@triton.jit
def _chunk_cb_kernel(B_ptr, C_ptr, cb_ptr, L, G, N: tl.constexpr, T: tl.constexpr, NC,
                     sbb, sbl, sbg, sbn, scb, scl, scg, scn,
                     DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (nc * cdiv(T, BLOCK_T), B * G): cb[b, c, g, i, j] = C_i . B_j (fp32) for one row block i of chunk c
    and every column block j up to the diagonal, into the (B, nc, G, T, T) buffer that the chunk scan and the
    backward read for every head of the group (blocks above the diagonal are never written or read).
    Positions past the sequence load zeros, so their rows and columns of cb are 0."""
    c, i0, i, pos_i, valid_i = _chunk_rows(tl.program_id(0), T, L, BLOCK_T)
    bg = tl.program_id(1)
    b = bg // G
    g = bg % G
    n = tl.arange(0, BLOCK_N)
    n_mask = n < N
    Ci = tl.load(C_ptr + b * scb + pos_i[:, None] * scl + g * scg + n[None, :] * scn,
                 mask=valid_i[:, None] & n_mask[None, :], other=0.0)
    base = cb_ptr + ((b * NC + c) * G + g).to(tl.int64) * T * T
    for j0 in range(0, i0 + 1, BLOCK_T):
        j = j0 + tl.arange(0, BLOCK_T)
        pos_j = c * T + j
        valid_j = (j < T) & (pos_j < L)
        BjT = tl.load(B_ptr + b * sbb + pos_j[None, :] * sbl + g * sbg + n[:, None] * sbn,
                      mask=n_mask[:, None] & valid_j[None, :], other=0.0)
        cb = _dot(Ci, BjT, DOT_DTYPE, PRECISION, EMULATE)
        tl.store(base + i[:, None] * T + j[None, :], cb, mask=(i < T)[:, None] & (j < T)[None, :])


@triton.jit
def _cb_tile(cb_ptr, b, c, g, G, T, NC, i, j):
    """The (len(i), len(j)) tile of cb[b, c, g] (fp32; 0 outside the chunk)."""
    base = cb_ptr + ((b * NC + c) * G + g).to(tl.int64) * T * T
    return tl.load(base + i[:, None] * T + j[None, :], mask=(i < T)[:, None] & (j < T)[None, :], other=0.0)


@triton.jit
def _dt_cumsum_kernel(dt_ptr, A_ptr, bias_ptr, seg_ptr, dtp_ptr, cs_ptr, g_ptr,
                      L, H, T: tl.constexpr, NC, LP, dt_lo, dt_hi, sdb, sdl, sdh, ssb, ssl,
                      HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEG: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    """Grid (nc, B, cdiv(H, BLOCK_H)): dt' and cs of one chunk for BLOCK_H heads, written to the (B, H, nc*T)
    buffers dtp (fp32) and cs (fp64); g[b, h, c] = exp(cs_{T-1}) if the chunk's end continues the sequence
    of the state entering it, else 0."""
    c = tl.program_id(0)
    b = tl.program_id(1)
    hs = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = hs < H
    t = tl.arange(0, BLOCK_T)
    pos = c * T + t
    valid = (t < T) & (pos < L)
    dt = tl.load(dt_ptr + b * sdb + pos[:, None] * sdl + hs[None, :] * sdh, mask=valid[:, None] & h_mask[None, :],
                 other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + hs, mask=h_mask, other=0.0).to(tl.float32)[None, :]
    if SOFTPLUS:
        dt = softplus(dt, False)
    dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    dt = tl.where(valid[:, None], dt, 0.0)
    A = tl.load(A_ptr + hs, mask=h_mask, other=0.0).to(tl.float32)
    cs = tl.cumsum((dt * A[None, :]).to(tl.float64), axis=0)
    offs = (b * H + hs[None, :]) * LP + pos[:, None]
    st_mask = (t < T)[:, None] & h_mask[None, :]
    tl.store(dtp_ptr + offs, dt, mask=st_mask)
    tl.store(cs_ptr + offs, cs, mask=st_mask)
    cs_end = tl.sum(tl.where((t == T - 1)[:, None], cs, 0.0), axis=0)
    g = tl.exp(cs_end.to(tl.float32))
    if HAS_SEG:
        seg_end = tl.load(seg_ptr + b * ssb + tl.minimum(c * T + T - 1, L - 1) * ssl)
        entering = tl.load(seg_ptr + b * ssb + tl.maximum(c * T - 1, 0) * ssl)
        g = tl.where(seg_end == entering, g, 0.0)
    tl.store(g_ptr + (b * H + hs) * NC + c, g, mask=h_mask)


@triton.jit
def _chunk_state(x_ptr, B_ptr, dtp_ptr, cs_ptr, seg_ptr, b, h, g, c, row, p, n, p_mask, n_mask, L, T,
                 sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, ssb, ssl,
                 HAS_SEG: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The (p, n) tile of the state chunk c adds from a zero start (fp32; row = bh * LP + c * T):
    S_c = sum_j exp(cs_{T-1} - cs_j) [seg_j == seg_end] dt'_j x_j B_j^T."""
    cs_end = tl.load(cs_ptr + row + T - 1)
    if HAS_SEG:
        seg_end = tl.load(seg_ptr + b * ssb + tl.minimum(c * T + T - 1, L - 1) * ssl)
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, T, BLOCK_K):
        t = k0 + tl.arange(0, BLOCK_K)
        pos = c * T + t
        valid = (t < T) & (pos < L)
        cs = tl.load(cs_ptr + row + t, mask=t < T, other=0.0)
        dtp = tl.load(dtp_ptr + row + t, mask=t < T, other=0.0)
        keep = valid
        if HAS_SEG:
            seg = tl.load(seg_ptr + b * ssb + tl.minimum(pos, L - 1) * ssl)
            keep = keep & (seg == seg_end)
        w = tl.where(keep, tl.exp(tl.where(keep, cs_end - cs, 0.0).to(tl.float32)) * dtp, 0.0)
        xt = tl.load(x_ptr + b * sxb + pos[None, :] * sxl + h * sxh + p[:, None] * sxp,
                     mask=p_mask[:, None] & valid[None, :], other=0.0).to(tl.float32)
        Bj = tl.load(B_ptr + b * sbb + pos[:, None] * sbl + g * sbg + n[None, :] * sbn,
                     mask=valid[:, None] & n_mask[None, :], other=0.0)
        acc += _dot(xt * w[None, :], Bj, DOT_DTYPE, PRECISION, EMULATE)
    return acc


@triton.jit
def _chunk_state_kernel(x_ptr, B_ptr, dtp_ptr, cs_ptr, seg_ptr, st_ptr,
                        L, H, HPG, P: tl.constexpr, N: tl.constexpr, T: tl.constexpr, LP,
                        sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, ssb, ssl,
                        stb, stc, sth, stp, stn,
                        HAS_SEG: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                        EMULATE: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Grid (nc, B * H, cdiv(P, BLOCK_P) * cdiv(N, BLOCK_N)): S_c (_chunk_state) written to slot c + 1 of the
    (B, nc + 1, H, P, N) fp32 states buffer (the state passing kernel completes it in place)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b, h, g = _batch_head(bh, H, HPG)
    p, n, p_mask, n_mask = _state_tile(tl.program_id(2), P, N, BLOCK_P, BLOCK_N)
    acc = _chunk_state(x_ptr, B_ptr, dtp_ptr, cs_ptr, seg_ptr, b, h, g, c, bh * LP + c * T, p, n, p_mask, n_mask,
                       L, T, sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, ssb, ssl,
                       HAS_SEG, DOT_DTYPE, PRECISION, EMULATE, BLOCK_P, BLOCK_N, BLOCK_K)
    tl.store(st_ptr + b * stb + (c + 1) * stc + h * sth + p[:, None] * stp + n[None, :] * stn, acc,
             mask=p_mask[:, None] & n_mask[None, :])


@triton.jit
def _chunk_states_passed_kernel(x_ptr, B_ptr, dtp_ptr, cs_ptr, seg_ptr, g_ptr, init_ptr, st_ptr, fin_ptr,
                                L, H, HPG, P: tl.constexpr, N: tl.constexpr, T: tl.constexpr, LP, NC,
                                sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, ssb, ssl, sib, sih, sip, sin,
                                stb, stc, sth, stp, stn, sfb, sfh, sfp, sfn,
                                HAS_SEG: tl.constexpr, HAS_INIT: tl.constexpr, DOT_DTYPE: tl.constexpr,
                                PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                                BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Grid (cdiv(P, BLOCK_P) * cdiv(N, BLOCK_N), B * H): the chunk state and state passing kernels in one pass
    over the chunks, the state in registers (fp32): entering[:, 0] = the initial state (or 0), then in chunk order
    state_{c + 1} = g_c state_c + S_c (the same operations, so the same bits), stored as entering[:, c + 1] for
    c + 1 < NC (in st_ptr's dtype) and as the final state (fin_ptr, fp32) for c + 1 = NC; the chunk states S_c
    are never written to memory and read back. (B, nc + 1, H, P, N) fp32 states: entering = its first nc slots,
    final its last."""
    bh = tl.program_id(1)
    b, h, g = _batch_head(bh, H, HPG)
    p, n, p_mask, n_mask = _state_tile(tl.program_id(0), P, N, BLOCK_P, BLOCK_N)
    pn_mask = p_mask[:, None] & n_mask[None, :]
    out = st_ptr + b * stb + h * sth + p[:, None] * stp + n[None, :] * stn
    if HAS_INIT:
        state = tl.load(init_ptr + b * sib + h * sih + p[:, None] * sip + n[None, :] * sin, mask=pn_mask,
                        other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    tl.store(out, state.to(st_ptr.dtype.element_ty), mask=pn_mask)
    for c in range(0, NC):
        S = _chunk_state(x_ptr, B_ptr, dtp_ptr, cs_ptr, seg_ptr, b, h, g, c, bh * LP + c * T, p, n, p_mask, n_mask,
                         L, T, sxb, sxl, sxh, sxp, sbb, sbl, sbg, sbn, ssb, ssl,
                         HAS_SEG, DOT_DTYPE, PRECISION, EMULATE, BLOCK_P, BLOCK_N, BLOCK_K)
        state = tl.load(g_ptr + bh * NC + c) * state + S
        if c + 1 < NC:
            tl.store(out + (c + 1) * stc, state.to(st_ptr.dtype.element_ty), mask=pn_mask)
    tl.store(fin_ptr + b * sfb + h * sfh + p[:, None] * sfp + n[None, :] * sfn, state, mask=pn_mask)


@triton.jit
def _state_passing_kernel(st_ptr, init_ptr, g_ptr, H, PN, NC, sib, sih, sip, sin, N: tl.constexpr,
                          stb, stc, sth, stp, stn,
                          HAS_INIT: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (B * H, cdiv(P * N, BLOCK)): states[:, 0] = initial state (or 0), then in chunk order
    states[:, c + 1] = g_c states[:, c] + S_c, in place over the chunk states, fp32 in registers."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = e < PN
    p = e // N
    n = e % N
    base = st_ptr + b * stb + h * sth + p * stp + n * stn
    if HAS_INIT:
        state = tl.load(init_ptr + b * sib + h * sih + p * sip + n * sin, mask=mask, other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BLOCK], dtype=tl.float32)
    tl.store(base, state, mask=mask)
    for c in range(0, NC):
        gc = tl.load(g_ptr + bh * NC + c)
        state = gc * state + tl.load(base + (c + 1) * stc, mask=mask, other=0.0)
        tl.store(base + (c + 1) * stc, state, mask=mask)


@triton.jit
def _x_rows(x_ptr, pos, valid, p, p_mask, sxl, sxp):
    """The (len(pos), len(p)) tile of one head's x (x_ptr: its batch row and head) at sequence positions pos."""
    return tl.load(x_ptr + pos[:, None] * sxl + p[None, :] * sxp, mask=valid[:, None] & p_mask[None, :], other=0.0)


@triton.jit
def _entering_term(Ci, st_ptr, cs_ptr, i, f, p, n, p_mask, n_mask, stp, stn, T, entering_i,
                   HAS_SEG: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                   EMULATE: tl.constexpr, FAST: tl.constexpr, FACTORED: tl.constexpr):
    """One head's C_i states[c]^T decayed to row i (st_ptr: the head's entering state; cs_ptr: its chunk's first
    cs): by exp(cs_i) where entering_i (with segments: the row continues the entering sequence), or, FACTORED, by
    exp(cs_f) only (the rows' exp(cs_i - cs_f) comes after the steps left of row f). Returns it with the log2
    decays of the rows and of row f."""
    hp = tl.load(st_ptr + p[None, :] * stp + n[:, None] * stn, mask=n_mask[:, None] & p_mask[None, :], other=0.0)
    acc = _dot(Ci, hp, DOT_DTYPE, PRECISION, EMULATE)
    ex_i = _log_decays(cs_ptr, i, T, True, DOT_DTYPE)
    ex_f = _log_decays(cs_ptr, f, T, True, DOT_DTYPE)
    if FACTORED:
        acc = acc * exp2(ex_f.to(tl.float32), FAST)
    else:
        q = tl.exp(tl.load(cs_ptr + i, mask=i < T, other=0.0).to(tl.float32))
        if HAS_SEG:
            q = tl.where(entering_i, q, 0.0)
        acc = acc * q[:, None]
    return acc, ex_i, ex_f


@triton.jit
def _factored_step(cb, x_ptr, dtp_ptr, cs_ptr, ex_f, j, pos_j, valid_j, p, p_mask, sxl, sxp, T,
                   DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr, FAST: tl.constexpr):
    """One head's sum over columns j left of the row block of cb[i, j] exp(cs_f - cs_j) dt'_j x_j (dtp_ptr,
    cs_ptr: the head's chunk's first; ex_f: cs_f log2(e))."""
    col = exp2((ex_f - _log_decays(cs_ptr, j, T, False, DOT_DTYPE)).to(tl.float32), FAST) * tl.load(dtp_ptr + j)
    return _dot(cb * col[None, :], _x_rows(x_ptr, pos_j, valid_j, p, p_mask, sxl, sxp), DOT_DTYPE, PRECISION,
                EMULATE)


@triton.jit
def _step(cb, x_ptr, dtp_ptr, cs_ptr, ex_i, keep, j, pos_j, valid_j, p, p_mask, sxl, sxp, T,
          DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr, FAST: tl.constexpr):
    """One head's sum over columns j of cb[i, j] exp(cs_i - cs_j) dt'_j x_j where keep (dtp_ptr, cs_ptr: the
    head's chunk's first)."""
    M = _decays(ex_i, _log_decays(cs_ptr, j, T, False, DOT_DTYPE), keep, FAST)
    dt_j = tl.load(dtp_ptr + j, mask=j < T, other=0.0)
    return _dot(cb * M * dt_j[None, :], _x_rows(x_ptr, pos_j, valid_j, p, p_mask, sxl, sxp), DOT_DTYPE, PRECISION,
                EMULATE)


@triton.jit
def _finish(acc, x_ptr, z_ptr, D_ptr, out_ptr, pre_ptr, pos_i, valid_i, p, p_mask, sxl, sxp, szl, szp, sdp, sol,
            sop, HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, STORE_PRE: tl.constexpr):
    """One head's rows: out = (y + D x) * silu(z), pre = y + D x (pointers at the head's batch row and head)."""
    mask = valid_i[:, None] & p_mask[None, :]
    if HAS_D:
        xi = _x_rows(x_ptr, pos_i, valid_i, p, p_mask, sxl, sxp).to(tl.float32)
        if D_PER_P:
            acc += xi * tl.load(D_ptr + p * sdp, mask=p_mask, other=0.0).to(tl.float32)[None, :]
        else:
            acc += xi * tl.load(D_ptr).to(tl.float32)
    o_offs = pos_i[:, None] * sol + p[None, :] * sop
    if HAS_Z:
        if STORE_PRE:
            tl.store(pre_ptr + o_offs, acc.to(pre_ptr.dtype.element_ty), mask=mask)
        zi = tl.load(z_ptr + pos_i[:, None] * szl + p[None, :] * szp, mask=mask, other=0.0).to(tl.float32)
        acc = acc * zi / (1.0 + tl.exp(-zi))
    tl.store(out_ptr + o_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _chunk_scan_kernel(x_ptr, z_ptr, cb_ptr, C_ptr, D_ptr, dtp_ptr, cs_ptr, seg_ptr, st_ptr, out_ptr, pre_ptr,
                       L, H, G, HPG, P: tl.constexpr, N: tl.constexpr, T: tl.constexpr, NC, LP,
                       sxb, sxl, sxh, sxp, szb, szl, szh, szp,
                       scb, scl, scg, scn, sdh, sdp, ssb, ssl,
                       stb, stc, sth, stp, stn, sob, sol, soh, sop,
                       HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, STORE_PRE: tl.constexpr,
                       HAS_SEG: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                       EMULATE: tl.constexpr, FAST: tl.constexpr, FACTORED: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_KL: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (nc * cdiv(T, BLOCK_M), B * H, cdiv(P, BLOCK_P)): output rows i of one chunk
    (and BLOCK_K columns per step, BLOCK_K dividing BLOCK_M),
        y_i = sum_{j <= i, seg_j == seg_i} cb[i, j] exp(cs_i - cs_j) dt'_j x_j   (cb[i, j] = C_i . B_j)
              + exp(cs_i) [seg_i == entering] C_i states[c]^T,
        out_i = (y_i + D x_i) * silu(z_i); pre_i = y_i + D x_i when STORE_PRE (saved for the z gradient).
    FACTORED (no segments, dt' >= 0: cs monotone in the chunk): the columns left of the row block (BLOCK_KL per
    step, dividing BLOCK_M) and the state term take their decays through the block's first row f,
    exp(cs_i - cs_j) = exp(cs_i - cs_f) exp(cs_f - cs_j) (each factor between 1 and the product, so neither
    overflows or underflows where the product does not): one exp per column and one per row instead of one per
    element, and no causal mask."""
    c, m0, i, pos_i, valid_i = _chunk_rows(tl.program_id(0), T, L, BLOCK_M)
    bh = tl.program_id(1)
    b, h, g = _batch_head(bh, H, HPG)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < P
    n = tl.arange(0, BLOCK_N)
    n_mask = n < N
    cs_c = cs_ptr + bh * LP + c * T  # the head's chunk's first cs (and dt' at the same offsets)
    dt_c = dtp_ptr + bh * LP + c * T
    x_h = x_ptr + b * sxb + h * sxh
    st_h = st_ptr + b * stb + c * stc + h * sth
    Ci = tl.load(C_ptr + b * scb + pos_i[:, None] * scl + g * scg + n[None, :] * scn,
                 mask=valid_i[:, None] & n_mask[None, :], other=0.0)
    tl.static_assert(not (FACTORED and HAS_SEG), "factored decays need cs monotone across the rows")
    entering_i = valid_i
    if HAS_SEG:
        seg_i = tl.load(seg_ptr + b * ssb + tl.minimum(pos_i, L - 1) * ssl)
        entering_i = seg_i == tl.load(seg_ptr + b * ssb + tl.maximum(c * T - 1, 0) * ssl)
    acc, ex_i, ex_f = _entering_term(Ci, st_h, cs_c, i, m0, p, n, p_mask, n_mask, stp, stn, T, entering_i,
                                     HAS_SEG, DOT_DTYPE, PRECISION, EMULATE, FAST, FACTORED)
    k_start = 0
    if FACTORED:
        for k0 in range(0, m0, BLOCK_KL):
            j = k0 + tl.arange(0, BLOCK_KL)
            pos_j = c * T + j
            cb = _cb_tile(cb_ptr, b, c, g, G, T, NC, i, j)
            acc += _factored_step(cb, x_h, dt_c, cs_c, ex_f, j, pos_j, pos_j < L, p, p_mask, sxl, sxp, T,
                                  DOT_DTYPE, PRECISION, EMULATE, FAST)
        acc = acc * exp2((ex_i - ex_f).to(tl.float32), FAST)[:, None]
        k_start = m0

    # within the chunk, up to the diagonal (past the sequence: cb, dt' and x are 0, so no mask is needed there)
    for k0 in range(k_start, m0 + BLOCK_M, BLOCK_K):
        j = k0 + tl.arange(0, BLOCK_K)
        pos_j = c * T + j
        valid_j = (j < T) & (pos_j < L)
        keep = j[None, :] <= i[:, None]
        if HAS_SEG:
            seg_j = tl.load(seg_ptr + b * ssb + tl.minimum(pos_j, L - 1) * ssl)
            keep = keep & (seg_j[None, :] == seg_i[:, None])
        cb = _cb_tile(cb_ptr, b, c, g, G, T, NC, i, j)
        acc += _step(cb, x_h, dt_c, cs_c, ex_i, keep, j, pos_j, valid_j, p, p_mask, sxl, sxp, T,
                     DOT_DTYPE, PRECISION, EMULATE, FAST)

    D_h = D_ptr + h * sdh
    z_h = z_ptr + b * szb + h * szh
    out_h = b * sob + h * soh
    _finish(acc, x_h, z_h, D_h, out_ptr + out_h, pre_ptr + out_h, pos_i, valid_i, p, p_mask, sxl, sxp, szl, szp,
            sdp, sol, sop, HAS_D, D_PER_P, HAS_Z, STORE_PRE)


@triton.jit
def _varlen_state_kernel(x_ptr, B_ptr, dtp_ptr, cs_ptr, seg_ptr, st_ptr, cu_ptr, vs_ptr,
                         L, H, HPG, P: tl.constexpr, N: tl.constexpr, T: tl.constexpr, LP,
                         sxl, sxh, sxp, sbl, sbg, sbn, ssl,
                         stc, sth, stp, stn, svs, svh, svp, svn,
                         HAS_SEG: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                        EMULATE: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Grid (S, H, cdiv(P, BLOCK_P) * cdiv(N, BLOCK_N)), batch size 1: the state at the last step e of packed
    sequence s (chunk c, row i): exp(cs_e) [seg_e == entering] states[c] + sum_{j <= i, seg_j == seg_e}
    exp(cs_e - cs_j) dt'_j x_j B_j^T."""
    s = tl.program_id(0)
    h = tl.program_id(1)
    g = h // HPG
    p, n, p_mask, n_mask = _state_tile(tl.program_id(2), P, N, BLOCK_P, BLOCK_N)
    pn_mask = p_mask[:, None] & n_mask[None, :]
    e = tl.load(cu_ptr + s + 1).to(tl.int32) - 1
    c = e // T
    i = e - c * T
    row = h * LP + c * T
    cs_e = tl.load(cs_ptr + row + i)
    q = tl.exp(cs_e.to(tl.float32))
    if HAS_SEG:
        seg_e = tl.load(seg_ptr + e * ssl)
        entering = tl.load(seg_ptr + tl.maximum(c * T - 1, 0) * ssl)
        q = tl.where(seg_e == entering, q, 0.0)
    acc = q * tl.load(st_ptr + c * stc + h * sth + p[:, None] * stp + n[None, :] * stn, mask=pn_mask, other=0.0)
    for k0 in range(0, i + 1, BLOCK_K):
        t = k0 + tl.arange(0, BLOCK_K)
        pos = c * T + t
        keep = t <= i
        cs = tl.load(cs_ptr + row + t, mask=keep, other=0.0)
        dtp = tl.load(dtp_ptr + row + t, mask=keep, other=0.0)
        if HAS_SEG:
            seg = tl.load(seg_ptr + tl.minimum(pos, L - 1) * ssl)
            keep = keep & (seg == seg_e)
        w = tl.where(keep, tl.exp(tl.where(keep, cs_e - cs, 0.0).to(tl.float32)) * dtp, 0.0)
        xt = tl.load(x_ptr + pos[None, :] * sxl + h * sxh + p[:, None] * sxp,
                     mask=p_mask[:, None] & keep[None, :], other=0.0).to(tl.float32)
        Bj = tl.load(B_ptr + pos[:, None] * sbl + g * sbg + n[None, :] * sbn,
                     mask=keep[:, None] & n_mask[None, :], other=0.0)
        acc += _dot(xt * w[None, :], Bj, DOT_DTYPE, PRECISION, EMULATE)
    tl.store(vs_ptr + s * svs + h * svh + p[:, None] * svp + n[None, :] * svn, acc, mask=pn_mask)
