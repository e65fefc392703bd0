"""Backward kernel of the Triton causal_conv1d: a persistent grid of P programs (BWD programs per SM on the
GPU, a few in the interpreter).

The work is cut into units of `tiles_per_chunk` consecutive L tiles of one (batch row, channel block); program
p walks units p, p + P, ... dweight / dbias partial sums are written once per unit to a (B * n_lchunks, D, W)
fp32 buffer and reduced with torch.sum (deterministic, no atomics). Two tile paths:

Per-tap (any layout, seq_idx): each program owns a scratch slot of BLOCK_D x (BLOCK_L + W_PAD) fp32 in global
memory (P slots, a few MB: it stays in L2 / L1). Per tile:
  1. g = dout * silu'(a) ONCE per position, a recomputed from the W taps of x, at the tile's BLOCK_L positions
     and at the W_PAD halo positions after it; both stored to the slot; barrier;
  2. the W shifted windows g[s + j] are read back from the slot: dx[s] = sum_j w_{W-1-j} g[s + j] and
     dweight[W-1-j] += sum_s x[s] g[s + j] (both with the same seq_idx mask same(s + j, s)), dbias += sum g;
  3. the first tile of a row also forms dinitial_states[p] (p = -(W-1) .. -1) and the initial states' share
     of dweight from the same slot; barrier before the next tile overwrites the slot.
Packed (channel-first without seq_idx): every global load is an aligned 16-byte vector and there is no scratch
slot nor barrier: x is read on t - 2E .. t + 2E in steps of E (the aligned group loads of the forward, L1 hits
after the first), dout on t and t + E (t + 2E when W - 1 > E); the pre-activation of the tile and of the tile
one group ahead (two when W - 1 > E) is rebuilt from the parts with the forward's packed_conv, so g is computed
on t and on t + E, a second silu' per position instead of a scratch round trip; the shifted windows g[s + j]
are parts of the current or next group (registers: tap), which give dx and dweight; dinitial_states recomputes
g[0 .. W-2] directly (first tile of a row only).
Row parts (channel-last without seq_idx, LaunchConfig.cl_bwd_rows = E > 0): the packed arithmetic on E parts
that are sets of rows (part e: positions s0 + E g + e), each loaded apart, a load coalesced along D; the groups
before and after the tile are loaded the same way (rows this tile or a neighbour reads: L1 / L2 hits).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._triton_fwd import (conv_parts, load_parts, load_row_parts, load_seq, load_weights, load_xp, pack, packed_conv,
                          pre_activation, row_positions, tap, unpack)


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
        a, x_t = pre_activation(x_row, w_row, bias_ptr, seq_row, init_row, d, d_mask, t, L, sxl, swk, sil, ssl,
                                 W, HAS_BIAS, HAS_SEQ, HAS_INIT, MASKED)
        g = _dsilu_mul(dy, a)
    else:
        g = dy
        x_t = load_xp(x_row, init_row, d_mask, t, L, sxl, sil, W, False, MASKED)
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
            gp = tl.where(load_seq(seq_row, idx, L, ssl, True) == seq_0, gp, 0.0)
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
        seq_t = load_seq(seq_row, t, L, ssl, MASKED)
    for j in tl.static_range(W):
        gj = tl.load(scr_row + (ri + j) * scr_l)
        if j == 0:
            db += tl.sum(gj, axis=1)[:, None]
        elif HAS_SEQ:
            gj = tl.where(load_seq(seq_row, t + j, L, ssl, MASKED) == seq_t, gj, 0.0)
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
def _packed_dx(e: tl.constexpr, E: tl.constexpr, W: tl.constexpr, acc, w, g, n, m):
    """Part e of dx: sum_j w[W-1-j] g[E grp + e + j]; offset e + j is part of the group (g), of the next group
    (n) or of the one after (m): tap on the run g, n, m read from its far end."""
    for j in tl.static_range(W):
        acc += w[W - 1 - j] * tap(e + j - 2 * E, E, m, n, g)
    return acc


@triton.jit
def _packed_dx_parts(w, g, gn, gm, E: tl.constexpr, W: tl.constexpr):
    """The E parts of dx from the shifted windows of g: parts of the tile's groups (g), of the next ones (gn)
    and of the ones after (gm)."""
    zero = tl.zeros(g[0].shape, dtype=tl.float32)
    dx = ()
    for e in tl.static_range(E):
        dx = dx + (_packed_dx(e, E, W, zero, w, g, gn, gm),)
    return dx


@triton.jit
def _packed_dw(dw, c, g, gn, gm, E: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr):
    """dweight[W-1-j] += sum_s x[s] g[s + j]: x's parts c times the window parts, summed over parts, then one
    reduction per tap."""
    kk = tl.arange(0, W_PAD)[None, :]
    zero = tl.zeros(c[0].shape, dtype=tl.float32)
    for j in tl.static_range(W):
        corr = zero
        for e in tl.static_range(E):
            corr += c[e] * tap(e + j - 2 * E, E, gm, gn, g)
        dw += tl.where(kk == W - 1 - j, tl.sum(corr, axis=1)[:, None], 0.0)
    return dw


@triton.jit
def _packed_dw_and_init(dw, c, g, gn, gm, x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dinit_row, d, d_mask,
                        s0, L, sxl, swk, sil, ssl, sgl, sjl, E: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr,
                        INIT_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr):
    """A packed tile's share of dweight, and in the first tile of a row dinitial_states with the initial
    states' share (g recomputed there: no scratch slot)."""
    dw = _packed_dw(dw, c, g, gn, gm, E, W, W_PAD)
    if HAS_INIT:
        if s0 == 0:
            dw = _bwd_init(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dinit_row, dinit_row, d, d_mask, L,
                           sxl, swk, sil, ssl, sgl, sjl, 0, dw, W, W_PAD, INIT_PAD, HAS_BIAS, False, SILU, False)
    return dw


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
    t = s0 + tl.arange(0, BLOCK_L)[None, :]
    w = load_weights(w_row, d_mask, swk, W)
    c = load_parts(x_row, init_row, d_mask, t, L, sxl, sil, W, HAS_INIT, MASKED, E, BLOCK_D, BLOCK_L)
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
        p = load_parts(x_row, init_row, d_mask, t - E, L, sxl, sil, W, HAS_INIT, MASKED, E, BLOCK_D, BLOCK_L)
        n = load_parts(x_row, init_row, d_mask, t + E, L, sxl, sil, W, HAS_INIT, MASKED, E, BLOCK_D, BLOCK_L)
        if W - 1 > E:
            q = load_parts(x_row, init_row, d_mask, t - 2 * E, L, sxl, sil, W, HAS_INIT, MASKED, E, BLOCK_D,
                           BLOCK_L)
            m = load_parts(x_row, init_row, d_mask, t + 2 * E, L, sxl, sil, W, HAS_INIT, MASKED, E, BLOCK_D,
                           BLOCK_L)
        else:
            q, m = p, n
        acc = tl.zeros(c[0].shape, dtype=tl.float32)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
        g = _dsilu_mul(dy, packed_conv(acc, w, c, p, q, E, W, False, BLOCK_D, BLOCK_L))
        gn = _dsilu_mul(dyn, packed_conv(acc, w, n, c, p, E, W, False, BLOCK_D, BLOCK_L))
        if W - 1 > E:
            gm = _dsilu_mul(dym, packed_conv(acc, w, m, n, c, E, W, False, BLOCK_D, BLOCK_L))
        else:
            gm = gn
    else:
        g, gn, gm = dy, dyn, dym
    db += tl.sum(g, axis=1)[:, None]
    g = unpack(g, BLOCK_D, BLOCK_L, E)
    gn = unpack(gn, BLOCK_D, BLOCK_L, E)
    gm = unpack(gm, BLOCK_D, BLOCK_L, E)
    dx = pack(_packed_dx_parts(w, g, gn, gm, E, W), BLOCK_D, BLOCK_L, E).to(dx_row.dtype.element_ty)
    if MASKED:
        tl.store(dx_row + t * sdl, dx, mask=d_mask & (t < L))
    else:
        tl.store(dx_row + t * sdl, dx)
    dw = _packed_dw_and_init(dw, c, g, gn, gm, x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dinit_row, d,
                             d_mask, s0, L, sxl, swk, sil, ssl, sgl, sjl, E, W, W_PAD, INIT_PAD, HAS_BIAS, HAS_INIT,
                             SILU)
    return dw, db


@triton.jit
def _grad_parts(dy, a, SILU: tl.constexpr):
    """Per part: dy * silu'(a) (SILU), else dy."""
    g = ()
    for e in tl.static_range(len(dy)):
        g = g + (_dsilu_mul(dy[e], a[e]) if SILU else dy[e],)
    return g


@triton.jit
def _bwd_tile_rows(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row, d, d_mask,
                   s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, dw, db,
                   W: tl.constexpr, W_PAD: tl.constexpr, INIT_PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_INIT: tl.constexpr, SILU: tl.constexpr, MASKED: tl.constexpr, E: tl.constexpr,
                   BLOCK_L: tl.constexpr):
    """The packed tile's arithmetic on channel-last rows (no seq_idx): the tile is E row parts (part e the rows
    s0 + E g + e, each load coalesced along D; the groups before and after are loaded the same way, L1 / L2
    hits of rows this or a neighbouring tile reads), so g is computed once on the tile and on the first W - 1
    rows after it, with no scratch slot and no barrier."""
    G: tl.constexpr = BLOCK_L // E
    w = load_weights(w_row, d_mask, swk, W)
    c = load_row_parts(x_row, init_row, d_mask, s0, L, sxl, sil, W, HAS_INIT, MASKED, E, G)
    p = load_row_parts(x_row, init_row, d_mask, s0 - E, L, sxl, sil, W, HAS_INIT, MASKED, E, G)
    n = load_row_parts(x_row, init_row, d_mask, s0 + E, L, sxl, sil, W, HAS_INIT, MASKED, E, G)
    dy = load_row_parts(dout_row, dout_row, d_mask, s0, L, sgl, 0, W, False, MASKED, E, G)
    dyn = load_row_parts(dout_row, dout_row, d_mask, s0 + E, L, sgl, 0, W, False, MASKED, E, G)
    if W - 1 > E:
        q = load_row_parts(x_row, init_row, d_mask, s0 - 2 * E, L, sxl, sil, W, HAS_INIT, MASKED, E, G)
        m = load_row_parts(x_row, init_row, d_mask, s0 + 2 * E, L, sxl, sil, W, HAS_INIT, MASKED, E, G)
        dym = load_row_parts(dout_row, dout_row, d_mask, s0 + 2 * E, L, sgl, 0, W, False, MASKED, E, G)
    else:
        q, m, dym = p, n, dyn
    acc = tl.zeros(c[0].shape, dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    # parts of gn / gm that no window reaches are never used: the compiler drops their arithmetic and loads
    g = _grad_parts(dy, conv_parts(acc, w, c, p, q, E, W, False), SILU)
    gn = _grad_parts(dyn, conv_parts(acc, w, n, c, p, E, W, False), SILU)
    if W - 1 > E:
        gm = _grad_parts(dym, conv_parts(acc, w, m, n, c, E, W, False), SILU)
    else:
        gm = gn
    g_sum = g[0]  # the parts summed first: one reduction of the tile, as for dweight
    for e in tl.static_range(1, E):
        g_sum += g[e]
    db += tl.sum(g_sum, axis=1)[:, None]
    dx = _packed_dx_parts(w, g, gn, gm, E, W)
    positions = row_positions(s0, E, G)
    for e in tl.static_range(E):
        if MASKED:
            tl.store(dx_row + positions[e] * sdl, dx[e].to(dx_row.dtype.element_ty), mask=d_mask & (positions[e] < L))
        else:
            tl.store(dx_row + positions[e] * sdl, dx[e].to(dx_row.dtype.element_ty))
    dw = _packed_dw_and_init(dw, c, g, gn, gm, x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dinit_row, d,
                             d_mask, s0, L, sxl, swk, sil, ssl, sgl, sjl, E, W, W_PAD, INIT_PAD, HAS_BIAS, HAS_INIT,
                             SILU)
    return dw, db


@triton.jit
def _bwd_tile(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row, scr_row, d, d_mask,
              s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, scr_l, dw, db,
              W: tl.constexpr, W_PAD: tl.constexpr, INIT_PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
              HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, MASKED: tl.constexpr,
              PACK_E: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    if ROWS:
        dw, db = _bwd_tile_rows(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row, d, d_mask,
                                s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, dw, db, W, W_PAD, INIT_PAD, HAS_BIAS,
                                HAS_INIT, SILU, MASKED, PACK_E, BLOCK_L)
    elif PACK_E > 0:
        dw, db = _bwd_tile_packed(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row, d,
                                  d_mask, s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, dw, db, W, W_PAD, INIT_PAD,
                                  HAS_BIAS, HAS_INIT, SILU, MASKED, PACK_E, BLOCK_D, BLOCK_L)
    else:
        dw, db = _bwd_tile_scratch(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row,
                                   scr_row, d, d_mask, s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, scr_l, dw, db,
                                   W, W_PAD, INIT_PAD, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, BLOCK_L, MASKED)
    return dw, db


@triton.jit
def _bwd_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, dout_ptr, dx_ptr, dinit_ptr, parts_ptr, scr_ptr,
                D, L, n_dblk, n_ltiles, n_lchunks, tiles_per_chunk, n_units, n_programs,
                sxb, sxd, sxl, swd, swk, sib, sid, sil, ssb, ssl, sgb, sgd, sgl, sdb, sdd, sdl, sjb, sjd, sjl,
                scr_d, scr_l,
                W: tl.constexpr, W_PAD: tl.constexpr, INIT_PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
                HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, EVEN_D: tl.constexpr,
                PACK_E: tl.constexpr, ROWS: tl.constexpr, BACK: tl.constexpr, AHEAD: tl.constexpr,
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
                                       W, W_PAD, INIT_PAD, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, False, PACK_E, ROWS,
                                       BLOCK_D, BLOCK_L)
                else:
                    dw, db = _bwd_tile(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row,
                                       scr_row, d, d_mask, s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, scr_l, dw, db,
                                       W, W_PAD, INIT_PAD, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, True, PACK_E, ROWS,
                                       BLOCK_D, BLOCK_L)
            else:
                dw, db = _bwd_tile(x_row, w_row, bias_ptr, seq_row, init_row, dout_row, dx_row, dinit_row,
                                   scr_row, d, d_mask, s0, L, sxl, swk, sil, ssl, sgl, sdl, sjl, scr_l, dw, db,
                                   W, W_PAD, INIT_PAD, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU, True, PACK_E, ROWS,
                                   BLOCK_D, BLOCK_L)
        part = parts_ptr + (b * n_lchunks + lchunk) * (D * (W + 1))  # this unit's dweight (D, W), then dbias (D,)
        tl.store(part + d * W + kk, dw, mask=d_mask & (kk < W))
        tl.store(part + D * W + d, db, mask=d_mask)
