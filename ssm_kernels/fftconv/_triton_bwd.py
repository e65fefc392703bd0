"""Backward kernel of the Triton fftconv: one program per (head, pair of batch rows), like the forward.

With g = dy * post (dy without it) and v = u * pre, packed two rows per complex sequence (G, V their spectra,
K the kernel's), per spectrum chunk:
    dv   = IFFT(G conj(K))          the correlation of g with k (+ D g after the loop)
    dk   = Re IFFT(G conj(V))       sum over the pair of the correlation of g with v: Re((g_a + i g_b)
                                    conj(v_a + i v_b)) = g_a v_a + g_b v_b, so the two rows add up, not mix;
                                    causal taps at lags j < Lk, anti-causal tap j at circular lag N - 1 - j
    conv = IFFT(V K)                (only with a postgate: dpost = dy (conv + D v))
then du = dv * pre, dpre = dv * u. dk and dD come out per program ((pairs, 1 or 2, H, Lk) and (pairs, H)
fp32 partials) and are summed by torch: no atomics, reproducible.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._triton_fwd import load_pair, positions, store_pair
from ._triton_monarch import (add_inverse_rows, add_inverse_rows_real, complex_operand, load_f2, load_planes,
                              spectrum_rows)


@triton.jit
def _fftconv_bwd_kernel(
    dy, s_gb, s_gh, s_gl, u, s_ub, s_uh, s_ul, pre, s_pb, s_ph, s_pl, post, s_qb, s_qh, s_ql,
    du, s_db, s_dh, s_dl, dpre, s_eb, s_eh, s_el, dpost, s_fb, s_fh, s_fl,
    dskip_part, dk_part, skip, spectrum, f1, f2, tw, batch, n_pairs, heads, length, taps,
    HAS_SKIP: tl.constexpr, HAS_PRE: tl.constexpr, HAS_POST: tl.constexpr, BIDIRECTIONAL: tl.constexpr,
    N1: tl.constexpr, N2: tl.constexpr, CHUNK: tl.constexpr, OPERANDS: tl.constexpr,
):
    pid = tl.program_id(0)
    pair, h = pid % n_pairs, pid // n_pairs
    t, cols = positions(N1, N2)
    va, vb = load_pair(u, s_ub, s_uh, s_ul, pair, h, t, length, batch)
    if HAS_PRE:
        pa, pb = load_pair(pre, s_pb, s_ph, s_pl, pair, h, t, length, batch)
        va, vb = va * pa, vb * pb
    ga, gb = load_pair(dy, s_gb, s_gh, s_gl, pair, h, t, length, batch)
    if HAS_POST:
        qa, qb = load_pair(post, s_qb, s_qh, s_ql, pair, h, t, length, batch)
        ga, gb = ga * qa, gb * qb
    xa, xb, neg_xb = complex_operand(va, vb, OPERANDS)
    ya, yb, neg_yb = complex_operand(ga, gb, OPERANDS)
    f2r, f2i, neg_f2i = load_f2(f2, N2, OPERANDS)

    K_ROWS: tl.constexpr = N1 if BIDIRECTIONAL else N1 // 2  # the anti-causal taps sit at the far end
    inv_n: tl.constexpr = 1.0 / (N1 * N2)
    dv_r = tl.zeros((N1 // 2, N2), dtype=tl.float32)
    dv_i = tl.zeros((N1 // 2, N2), dtype=tl.float32)
    conv_r = tl.zeros((N1 // 2, N2), dtype=tl.float32)
    conv_i = tl.zeros((N1 // 2, N2), dtype=tl.float32)
    dk = tl.zeros((K_ROWS, N2), dtype=tl.float32)
    kernel = spectrum + h.to(tl.int64) * (2 * N1 * N2)
    for k0 in range(0, N1, CHUNK):
        gr, gi = spectrum_rows(ya, yb, neg_yb, k0, f1, f2r, f2i, neg_f2i, tw, N1, N2, CHUNK, OPERANDS)
        vr, vi = spectrum_rows(xa, xb, neg_xb, k0, f1, f2r, f2i, neg_f2i, tw, N1, N2, CHUNK, OPERANDS)
        kr, ki = load_planes(kernel, k0 + tl.arange(0, CHUNK), cols, N2, N1 * N2)
        dv_r, dv_i = add_inverse_rows(gr * kr + gi * ki, gi * kr - gr * ki, k0, dv_r, dv_i, f1, f2r, f2i,
                                      neg_f2i, tw, N1, N2, CHUNK, N1 // 2, OPERANDS)
        dk = add_inverse_rows_real((gr * vr + gi * vi) * inv_n, (gi * vr - gr * vi) * inv_n, k0, dk, f1, f2r, f2i,
                                   neg_f2i, tw, N1, N2, CHUNK, K_ROWS, OPERANDS)
        if HAS_POST:
            conv_r, conv_i = add_inverse_rows(vr * kr - vi * ki, vr * ki + vi * kr, k0, conv_r, conv_i, f1, f2r,
                                              f2i, neg_f2i, tw, N1, N2, CHUNK, N1 // 2, OPERANDS)

    if HAS_SKIP:
        d = tl.load(skip + h).to(tl.float32)
        dv_r, dv_i = dv_r + d * ga, dv_i + d * gb
        conv_r, conv_i = conv_r + d * va, conv_i + d * vb
        tl.store(dskip_part + pair.to(tl.int64) * heads + h, tl.sum(tl.sum(ga * va + gb * vb, axis=1), axis=0))
    if HAS_POST:
        dya, dyb = load_pair(dy, s_gb, s_gh, s_gl, pair, h, t, length, batch)
        store_pair(dpost, s_fb, s_fh, s_fl, pair, h, t, length, batch, dya * conv_r, dyb * conv_i, OPERANDS)
    if HAS_PRE:
        ua, ub = load_pair(u, s_ub, s_uh, s_ul, pair, h, t, length, batch)
        store_pair(dpre, s_eb, s_eh, s_el, pair, h, t, length, batch, dv_r * ua, dv_i * ub, OPERANDS)
        dv_r, dv_i = dv_r * pa, dv_i * pb
    store_pair(du, s_db, s_dh, s_dl, pair, h, t, length, batch, dv_r, dv_i, OPERANDS)

    lag = tl.arange(0, K_ROWS)[:, None] * N2 + cols[None, :]
    sides: tl.constexpr = 2 if BIDIRECTIONAL else 1
    row = dk_part + ((pair.to(tl.int64) * sides) * heads + h) * taps
    tl.store(row + lag, dk, mask=lag < taps)
    if BIDIRECTIONAL:  # tap j of the anti-causal kernel weighs v_{t+1+j}: circular lag N - 1 - j
        tap = N1 * N2 - 1 - lag
        tl.store(row + heads * taps + tap, dk, mask=tap < taps)
