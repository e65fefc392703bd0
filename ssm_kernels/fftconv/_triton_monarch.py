"""The DFT machinery of the Triton fftconv kernels: a length-N DFT as two small DFT-matrix products on tensor
cores with a twiddle between them (Cooley-Tukey written as Monarch matrices), walked CHUNK spectrum rows at a
time so that the (N1, N2) complex spectrum of a sequence never exists whole, in registers or in memory.

Layout. N = N1 * N2. Time index n = N2 n1 + n2 puts a sequence in an (N1, N2) tile [n1, n2] (row-major, so
loads are contiguous); frequency index k = k1 + N1 k2 lands at [k1, k2]:
    X[k1, k2] = sum_n2 F2[n2, k2] T[k1, n2] sum_n1 F1[k1, n1] x[n1, n2]
with F_m[a, b] = exp(-2 pi i a b / m) (symmetric) and T[k1, n2] = exp(-2 pi i k1 n2 / N). Each spectrum row
k1 depends on all of x but on nothing else of the spectrum, and the inverse
    x[n1, n2] = sum_k1 conj(F1)[n1, k1] conj(T)[k1, n2] sum_k2 X[k1, k2] conj(F2)[k2, n2]   (times N)
is a sum over k1 of row contributions, so forward, pointwise product and inverse run one CHUNK of k1 rows at
a time, accumulating the inverse into an (OUT_ROWS, N2) tile.

Convolutions here zero-pad to N >= 2L: the input occupies rows n1 < N1 / 2 (so the first product reads only
half of F1's columns) and the outputs a caller needs are rows n1 < N1 / 2 too (OUT_ROWS = N1 / 2; the
anti-causal kernel gradient needs the far end of the circular correlation, OUT_ROWS = N1).

Every transform is complex: two real sequences of the same head travel as the real and imaginary parts of one
(a real kernel keeps them apart; see the kernels). Tables are (2, rows, cols) planes (real, imaginary),
contiguous: the DFT matrices in the dots' operand dtype, the twiddles fp32. F2 and the input tile are the same
for every chunk: a program converts them to dot operands once. Dot operands are bf16 (OPERANDS) or fp32
through three tf32 products (tf32x3, close to fp32); accumulation and the twiddles are fp32.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import triton
import triton.language as tl

from .._utils import next_power_of_2
from ._common import unit_roots

OPERANDS_TF32X3, OPERANDS_BF16, OPERANDS_BF16_EMULATED = 0, 1, 2  # the OPERANDS constexpr of the kernels
_TABLES: Dict[tuple, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _phase_table(rows: int, cols: int, n: int) -> torch.Tensor:
    """(2, rows, cols) fp32: cos and sin of -2 pi (r c mod n) / n, from exact integer phases in fp64."""
    phase = torch.outer(torch.arange(rows, dtype=torch.int64), torch.arange(cols, dtype=torch.int64))
    return unit_roots(phase, n).movedim(-1, 0).to(torch.float32).contiguous()  # planes: the kernels index them


def dft_tables(n1: int, n2: int, device: torch.device, operands: int
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(F1 (2, N1, N1), F2 (2, N2, N2), T (2, N1, N2)) on device, built once per size, device and operand
    mode: the DFT matrices already in the dots' operand dtype (bf16 for bf16 operands: half the loads, no
    conversion in the kernel), the twiddles fp32 (they scale fp32 values)."""
    key = (n1, n2, device, operands)
    if key not in _TABLES:
        matrix_dtype = torch.float32 if operands == OPERANDS_TF32X3 else torch.bfloat16
        f1, f2 = (_phase_table(n, n, n).to(device, matrix_dtype) for n in (n1, n2))
        _TABLES[key] = (f1, f2, _phase_table(n1, n2, n1 * n2).to(device))
    return _TABLES[key]


def fft_shape(length: int, min_points: int) -> Tuple[int, int]:
    """(N1, N2) of the transform for sequences of `length`: N = N1 N2 the power of two >= max(2 L, min_points),
    N1 = 2^ceil(log2(N) / 2) >= N2 (N1 / 2 >= 16 rows: tensor-core dots need dimensions of 16)."""
    points = max(min_points, next_power_of_2(2 * length))
    n1 = 1 << (points.bit_length() // 2)  # 2^ceil(log2(N) / 2)
    return n1, points // n1


def operand_mode(dtype: torch.dtype, device: torch.device) -> int:
    """bf16 operands for bf16 inputs, tf32x3 for fp32 / fp16 inputs. The CPU interpreter of Triton 3.9
    multiplies bf16 tensors as integers and truncates fp32 to bf16: there bf16 operands are rounded to
    nearest-even by hand and multiplied in fp32 (the same values as on the GPU)."""
    if dtype != torch.bfloat16:
        return OPERANDS_TF32X3
    return OPERANDS_BF16_EMULATED if device.type == "cpu" else OPERANDS_BF16


@triton.jit
def round_to_bf16(x):
    """fp32 x rounded to the nearest bf16 (ties to even), still fp32 (finite x)."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def dot_operand(x, OPERANDS: tl.constexpr):
    """x as the dots take it (x may already be: a DFT table tile loaded in the operand dtype)."""
    if OPERANDS == 1:
        return x.to(tl.bfloat16)
    elif OPERANDS == 2:
        return round_to_bf16(x.to(tl.float32))
    else:
        return x


@triton.jit
def _mm(a, b, acc, OPERANDS: tl.constexpr):
    a, b = dot_operand(a, OPERANDS), dot_operand(b, OPERANDS)
    if OPERANDS == 0:
        return tl.dot(a, b, acc, input_precision="tf32x3")
    else:  # bf16 operands; in the interpreter fp32 ones holding bf16 values
        return tl.dot(a, b, acc, input_precision="ieee" if OPERANDS == 2 else None)


@triton.jit
def cmatmul(ar, ai, br, bi, neg_bi, cr, ci, OPERANDS: tl.constexpr):
    """(cr + i ci) + (ar + i ai) @ (br + i bi), four real dots; neg_bi = -bi (b is loop-invariant where this
    is called, so its negation is made once)."""
    cr = _mm(ar, br, cr, OPERANDS)
    cr = _mm(ai, neg_bi, cr, OPERANDS)
    ci = _mm(ar, bi, ci, OPERANDS)
    ci = _mm(ai, br, ci, OPERANDS)
    return cr, ci


@triton.jit
def load_planes(table, rows, cols, ROW_STRIDE: tl.constexpr, PLANE: tl.constexpr):
    """(real, imaginary) tiles table[0 / 1, rows, cols] of a contiguous (2, R, ROW_STRIDE) table."""
    offsets = rows[:, None] * ROW_STRIDE + cols[None, :]
    return tl.load(table + offsets), tl.load(table + PLANE + offsets)


@triton.jit
def complex_operand(xr, xi, OPERANDS: tl.constexpr):
    """(xr, xi, -xi) as dot operands: a loop-invariant right-hand factor of cmatmul, converted once (negated
    after the conversion: the interpreter negates a bf16 tile's bit pattern as an integer)."""
    xr, xi = dot_operand(xr, OPERANDS), dot_operand(xi, OPERANDS)
    return xr, xi, -xi


@triton.jit
def load_f2(f2, N2: tl.constexpr, OPERANDS: tl.constexpr):
    """F2 (N2, N2) as (real, imaginary, -imaginary) dot operands, loaded once per program: every chunk's
    forward and inverse step along k2 multiplies by it (by its conjugate (real, -imaginary) going back)."""
    cols = tl.arange(0, N2)
    gr, gi = load_planes(f2, cols, cols, N2, N2 * N2)
    return complex_operand(gr, gi, OPERANDS)


@triton.jit
def spectrum_rows(xr, xi, neg_xi, k0, f1, gr, gi, neg_gi, tw, N1: tl.constexpr, N2: tl.constexpr,
                  CHUNK: tl.constexpr, OPERANDS: tl.constexpr):
    """Rows k1 in [k0, k0 + CHUNK) of the DFT of x (the (N1 / 2, N2) tile xr + i xi, with -xi, as dot
    operands; rows beyond are zero), F2 as load_f2 gives it: the (CHUNK, N2) tiles (real, imaginary) of
    X[k1, k2]."""
    kk = k0 + tl.arange(0, CHUNK)
    cols = tl.arange(0, N2)
    fr, fi = load_planes(f1, kk, tl.arange(0, N1 // 2), N1, N1 * N1)
    zero = tl.zeros((CHUNK, N2), dtype=tl.float32)
    br, bi = cmatmul(fr, fi, xr, xi, neg_xi, zero, zero, OPERANDS)
    tr, ti = load_planes(tw, kk, cols, N2, N1 * N2)
    cr, ci = br * tr - bi * ti, br * ti + bi * tr
    return cmatmul(cr, ci, gr, gi, neg_gi, zero, zero, OPERANDS)


@triton.jit
def _inverse_row_terms(yr, yi, k0, gr, gi, neg_gi, tw, N1: tl.constexpr, N2: tl.constexpr,
                       CHUNK: tl.constexpr, OPERANDS: tl.constexpr):
    """(hr, hi): spectrum rows [k0, k0 + CHUNK) of y, transformed along k2 (times conj(F2)) and multiplied by
    conj(T): what the last product (with conj(F1)) turns into time-domain rows."""
    kk = k0 + tl.arange(0, CHUNK)
    cols = tl.arange(0, N2)
    zero = tl.zeros((CHUNK, N2), dtype=tl.float32)
    er, ei = cmatmul(yr, yi, gr, neg_gi, gi, zero, zero, OPERANDS)
    tr, ti = load_planes(tw, kk, cols, N2, N1 * N2)
    return er * tr + ei * ti, ei * tr - er * ti


@triton.jit
def add_inverse_rows(yr, yi, k0, acc_r, acc_i, f1, gr, gi, neg_gi, tw, N1: tl.constexpr, N2: tl.constexpr,
                     CHUNK: tl.constexpr, OUT_ROWS: tl.constexpr, OPERANDS: tl.constexpr):
    """acc + the contribution of spectrum rows [k0, k0 + CHUNK) (the (CHUNK, N2) tiles yr + i yi) to the
    unnormalised inverse DFT, rows n1 < OUT_ROWS of the time tile: (OUT_ROWS, N2) (real, imaginary)."""
    hr, hi = _inverse_row_terms(yr, yi, k0, gr, gi, neg_gi, tw, N1, N2, CHUNK, OPERANDS)
    fr, fi = load_planes(f1, tl.arange(0, OUT_ROWS), k0 + tl.arange(0, CHUNK), N1, N1 * N1)  # F1 is symmetric
    # conj(F1) h: real fr hr + fi hi, imaginary fr hi - fi hr
    acc_r = _mm(fr, hr, acc_r, OPERANDS)
    acc_r = _mm(fi, hi, acc_r, OPERANDS)
    acc_i = _mm(fr, hi, acc_i, OPERANDS)
    acc_i = _mm(fi, -hr, acc_i, OPERANDS)
    return acc_r, acc_i


@triton.jit
def add_inverse_rows_real(yr, yi, k0, acc, f1, gr, gi, neg_gi, tw, N1: tl.constexpr, N2: tl.constexpr,
                          CHUNK: tl.constexpr, OUT_ROWS: tl.constexpr, OPERANDS: tl.constexpr):
    """add_inverse_rows' real part only: Re(conj(F1) h) = F1r hr + F1i hi, two dots instead of four."""
    hr, hi = _inverse_row_terms(yr, yi, k0, gr, gi, neg_gi, tw, N1, N2, CHUNK, OPERANDS)
    fr, fi = load_planes(f1, tl.arange(0, OUT_ROWS), k0 + tl.arange(0, CHUNK), N1, N1 * N1)
    acc = _mm(fr, hr, acc, OPERANDS)
    return _mm(fi, hi, acc, OPERANDS)
