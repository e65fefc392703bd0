"""Forward kernel of the Triton fftconv, and the tile loads / stores both kernels share.

A program owns one head h and two batch rows of it (2 pair, 2 pair + 1; the second masked off when B is odd),
which travel as the real and imaginary parts of one complex sequence: with a real kernel k,
conv(v_a + i v_b, k) = conv(v_a, k) + i conv(v_b, k), so one complex transform serves two rows. Each sequence is
an (N1 / 2, N2) tile of positions t = N2 r + c (see _triton_monarch.py); the gates and D act on the same tiles.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._triton_monarch import (add_inverse_rows, complex_operand, load_f2, load_planes, round_to_bf16,
                              spectrum_rows)


@triton.jit
def positions(N1: tl.constexpr, N2: tl.constexpr):
    """The (N1 / 2, N2) tile of positions t = N2 r + c and its columns c."""
    cols = tl.arange(0, N2)
    return tl.arange(0, N1 // 2)[:, None] * N2 + cols[None, :], cols


@triton.jit
def load_pair(ptr, s_b, s_h, s_l, pair, h, t, length, batch):
    """Rows (2 pair, h) and (2 pair + 1, h) of a (B, H, L) tensor at positions t, in fp32 (zeros outside)."""
    b0 = 2 * pair.to(tl.int64)
    base = ptr + h.to(tl.int64) * s_h + t.to(tl.int64) * s_l
    a = tl.load(base + b0 * s_b, mask=t < length, other=0.0).to(tl.float32)
    b = tl.load(base + (b0 + 1) * s_b, mask=t < _second_row_length(b0, length, batch), other=0.0)
    return a, b.to(tl.float32)


@triton.jit
def _second_row_length(b0, length, batch):
    """L, or 0 when the pair's second row is past the batch (odd B)."""
    return tl.where(b0 + 1 < batch, length, 0)


@triton.jit
def store_pair(ptr, s_b, s_h, s_l, pair, h, t, length, batch, a, b, OPERANDS: tl.constexpr):
    """Stores a and b where load_pair reads them; in the interpreter (OPERANDS 2) bf16 values are rounded to
    nearest by hand first, as the GPU's conversion does (the interpreter's truncates)."""
    if OPERANDS == 2:
        if ptr.dtype.element_ty == tl.bfloat16:
            a, b = round_to_bf16(a), round_to_bf16(b)
    b0 = 2 * pair.to(tl.int64)
    base = ptr + h.to(tl.int64) * s_h + t.to(tl.int64) * s_l
    tl.store(base + b0 * s_b, a.to(ptr.dtype.element_ty), mask=t < length)
    tl.store(base + (b0 + 1) * s_b, b.to(ptr.dtype.element_ty), mask=t < _second_row_length(b0, length, batch))


@triton.jit
def _fftconv_fwd_kernel(
    u, s_ub, s_uh, s_ul, pre, s_pb, s_ph, s_pl, post, s_qb, s_qh, s_ql, y, s_yb, s_yh, s_yl,
    skip, spectrum, f1, f2, tw, batch, n_pairs, length,
    HAS_SKIP: tl.constexpr, HAS_PRE: tl.constexpr, HAS_POST: tl.constexpr,
    N1: tl.constexpr, N2: tl.constexpr, CHUNK: tl.constexpr, OPERANDS: tl.constexpr,
):
    """y = (conv(v, k) + D v) * post, v = u * pre, for one head and two batch rows. spectrum: (H, 2, N1, N2)
    fp32, the kernel's DFT divided by N at [k1, k2]."""
    pid = tl.program_id(0)
    pair, h = pid % n_pairs, pid // n_pairs  # neighbouring programs share the head's spectrum in L2
    t, cols = positions(N1, N2)
    va, vb = load_pair(u, s_ub, s_uh, s_ul, pair, h, t, length, batch)
    if HAS_PRE:
        pa, pb = load_pair(pre, s_pb, s_ph, s_pl, pair, h, t, length, batch)
        va, vb = va * pa, vb * pb
    xa, xb, neg_xb = complex_operand(va, vb, OPERANDS)
    f2r, f2i, neg_f2i = load_f2(f2, N2, OPERANDS)
    acc_r = tl.zeros((N1 // 2, N2), dtype=tl.float32)
    acc_i = tl.zeros((N1 // 2, N2), dtype=tl.float32)
    kernel = spectrum + h.to(tl.int64) * (2 * N1 * N2)
    for k0 in range(0, N1, CHUNK):
        zr, zi = spectrum_rows(xa, xb, neg_xb, k0, f1, f2r, f2i, neg_f2i, tw, N1, N2, CHUNK, OPERANDS)
        kr, ki = load_planes(kernel, k0 + tl.arange(0, CHUNK), cols, N2, N1 * N2)
        acc_r, acc_i = add_inverse_rows(zr * kr - zi * ki, zr * ki + zi * kr, k0, acc_r, acc_i, f1, f2r, f2i,
                                        neg_f2i, tw, N1, N2, CHUNK, N1 // 2, OPERANDS)
    if HAS_SKIP:
        d = tl.load(skip + h).to(tl.float32)
        acc_r, acc_i = acc_r + d * va, acc_i + d * vb
    if HAS_POST:
        qa, qb = load_pair(post, s_qb, s_qh, s_ql, pair, h, t, length, batch)
        acc_r, acc_i = acc_r * qa, acc_i * qb
    store_pair(y, s_yb, s_yh, s_yl, pair, h, t, length, batch, acc_r, acc_i, OPERANDS)
