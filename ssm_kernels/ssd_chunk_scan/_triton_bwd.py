"""Triton kernels of the chunked SSD backward (see triton.py for the launch sequence, buffers and the torch
reductions that finish it). Notation of _chunked.py / _triton_fwd.py, per batch row b, head h (group g),
chunk c of T positions, rows i and columns j inside it:

    u_j = dt'_j x_j        M[i, j] = exp(cs_i - cs_j) [j <= i] [seg_i == seg_j]        Gm[i, j] = C_i . B_j
    q_i = exp(cs_i) [seg_i == entering]     r_j = exp(cs_{T-1} - cs_j) [seg_j == seg_end]
    y_i = sum_j M[i, j] Gm[i, j] u_j + q_i hp_c C_i         hp_{c+1} = g_c hp_c + sum_j r_j u_j B_j^T
    varlen state of sequence s ending at row e of chunk c: q_e hp_c + sum_j w[e, j] u_j B_j^T, w = M[e, :]

dy_i = dout_i * silu(z_i) (the gradient on y, recomputed in every kernel that reads it), dHP[c] the total
gradient on hp_c (c = 0 .. nc; dHP[0] is the initial states' gradient), dss[i, j] the gradient on
ss[i, j] = cs_i - cs_j. The gradient on cs is assembled in triton.py from the row sums of dss (kernel 3 for the
intra-chunk terms, per column block; kernel 4 for dq_i q_i; kernel 2 for the state term on row T - 1 and the
varlen terms on rows e), minus its column sums (kernel 3 for the intra-chunk terms, per row block; kernel 2 for
the state and varlen terms), plus dg_c g_c on row T - 1 and q_e <dvarlen_s, hp_c> on row e (kernel 1); kernel 5
sums those partials, scans them into da and forms ddt' and dA's partials. Gm[i, j] is read from the cb buffer
(_chunk_cb_kernel) that the forward's chunk scan reads too.
Row and column sums of a term come from the same recomputed values, so that they cancel as they should
in da_k = sum_{i >= k > j} dss[i, j] (with the forward's states instead, their rounding would not).
Every program writes its own slots of the partial-sum buffers; kernel 5 and torch sum them (deterministic, no
atomics).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_math import softplus_and_sigmoid
from ._triton_fwd import _batch_head, _cb_tile, _chunk_rows, _decays, _dot, _log_decays, _state_tile


@triton.jit
def _load_dy(dout_ptr, z_ptr, offs_g, offs_z, mask, HAS_Z: tl.constexpr):
    """dy = dout * silu(z) (fp32), zero where masked."""
    dy = tl.load(dout_ptr + offs_g, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + offs_z, mask=mask, other=0.0).to(tl.float32)
        dy = dy * zz / (1.0 + tl.exp(-zz))
    return dy


@triton.jit
def _dot_split(a, b, SPLIT_A: tl.constexpr, SPLIT_B: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
               EMULATE: tl.constexpr):
    """a @ b (fp32 accumulation) with the fp32 operands flagged SPLIT_* kept to about twice DOT_DTYPE's
    precision: each is split into its rounded value and the rounded remainder and the products of the parts
    are summed (lo @ lo dropped), 1 + SPLIT_A + SPLIT_B tensor-core dots. Used where one rounding of an fp32
    operand to bf16 / fp16 would show in the reduced gradients dA / ddt_bias; exact fp32 dots need no split."""
    out = _dot(a, b, DOT_DTYPE, PRECISION, EMULATE)  # the operands rounded once (exact for fp32 dots)
    if DOT_DTYPE != tl.float32:
        if SPLIT_A:
            a_lo = a - a.to(DOT_DTYPE).to(tl.float32)
            out += _dot(a_lo, b, DOT_DTYPE, PRECISION, EMULATE)
        if SPLIT_B:
            b_lo = b - b.to(DOT_DTYPE).to(tl.float32)
            out += _dot(a, b_lo, DOT_DTYPE, PRECISION, EMULATE)
    return out


@triton.jit
def _bwd_state_kernel(dout_ptr, z_ptr, C_ptr, cs_ptr, g_ptr, seg_ptr, st_ptr, dst_ptr, dv_ptr, vlo_ptr, cu_ptr,
                      dhp_ptr, part_ptr, vq_ptr,
                      L, H, HPG, P: tl.constexpr, N: tl.constexpr, T: tl.constexpr, LP, NC, NT,
                      sgb, sgl, sgh, sgp, szb, szl, szh, szp, scb, scl, scg, scn, ssb, ssl,
                      stb, stc, sth, stp, stn, sdb, sdc, sdh, sdp, sdn, svs, svh, svp, svn,
                      HAS_Z: tl.constexpr, HAS_SEG: tl.constexpr, HAS_DST: tl.constexpr, HAS_DV: tl.constexpr,
                      DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                      BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Grid (B * H, cdiv(P, BLOCK_P) * cdiv(N, BLOCK_N)): reverse state passing, sequential over chunks,
        dHP[nc] = dstates[nc];  dHP[c] = g_c dHP[c + 1] + sum_i q_i dy_i^T C_i + dstates[c] + sum_s q_e dvarlen_s
    (s over the sequences that end in chunk c), written to the (B, nc + 1, H, P, N) fp32 buffer dhp; this
    tile's partials of dg_c g_c = g_c <dHP[c + 1], hp_c> to part[bh, tile, c] and of q_e <dvarlen_s, hp_c> to
    vq[s, h, tile]."""
    bh = tl.program_id(0)
    tile = tl.program_id(1)
    b, h, g = _batch_head(bh, H, HPG)
    p, n, p_mask, n_mask = _state_tile(tile, P, N, BLOCK_P, BLOCK_N)
    pn_mask = p_mask[:, None] & n_mask[None, :]
    st_off = b * stb + h * sth + p[:, None] * stp + n[None, :] * stn
    ds_off = b * sdb + h * sdh + p[:, None] * sdp + n[None, :] * sdn
    if HAS_DST:
        acc = tl.load(dst_ptr + ds_off + NC * sdc, mask=pn_mask, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for cc in range(0, NC):
        c = NC - 1 - cc
        tl.store(dhp_ptr + st_off + (c + 1) * stc, acc, mask=pn_mask)
        hp = tl.load(st_ptr + st_off + c * stc, mask=pn_mask, other=0.0)
        gc = tl.load(g_ptr + bh * NC + c)
        tl.store(part_ptr + (bh * NT + tile) * NC + c, gc * tl.sum(acc * hp))
        row = bh * LP + c * T
        if HAS_SEG:
            entering = tl.load(seg_ptr + b * ssb + tl.maximum(c * T - 1, 0) * ssl)
        local = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, T, BLOCK_K):
            t = k0 + tl.arange(0, BLOCK_K)
            pos = c * T + t
            valid = (t < T) & (pos < L)
            cs = tl.load(cs_ptr + row + t, mask=t < T, other=0.0)
            keep = valid
            if HAS_SEG:
                seg = tl.load(seg_ptr + b * ssb + tl.minimum(pos, L - 1) * ssl)
                keep = keep & (seg == entering)
            q = tl.where(keep, tl.exp(tl.where(keep, cs, 0.0).to(tl.float32)), 0.0)
            m2 = p_mask[:, None] & valid[None, :]
            dyT = _load_dy(dout_ptr, z_ptr, b * sgb + pos[None, :] * sgl + h * sgh + p[:, None] * sgp,
                           b * szb + pos[None, :] * szl + h * szh + p[:, None] * szp, m2, HAS_Z)
            Ct = tl.load(C_ptr + b * scb + pos[:, None] * scl + g * scg + n[None, :] * scn,
                         mask=valid[:, None] & n_mask[None, :], other=0.0)
            local += _dot_split(dyT * q[None, :], Ct, True, False, DOT_DTYPE, PRECISION, EMULATE)
        acc = gc * acc + local
        if HAS_DST:
            acc += tl.load(dst_ptr + ds_off + c * sdc, mask=pn_mask, other=0.0).to(tl.float32)
        if HAS_DV:
            for s in range(tl.load(vlo_ptr + c), tl.load(vlo_ptr + c + 1)):
                e = tl.load(cu_ptr + s + 1).to(tl.int32) - 1
                qe = tl.exp(tl.load(cs_ptr + bh * LP + e).to(tl.float32))
                if HAS_SEG:
                    qe = tl.where(tl.load(seg_ptr + e * ssl) == entering, qe, 0.0)
                dv = tl.load(dv_ptr + s * svs + h * svh + p[:, None] * svp + n[None, :] * svn, mask=pn_mask,
                             other=0.0).to(tl.float32)
                acc += qe * dv
                tl.store(vq_ptr + (s * H + h) * NT + tile, qe * tl.sum(dv * hp))
    tl.store(dhp_ptr + st_off, acc, mask=pn_mask)


@triton.jit
def _bwd_dx_kernel(x_ptr, dout_ptr, z_ptr, pre_ptr, B_ptr, cb_ptr, D_ptr, dtp_ptr, cs_ptr, seg_ptr, dhp_ptr,
                   dv_ptr, vlo_ptr, cu_ptr, dx_ptr, dz_ptr, dux_ptr, col_ptr, dD_ptr, srow_ptr, vrow_ptr,
                   L, H, G, HPG, P: tl.constexpr, N: tl.constexpr, T: tl.constexpr, NC, LP, BH,
                   sxb, sxl, sxh, sxp, sgb, sgl, sgh, sgp, szb, szl, szh, szp, sbb, sbl, sbg, sbn,
                   sdh, sdp, ssb, ssl, stb, stc, sth, stp, stn, svs, svh, svp, svn,
                   sob, sol, soh, sop,
                   HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_SEG: tl.constexpr,
                   HAS_DV: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                   FAST: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """Grid (nc * cdiv(T, BLOCK_T), B * H), one column block j of one chunk and head (its rows i >= j in steps
    of BLOCK_I, which divides BLOCK_T):
        du_j = r_j B_j dHP[c+1]^T + sum_s w[e, j] B_j dvarlen_s^T + sum_{i >= j} M[i, j] Gm[i, j] dy_i
        dx_j = du_j dt'_j + D dy_j;  dux_j = du_j . x_j;  dz_j from the stored pre-gate output;
        col_j = the column sums of the state and varlen terms of dss (the intra-chunk ones: _bwd_dgm_kernel);
        the row sums of this block's state and varlen terms of dss (rows T - 1 and e): srow[bh, jb, c],
        vrow[s, h, jb];  dD partial sum_j dy_j x_j into dD[program, p]."""
    n_jb = tl.cdiv(T, BLOCK_T)
    c, j0, j, pos_j, valid_j = _chunk_rows(tl.program_id(0), T, L, BLOCK_T)
    bh = tl.program_id(1)
    b, h, g = _batch_head(bh, H, HPG)
    pp = tl.arange(0, BLOCK_P)
    nn = tl.arange(0, BLOCK_N)
    p_mask = pp < P
    n_mask = nn < N
    row = bh * LP + c * T
    cs_j = tl.load(cs_ptr + row + j, mask=j < T, other=0.0)
    dt_j = tl.load(dtp_ptr + row + j, mask=j < T, other=0.0)
    keep_r = valid_j
    if HAS_SEG:
        seg_j = tl.load(seg_ptr + b * ssb + tl.minimum(pos_j, L - 1) * ssl)
        seg_end = tl.load(seg_ptr + b * ssb + tl.minimum(c * T + T - 1, L - 1) * ssl)
        keep_r = keep_r & (seg_j == seg_end)
    jp_mask = valid_j[:, None] & p_mask[None, :]
    B_J = tl.load(B_ptr + b * sbb + pos_j[:, None] * sbl + g * sbg + nn[None, :] * sbn,
                  mask=valid_j[:, None] & n_mask[None, :], other=0.0)
    x_offs = b * sxb + pos_j[:, None] * sxl + h * sxh + pp[None, :] * sxp
    u_J = tl.load(x_ptr + x_offs, mask=jp_mask, other=0.0).to(tl.float32) * dt_j[:, None]

    # the chunk's contribution to the state leaving it
    cs_end = tl.load(cs_ptr + row + T - 1)
    r = tl.where(keep_r, tl.exp(tl.where(keep_r, cs_end - cs_j, 0.0).to(tl.float32)), 0.0)
    dsT = tl.load(dhp_ptr + b * stb + (c + 1) * stc + h * sth + nn[:, None] * stn + pp[None, :] * stp,
                  mask=n_mask[:, None] & p_mask[None, :], other=0.0)
    K = _dot_split(B_J, dsT, False, True, DOT_DTYPE, PRECISION, EMULATE)
    du = K * r[:, None]
    col = (tl.sum(u_J * K, axis=1) * r).to(tl.float64)  # fp64 sums: rows and columns of dss must cancel
    tl.store(srow_ptr + (bh * n_jb + j0 // BLOCK_T) * (LP // T) + c, tl.sum(col))
    if HAS_DV:
        for s in range(tl.load(vlo_ptr + c), tl.load(vlo_ptr + c + 1)):
            e = tl.load(cu_ptr + s + 1).to(tl.int32) - 1
            ie = e - c * T
            if ie >= j0:
                cs_e = tl.load(cs_ptr + row + ie)
                keep = (j <= ie) & valid_j
                if HAS_SEG:
                    keep = keep & (seg_j == tl.load(seg_ptr + e * ssl))
                w = tl.where(keep, tl.exp(tl.where(keep, cs_e - cs_j, 0.0).to(tl.float32)), 0.0)
                dvT = tl.load(dv_ptr + s * svs + h * svh + nn[:, None] * svn + pp[None, :] * svp,
                              mask=n_mask[:, None] & p_mask[None, :], other=0.0)
                Kv = _dot_split(B_J, dvT, False, True, DOT_DTYPE, PRECISION, EMULATE)
                du += Kv * w[:, None]
                cv = (tl.sum(u_J * Kv, axis=1) * w).to(tl.float64)
                col += cv
                tl.store(vrow_ptr + (s * H + h) * n_jb + j0 // BLOCK_T, tl.sum(cv))

    # within the chunk: rows i >= j (past the sequence: cb and dy are 0, so no mask is needed there)
    ex_j = _log_decays(cs_ptr + row, j, T, False, DOT_DTYPE)
    for i0 in range(j0, T, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        pos_i = c * T + i
        valid_i = (i < T) & (pos_i < L)
        ip_mask = valid_i[:, None] & p_mask[None, :]
        dy_I = _load_dy(dout_ptr, z_ptr, b * sgb + pos_i[:, None] * sgl + h * sgh + pp[None, :] * sgp,
                        b * szb + pos_i[:, None] * szl + h * szh + pp[None, :] * szp, ip_mask, HAS_Z)
        keep = j[None, :] <= i[:, None]
        if HAS_SEG:
            seg_i = tl.load(seg_ptr + b * ssb + tl.minimum(pos_i, L - 1) * ssl)
            keep = keep & (seg_i[:, None] == seg_j[None, :])
        M = _decays(_log_decays(cs_ptr + row, i, T, True, DOT_DTYPE), ex_j, keep, FAST)
        CB = _cb_tile(cb_ptr, b, c, g, G, T, NC, i, j)
        du += _dot_split(tl.trans(CB * M), dy_I, True, False, DOT_DTYPE, PRECISION, EMULATE)

    # this block's own rows: skip connection, gate, outputs (x loaded again: not live across the loop)
    x_J = tl.load(x_ptr + x_offs, mask=jp_mask, other=0.0).to(tl.float32)
    offs_g = b * sgb + pos_j[:, None] * sgl + h * sgh + pp[None, :] * sgp
    offs_z = b * szb + pos_j[:, None] * szl + h * szh + pp[None, :] * szp
    dx = du * dt_j[:, None]
    if HAS_D:
        dy_J = _load_dy(dout_ptr, z_ptr, offs_g, offs_z, jp_mask, HAS_Z)
        if D_PER_P:
            Dv = tl.load(D_ptr + h * sdh + pp * sdp, mask=p_mask, other=0.0).to(tl.float32)
            dx += dy_J * Dv[None, :]
        else:
            dx += dy_J * tl.load(D_ptr + h * sdh).to(tl.float32)
        tl.store(dD_ptr + (tl.program_id(0) * BH + bh) * BLOCK_P + pp, tl.sum(dy_J * x_J, axis=0))
    tl.store(dx_ptr + b * sob + pos_j[:, None] * sol + h * soh + pp[None, :] * sop,
             dx.to(dx_ptr.dtype.element_ty), mask=jp_mask)
    if HAS_Z:
        do = tl.load(dout_ptr + offs_g, mask=jp_mask, other=0.0).to(tl.float32)
        zz = tl.load(z_ptr + offs_z, mask=jp_mask, other=0.0).to(tl.float32)
        pre = tl.load(pre_ptr + b * sob + pos_j[:, None] * sol + h * soh + pp[None, :] * sop, mask=jp_mask,
                      other=0.0).to(tl.float32)
        sig = 1.0 / (1.0 + tl.exp(-zz))
        dz = do * pre * sig * (1.0 + zz * (1.0 - sig))
        tl.store(dz_ptr + b * sob + pos_j[:, None] * sol + h * soh + pp[None, :] * sop,
                 dz.to(dz_ptr.dtype.element_ty), mask=jp_mask)
    tl.store(dux_ptr + row + j, tl.sum(du * x_J, axis=1), mask=j < T)
    tl.store(col_ptr + row + j, col, mask=j < T)


@triton.jit
def _group_split(G, HPG, HPS):
    """Program ids 1 and 2 of the per-group kernels' grids (.., B * G, splits) as (b, g, split, h_lo, h_hi):
    batch row b, group g, the split's heads [h_lo, h_hi)."""
    bg = tl.program_id(1)
    b = bg // G
    g = bg % G
    split = tl.program_id(2)
    h_lo = g * HPG + split * HPS
    return b, g, split, h_lo, tl.minimum(h_lo + HPS, (g + 1) * HPG)


@triton.jit
def _group_block(L, G, HPG, HPS, P, N, T, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """The block of the dB / dC kernel's grid (nc * cdiv(T, BLOCK_T), B * G, splits): (c, r0, b, g, split,
    h_lo, h_hi, r, pos, valid, pp, nn, p_mask, n_mask): chunk c, the block's first row r0 of it, _group_split's
    values, the rows r of the block, their positions in the sequence and whether they are inside the chunk and
    the sequence, the aranges of P and N and their masks."""
    c, r0, r, pos, valid = _chunk_rows(tl.program_id(0), T, L, BLOCK_T)
    b, g, split, h_lo, h_hi = _group_split(G, HPG, HPS)
    pp = tl.arange(0, BLOCK_P)
    nn = tl.arange(0, BLOCK_N)
    return c, r0, b, g, split, h_lo, h_hi, r, pos, valid, pp, nn, pp < P, nn < N


@triton.jit
def _tile_pair(program, T, L, BLOCK_T: tl.constexpr):
    """Program `program` of nc * n_pairs (n_pairs = n_jb (n_jb + 1) / 2 blocks at or below the diagonal of a
    chunk's (T, T) tile grid, n_jb = cdiv(T, BLOCK_T)) as (c, i0, j0, i, j, pos_i, pos_j, valid_i, valid_j):
    chunk c, the first row i0 and column j0 <= i0 of the tile, its rows and columns, their positions in the
    sequence and whether they lie inside the chunk and the sequence. Pairs run (0, 0), (1, 0), (1, 1), (2, 0)..."""
    n_jb = tl.cdiv(T, BLOCK_T)
    n_pairs = n_jb * (n_jb + 1) // 2
    c = program // n_pairs
    k = program % n_pairs
    # the row block ib with ib (ib + 1) / 2 <= k < (ib + 1) (ib + 2) / 2, from the float root, then corrected
    # by one either way so that a rounded root cannot pick a neighbouring block
    ib = ((tl.sqrt((8 * k + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    ib = tl.where((ib + 1) * (ib + 2) // 2 <= k, ib + 1, ib)
    ib = tl.where(ib * (ib + 1) // 2 > k, ib - 1, ib)
    i0 = ib * BLOCK_T
    j0 = (k - ib * (ib + 1) // 2) * BLOCK_T
    i = i0 + tl.arange(0, BLOCK_T)
    j = j0 + tl.arange(0, BLOCK_T)
    pos_i = c * T + i
    pos_j = c * T + j
    return c, i0, j0, i, j, pos_i, pos_j, (i < T) & (pos_i < L), (j < T) & (pos_j < L)


@triton.jit
def _bwd_dgm_kernel(x_ptr, dout_ptr, z_ptr, cb_ptr, dtp_ptr, cs_ptr, seg_ptr, dgm_ptr, rowp_ptr, colp_ptr,
                    L, H, G, HPG, HPS, P: tl.constexpr, T: tl.constexpr, LP, NC, BZ,
                    sxb, sxl, sxh, sxp, sgb, sgl, sgh, sgp, szb, szl, szh, szp, ssb, ssl,
                    HAS_Z: tl.constexpr, HAS_SEG: tl.constexpr, SPLIT_DY: tl.constexpr,
                    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr, FAST: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    """Grid (nc * n_pairs, B * G, splits), one tile (i, j) at or below the diagonal of one chunk and group
    (_tile_pair), over the heads h of split `split` (HPS heads each); SPLIT_DY: dy has digits beyond the dot's
    dtype (dout * silu(z), or a dout of another dtype), so that its dot with x takes the remainder too:
        dGm[i, j] = sum_h M_h[i, j] (dy_hi . u_hj)          -> dgm[split, b, g, c, i, j]
        rowp[bh, jb, i] = sum_{j in block jb, j < i} dss_h[i, j]
        colp[bh, ib, j] = sum_{i in block ib, i > j} dss_h[i, j]
    (jb, ib the tile's column and row blocks; row and column sums from the same products, so that the two
    cancel in da; the slots of blocks above the diagonal are never written nor read). Every tile does the same
    work."""
    c, i0, j0, i, j, pos_i, pos_j, valid_i, valid_j = _tile_pair(tl.program_id(0), T, L, BLOCK_T)
    b, g, split, h_lo, h_hi = _group_split(G, HPG, HPS)
    pp = tl.arange(0, BLOCK_P)
    p_mask = pp < P
    ip_mask = valid_i[:, None] & p_mask[None, :]
    n_jb = tl.cdiv(T, BLOCK_T)
    offs_g = b * sgb + pos_i[:, None] * sgl + pp[None, :] * sgp
    offs_z = b * szb + pos_i[:, None] * szl + pp[None, :] * szp
    offs_x = b * sxb + pos_j[None, :] * sxl + pp[:, None] * sxp
    CB = _cb_tile(cb_ptr, b, c, g, G, T, NC, i, j)
    keep = j[None, :] <= i[:, None]  # past the sequence: dy, x and dt' are 0, so no mask is needed there
    if HAS_SEG:
        seg_i = tl.load(seg_ptr + b * ssb + tl.minimum(pos_i, L - 1) * ssl)
        seg_j = tl.load(seg_ptr + b * ssb + tl.minimum(pos_j, L - 1) * ssl)
        keep = keep & (seg_i[:, None] == seg_j[None, :])
    strict = j[None, :] < i[:, None]
    acc = tl.zeros([BLOCK_T, BLOCK_T], dtype=tl.float32)
    for h in range(h_lo, h_hi):
        bh = b * H + h
        row = bh * LP + c * T
        M = _decays(_log_decays(cs_ptr + row, i, T, True, DOT_DTYPE),
                    _log_decays(cs_ptr + row, j, T, False, DOT_DTYPE), keep, FAST)
        dt_j = tl.load(dtp_ptr + row + j, mask=j < T, other=0.0)
        dy_I = _load_dy(dout_ptr, z_ptr, offs_g + h * sgh, offs_z + h * szh, ip_mask, HAS_Z)
        xT = tl.load(x_ptr + offs_x + h * sxh, mask=p_mask[:, None] & valid_j[None, :], other=0.0)
        dG = _dot_split(dy_I, xT, SPLIT_DY, False, DOT_DTYPE, PRECISION, EMULATE) * (M * dt_j[None, :])
        acc += dG
        dss = tl.where(strict, dG * CB, 0.0).to(tl.float64)
        tl.store(rowp_ptr + (bh * (n_jb + 1) + j0 // BLOCK_T) * LP + c * T + i, tl.sum(dss, axis=1), mask=i < T)
        tl.store(colp_ptr + (bh * n_jb + i0 // BLOCK_T) * LP + c * T + j, tl.sum(dss, axis=0), mask=j < T)
    dgm_base = (((split * BZ + b) * G + g) * NC + c).to(tl.int64) * T * T
    tl.store(dgm_ptr + dgm_base + i[:, None] * T + j[None, :], acc, mask=(i < T)[:, None] & (j < T)[None, :])


@triton.jit
def _bwd_dbc_kernel(x_ptr, dout_ptr, z_ptr, B_ptr, C_ptr, dtp_ptr, cs_ptr, seg_ptr, st_ptr, dhp_ptr, dv_ptr, vlo_ptr,
                    cu_ptr, dgm_ptr, rowp_ptr, dB_ptr, dC_ptr,
                    L, H, G, HPG, HPS, P: tl.constexpr, N: tl.constexpr, T: tl.constexpr, LP, NC, BZ,
                    sxb, sxl, sxh, sxp, sgb, sgl, sgh, sgp, szb, szl, szh, szp, sbb, sbl, sbg, sbn,
                    scb, scl, scg, scn, ssb, ssl, stb, stc, sth, stp, stn, svs, svh, svp, svn,
                    HAS_Z: tl.constexpr, HAS_SEG: tl.constexpr, HAS_DV: tl.constexpr, SPLIT_DY: tl.constexpr,
                    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (nc * cdiv(T, BLOCK_T), B * G, splits), block k of one chunk and group, over the heads of split
    `split`: dB for the block's columns j and dC for its rows i (n_jb + 1 tiles of dgm each way, whichever k);
    SPLIT_DY as in _bwd_dgm_kernel:
        dB_j = sum_{i >= j} dGm[i, j] C_i + sum_h r_hj u_hj^T dHP_h[c + 1] + sum_{h, s} w_h[e, j] u_hj^T dvarlen_hs
        dC_i = sum_{j <= i} dGm[i, j] B_j + sum_h q_hi dy_hi hp_hc;  rowp[bh, n_jb, i] = q_hi dq_hi
    -> dB[split, b, pos, g, :], dC[split, b, pos, g, :] (fp32 partials)."""
    c, j0, b, g, split, h_lo, h_hi, j, pos_j, valid_j, pp, nn, p_mask, n_mask = _group_block(
        L, G, HPG, HPS, P, N, T, BLOCK_T, BLOCK_P, BLOCK_N)
    pn_mask = p_mask[:, None] & n_mask[None, :]
    dgm_base = (((split * BZ + b) * G + g) * NC + c).to(tl.int64) * T * T

    # dB: column block j
    acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    for i0 in range(j0, T, BLOCK_T):
        i = i0 + tl.arange(0, BLOCK_T)
        pos_i = c * T + i
        valid_i = (i < T) & (pos_i < L)
        dG = tl.load(dgm_ptr + dgm_base + i[:, None] * T + j[None, :], mask=(i < T)[:, None] & (j < T)[None, :],
                     other=0.0)
        C_I = tl.load(C_ptr + b * scb + pos_i[:, None] * scl + g * scg + nn[None, :] * scn,
                      mask=valid_i[:, None] & n_mask[None, :], other=0.0)
        acc += _dot(tl.trans(dG), C_I, DOT_DTYPE, PRECISION, EMULATE)
    keep_r = valid_j
    if HAS_SEG:
        seg_j = tl.load(seg_ptr + b * ssb + tl.minimum(pos_j, L - 1) * ssl)
        seg_end = tl.load(seg_ptr + b * ssb + tl.minimum(c * T + T - 1, L - 1) * ssl)
        keep_r = keep_r & (seg_j == seg_end)
    if HAS_DV:
        s_lo = tl.load(vlo_ptr + c)
        s_hi = tl.load(vlo_ptr + c + 1)
    for h in range(h_lo, h_hi):
        bh = b * H + h
        row = bh * LP + c * T
        cs_j = tl.load(cs_ptr + row + j, mask=j < T, other=0.0)
        dt_j = tl.load(dtp_ptr + row + j, mask=j < T, other=0.0)
        x_J = tl.load(x_ptr + b * sxb + pos_j[:, None] * sxl + h * sxh + pp[None, :] * sxp,
                      mask=valid_j[:, None] & p_mask[None, :], other=0.0)
        cs_end = tl.load(cs_ptr + row + T - 1)
        r = tl.where(keep_r, tl.exp(tl.where(keep_r, cs_end - cs_j, 0.0).to(tl.float32)), 0.0)
        ds = tl.load(dhp_ptr + b * stb + (c + 1) * stc + h * sth + pp[:, None] * stp + nn[None, :] * stn,
                     mask=pn_mask, other=0.0)
        # x exact in the dot, the scales after it
        acc += _dot_split(x_J, ds, False, True, DOT_DTYPE, PRECISION, EMULATE) * (dt_j * r)[:, None]
        if HAS_DV:
            for s in range(s_lo, s_hi):
                e = tl.load(cu_ptr + s + 1).to(tl.int32) - 1
                ie = e - c * T
                if ie >= j0:
                    keep = (j <= ie) & valid_j
                    if HAS_SEG:
                        keep = keep & (seg_j == tl.load(seg_ptr + e * ssl))
                    w = tl.where(keep, tl.exp(tl.where(keep, tl.load(cs_ptr + row + ie) - cs_j, 0.0)
                                              .to(tl.float32)), 0.0)
                    dv = tl.load(dv_ptr + s * svs + h * svh + pp[:, None] * svp + nn[None, :] * svn,
                                 mask=pn_mask, other=0.0)
                    acc += _dot_split(x_J, dv, False, True, DOT_DTYPE, PRECISION, EMULATE) * (dt_j * w)[:, None]
    out_off = ((split * BZ + b) * L + pos_j[:, None]) * G * N + g * N + nn[None, :]
    tl.store(dB_ptr + out_off, acc, mask=valid_j[:, None] & n_mask[None, :])

    # dC: the same block as rows i; the entering states' part first, then the column blocks up to the diagonal
    i0 = j0
    i = j
    pos_i = pos_j
    valid_i = valid_j
    ip_mask = valid_i[:, None] & p_mask[None, :]
    C_I = tl.load(C_ptr + b * scb + pos_i[:, None] * scl + g * scg + nn[None, :] * scn,
                  mask=valid_i[:, None] & n_mask[None, :], other=0.0)
    keep_q = valid_i
    if HAS_SEG:
        entering = tl.load(seg_ptr + b * ssb + tl.maximum(c * T - 1, 0) * ssl)
        keep_q = keep_q & (seg_j == entering)
    n_jb = tl.cdiv(T, BLOCK_T)
    offs_g = b * sgb + pos_i[:, None] * sgl + pp[None, :] * sgp
    offs_z = b * szb + pos_i[:, None] * szl + pp[None, :] * szp
    dC = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    for h in range(h_lo, h_hi):
        bh = b * H + h
        cs_i = tl.load(cs_ptr + bh * LP + c * T + i, mask=i < T, other=0.0)
        q = tl.where(keep_q, tl.exp(tl.where(keep_q, cs_i, 0.0).to(tl.float32)), 0.0)
        dy_I = _load_dy(dout_ptr, z_ptr, offs_g + h * sgh, offs_z + h * szh, ip_mask, HAS_Z)
        hp = tl.load(st_ptr + b * stb + c * stc + h * sth + pp[:, None] * stp + nn[None, :] * stn,
                     mask=pn_mask, other=0.0)
        Z = _dot_split(dy_I, hp, SPLIT_DY, True, DOT_DTYPE, PRECISION, EMULATE) * q[:, None]
        dC += Z
        tl.store(rowp_ptr + (bh * (n_jb + 1) + n_jb) * LP + c * T + i,
                 tl.sum(Z * C_I.to(tl.float32), axis=1), mask=i < T)
    for jj0 in range(0, i0 + 1, BLOCK_T):
        jj = jj0 + tl.arange(0, BLOCK_T)
        pos_jj = c * T + jj
        B_J = tl.load(B_ptr + b * sbb + pos_jj[:, None] * sbl + g * sbg + nn[None, :] * sbn,
                      mask=((jj < T) & (pos_jj < L))[:, None] & n_mask[None, :], other=0.0)
        dG = tl.load(dgm_ptr + dgm_base + i[:, None] * T + jj[None, :], mask=(i < T)[:, None] & (jj < T)[None, :],
                     other=0.0)
        dC += _dot(dG, B_J, DOT_DTYPE, PRECISION, EMULATE)
    tl.store(dC_ptr + out_off, dC, mask=valid_i[:, None] & n_mask[None, :])


@triton.jit
def _bwd_dt_kernel(rowp_ptr, colp_ptr, col_ptr, part_ptr, srow_ptr, extra_ptr, dux_ptr, dtp_ptr, A_ptr, dt_ptr,
                   bias_ptr, ddt_ptr, dA_ptr, dbias_ptr, L, H, T: tl.constexpr, LP, NC, NT, SJB, dt_lo, dt_hi, sah,
                   sdb, sdl, sdh, sgb, sgl, sgh,
                   HAS_EXTRA: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr,
                   T_PAD: tl.constexpr, NT_PAD: tl.constexpr, SJB_PAD: tl.constexpr):
    """Grid (nc, B * H): the gradient on the log-decays of one chunk and head (fp64), and from it the gradients
    on dt, dt_bias and A. With ib(t) / jb(t) the row / column block of position t (BLOCK_T rows each):
        dcs_t = sum_{jb <= ib(t)} rowp[bh, jb, t] + rowp[bh, n_jb, t] - sum_{ib >= jb(t)} colp[bh, ib, t]
                - col[bh, t]  (+ sum part[bh, :, c] + sum srow[bh, :, c] on row T - 1; + extra[bh, t]: varlen rows)
    (srow: (B H, SJB, nc), SJB the dx kernel's column blocks)
        da_t = sum_{k >= t in the chunk} dcs_k,   ddt'_t = da_t A_h + dux[bh, t]
        dA_part[bh, c] = sum_t da_t dt'_t
    then back through dt' = clamp(softplus(dt + dt_bias), dt_lo, dt_hi) (torch's rules: the clamp passes the
    gradient where dt_lo <= v <= dt_hi; softplus's derivative is the sigmoid, from the forward's helper):
        ddt[b, t, h] (dt's dtype, (B, L, H)),   dbias_part[bh, c] = sum_t ddt_t (fp32)
    Only the slots of rowp / colp that kernels 3 and 4 write are read (blocks at or below the diagonal)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    n_jb = tl.cdiv(T, BLOCK_T)
    t = tl.arange(0, T_PAD)
    valid = t < T
    block = t // BLOCK_T
    offs = c * T + t
    rows = tl.zeros([T_PAD], dtype=tl.float64)
    cols = tl.zeros([T_PAD], dtype=tl.float64)
    for k in range(0, n_jb):
        rows += tl.load(rowp_ptr + (bh * (n_jb + 1) + k) * LP + offs, mask=valid & (k <= block), other=0.0)
        cols += tl.load(colp_ptr + (bh * n_jb + k) * LP + offs, mask=valid & (k >= block), other=0.0)
    rows += tl.load(rowp_ptr + (bh * (n_jb + 1) + n_jb) * LP + offs, mask=valid, other=0.0)
    dcs = rows - cols - tl.load(col_ptr + bh * LP + offs, mask=valid, other=0.0)
    tiles = tl.arange(0, NT_PAD)
    blocks = tl.arange(0, SJB_PAD)
    last = tl.sum(tl.load(part_ptr + (bh * NT + tiles) * NC + c, mask=tiles < NT, other=0.0).to(tl.float64))
    last += tl.sum(tl.load(srow_ptr + (bh * SJB + blocks) * NC + c, mask=blocks < SJB, other=0.0))
    dcs += tl.where(t == T - 1, last, 0.0)
    if HAS_EXTRA:
        dcs += tl.load(extra_ptr + bh * LP + offs, mask=valid, other=0.0)
    da = tl.cumsum(dcs, axis=0, reverse=True)
    dtp = tl.load(dtp_ptr + bh * LP + offs, mask=valid, other=0.0).to(tl.float64)
    tl.store(dA_ptr + bh * NC + c, tl.sum(da * dtp))
    dux = tl.load(dux_ptr + bh * LP + offs, mask=valid, other=0.0).to(tl.float64)
    ddtp = (da * tl.load(A_ptr + h * sah).to(tl.float64) + dux).to(tl.float32)

    inside = valid & (offs < L)
    raw = tl.load(dt_ptr + b * sdb + offs * sdl + h * sdh, mask=inside, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + h).to(tl.float32)
    if SOFTPLUS:
        soft, sig = softplus_and_sigmoid(raw, False)
    else:
        soft = raw
    ddt = ddtp * ((soft >= dt_lo) & (soft <= dt_hi)).to(tl.float32)
    if SOFTPLUS:
        ddt = ddt * sig
    tl.store(ddt_ptr + b * sgb + offs * sgl + h * sgh, ddt.to(ddt_ptr.dtype.element_ty), mask=inside)
    tl.store(dbias_ptr + bh * NC + c, tl.sum(tl.where(inside, ddt, 0.0)))
