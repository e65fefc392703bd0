"""Forward kernel of the Triton causal_conv1d, and the tile loads and tap arithmetic the backward shares.

Forward, grid (cdiv(L, BLOCK_L * tiles_per_program), cdiv(D, BLOCK_D), B): per tile
y[t] = act(bias + sum_k w_k xp[t + k - W + 1]). The k = W-1 tap is the aligned (vectorised) DRAM read of the
tile. Channel-first without seq_idx (the packed path): the tile is also read shifted back by one 16-byte vector
of E elements (L1 hits, aligned), both are split into their E interleaved parts (register moves: one thread
holds a vector) and each shifted tap is a part of the current or the previous group. Otherwise the W-1
shifted taps are unaligned re-reads of the same lines (L1 hits; channel-last taps are whole rows, aligned).
Positions < 0 come from initial_states by a second masked load, seq_idx drops taps that cross a sequence
boundary. Tiles away from the edges (and D a multiple of BLOCK_D) take an unmasked path. Nothing is stored
for backward but the inputs.

Parts are tuples: the E parts of a tile (E tensors (BLOCK_D, BLOCK_L // E)), the W weight columns; a tuple is
indexed by a compile-time position, so picking a tap is a register reference. Channel-first parts are the
elements of one thread's vector (unpack); channel-last ones are sets of rows loaded apart (load_row_parts), each
row a coalesced load, which the backward uses the same way.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_xp(x_row, init_row, d_mask, pos, L, sxl, sil, W: tl.constexpr, HAS_INIT: tl.constexpr,
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
def load_seq(seq_row, pos, L, ssl, MASKED: tl.constexpr):
    """Sequence id at positions pos (positions < 0 continue the first token's sequence)."""
    if MASKED:
        return tl.load(seq_row + tl.minimum(tl.maximum(pos, 0), L - 1) * ssl)
    return tl.load(seq_row + pos * ssl)


@triton.jit
def pre_activation(x_row, w_row, bias_ptr, seq_row, init_row, d, d_mask, t, L, sxl, swk, sil, ssl,
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
        seq_t = load_seq(seq_row, t, L, ssl, MASKED)
    for k in tl.static_range(W):
        pos = t + (k - (W - 1))
        v = load_xp(x_row, init_row, d_mask, pos, L, sxl, sil, W, HAS_INIT, MASKED)
        if k == W - 1:
            x_t = v
        elif HAS_SEQ:
            v = tl.where(load_seq(seq_row, pos, L, ssl, MASKED) == seq_t, v, 0.0)
        a += tl.load(w_row + k * swk, mask=d_mask, other=0.0).to(tl.float32) * v
    return a, x_t


@triton.jit
def unpack(v, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, E: tl.constexpr):
    """The E interleaved parts (v[:, E g + e] for e = 0 .. E-1, each (BLOCK_D, BLOCK_L // E)) of a tile, as a
    tuple. The E elements of a group are one thread's 16-byte vector, so the reshape / split are register
    moves."""
    if E == 8:
        v = tl.reshape(v, (BLOCK_D, BLOCK_L // 8, 2, 2, 2))  # e = 4 a + 2 b + c
        c0, c1 = tl.split(v)
        c0b0, c0b1 = tl.split(c0)
        c1b0, c1b1 = tl.split(c1)
        e0, e4 = tl.split(c0b0)
        e2, e6 = tl.split(c0b1)
        e1, e5 = tl.split(c1b0)
        e3, e7 = tl.split(c1b1)
        parts = (e0, e1, e2, e3, e4, e5, e6, e7)
    else:
        v = tl.reshape(v, (BLOCK_D, BLOCK_L // 4, 2, 2))  # e = 2 b + c
        c0, c1 = tl.split(v)
        e0, e2 = tl.split(c0)
        e1, e3 = tl.split(c1)
        parts = (e0, e1, e2, e3)
    return parts


@triton.jit
def pack(parts, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, E: tl.constexpr):
    """The inverse of unpack: (BLOCK_D, BLOCK_L) with v[:, E g + e] = parts[e][:, g]."""
    if E == 8:
        v = tl.join(tl.join(tl.join(parts[0], parts[4]), tl.join(parts[2], parts[6])),
                    tl.join(tl.join(parts[1], parts[5]), tl.join(parts[3], parts[7])))
    else:
        v = tl.join(tl.join(parts[0], parts[2]), tl.join(parts[1], parts[3]))
    return tl.reshape(v, (BLOCK_D, BLOCK_L))


@triton.jit
def tap(i: tl.constexpr, E: tl.constexpr, c, p, q):
    """The part at offset i (-2E <= i < E) from a group's start in a run of three consecutive groups q, p, c
    (oldest first; each a tuple of parts): part i of c (i >= 0), part i + E of p (i >= -E), part i + 2E of q."""
    if i >= 0:
        v = c[i]
    elif i >= -E:
        v = p[i + E]
    else:
        v = q[i + 2 * E]
    return v


@triton.jit
def conv_parts(acc, w, c, p, q, E: tl.constexpr, W: tl.constexpr, SILU: tl.constexpr):
    """The E parts of act(acc + sum_k w[k] xp[t - W + 1 + k]) on a tile t, from the parts of xp on t (c), on
    t - E (p) and on t - 2E (q; only read when W - 1 > E)."""
    outputs = ()
    for e in tl.static_range(E):  # output part e: its tap k is at offset e - (W - 1) + k from the group start
        y = acc
        for k in tl.static_range(W):
            y += w[k] * tap(e - (W - 1) + k, E, c, p, q)
        if SILU:
            y = y / (1.0 + tl.exp(-y))
        outputs = outputs + (y,)
    return outputs


@triton.jit
def packed_conv(acc, w, c, p, q, E: tl.constexpr, W: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_L: tl.constexpr):
    """conv_parts packed into the (BLOCK_D, BLOCK_L) tile. Shared by the forward and by the packed backward's
    recomputation of the pre-activation."""
    return pack(conv_parts(acc, w, c, p, q, E, W, SILU), BLOCK_D, BLOCK_L, E)


@triton.jit
def load_weights(w_row, d_mask, swk, W: tl.constexpr):
    """The W taps of the weight rows (BLOCK_D, 1), fp32, as a tuple."""
    w = ()
    for k in tl.static_range(W):
        w = w + (tl.load(w_row + k * swk, mask=d_mask, other=0.0).to(tl.float32),)
    return w


@triton.jit
def load_parts(x_row, init_row, d_mask, pos, L, sxl, sil, W: tl.constexpr, HAS_INIT: tl.constexpr,
               MASKED: tl.constexpr, E: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """The E parts of xp at the (aligned) positions pos (1, BLOCK_L)."""
    return unpack(load_xp(x_row, init_row, d_mask, pos, L, sxl, sil, W, HAS_INIT, MASKED), BLOCK_D, BLOCK_L, E)


@triton.jit
def row_positions(t0, E: tl.constexpr, G: tl.constexpr):
    """The positions of a tile's E row parts (channel-last): part e at t0 + E g + e, g = 0 .. G-1, (1, G) each."""
    g = tl.arange(0, G)[None, :]
    positions = ()
    for e in tl.static_range(E):
        positions = positions + (t0 + E * g + e,)
    return positions


@triton.jit
def load_row_parts(x_row, init_row, d_mask, t0, L, sxl, sil, W: tl.constexpr, HAS_INIT: tl.constexpr,
                   MASKED: tl.constexpr, E: tl.constexpr, G: tl.constexpr):
    """The E parts of xp on the tile of E G positions from t0 (channel-last: part e holds the rows t0 + E g + e,
    each a load coalesced along D)."""
    positions = row_positions(t0, E, G)
    parts = ()
    for e in tl.static_range(E):
        parts = parts + (load_xp(x_row, init_row, d_mask, positions[e], L, sxl, sil, W, HAS_INIT, MASKED),)
    return parts


@triton.jit
def _fwd_tile_packed(x_row, w_row, bias_ptr, init_row, y_row, d, d_mask, t, L, sxl, swk, sil, syl,
                     W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
                     MASKED: tl.constexpr, E: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """The forward tile with one aligned load per tap group instead of W - 1 unaligned taps: the tile (t) and
    the tile shifted back by E (and 2E when W - 1 > E) positions, aligned 16-byte vectors; the shifted taps are
    picked from their parts in registers (channel-first only, without seq_idx)."""
    c = load_parts(x_row, init_row, d_mask, t, L, sxl, sil, W, HAS_INIT, MASKED, E, BLOCK_D, BLOCK_L)
    p = load_parts(x_row, init_row, d_mask, t - E, L, sxl, sil, W, HAS_INIT, MASKED, E, BLOCK_D, BLOCK_L)
    if W - 1 > E:
        q = load_parts(x_row, init_row, d_mask, t - 2 * E, L, sxl, sil, W, HAS_INIT, MASKED, E, BLOCK_D, BLOCK_L)
    else:
        q = p
    w = load_weights(w_row, d_mask, swk, W)
    acc = tl.zeros(c[0].shape, dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    y = packed_conv(acc, w, c, p, q, E, W, SILU, BLOCK_D, BLOCK_L).to(y_row.dtype.element_ty)
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
        acc, _ = pre_activation(x_row, w_row, bias_ptr, seq_row, init_row, d, d_mask, t, L, sxl, swk, sil, ssl,
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
