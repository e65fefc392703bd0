"""Elementwise math shared by the Triton kernels (imported by the Triton backends only).

softplus is the dt activation of Mamba-1 / Mamba-2: the selective scan evaluates it once per (channel, position)
in its forward and twice in its backward (Δ_t and Δ_(t+1)); as log(1 + e) with the w - 1 correction (a precise
exp, a precise log and a precise division, ~40 instructions on sm_90) it was about a fifth of the scan's loop
instructions. Here softplus(x) = max(x, 0) + log1p(exp(-|x|)) with log1p(e) = 2 atanh(e / (2 + e)) as an odd series:
e = exp(-|x|) is in (0, 1], so s = e / (2 + e) <= 1/3 and seven terms of 2 (s + s^3/3 + s^5/5 + ...) leave a
relative error below 9^-7 / 15 = 1.4e-8, under fp32's 6e-8; every step keeps relative errors relative, so with
an approximate exp2 (2**-22) and an approximate division softplus is good to a few ulp beyond the fp32 rounding
of |x| log2(e) (relative |x| 2**-24 in e, as in tl.exp's own lowering on GPUs; the log(1 + e) form lost more,
for small e, to lg2.approx's absolute error near 1). No threshold: above 20 the series term is below x's ulp,
so the result rounds to x as torch's softplus returns it.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def exp2(x, FAST: tl.constexpr):
    """2**x. FAST (native GPU runs): one ex2.approx.ftz (rel. error ~2**-22, results below 2**-126 flush to
    0); otherwise tl.exp2 (the interpreter has no inline PTX)."""
    if FAST:
        y = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        y = tl.exp2(x)
    return y


@triton.jit
def _log1p_unit(e):
    """log(1 + e) for 0 <= e <= 1 (see the module docstring)."""
    two_s = e * tl.fdiv(2.0, 2.0 + e, ieee_rounding=False)  # 2 s, never below e (no denormal s for tiny e)
    t = 0.25 * two_s * two_s
    p = t * (1.0 / 13.0) + 1.0 / 11.0
    p = p * t + 1.0 / 9.0
    p = p * t + 1.0 / 7.0
    p = p * t + 1.0 / 5.0
    p = p * t + 1.0 / 3.0
    p = p * t + 1.0
    return two_s * p


@triton.jit
def softplus_and_sigmoid(x, FAST: tl.constexpr):
    """(softplus(x), sigmoid(x)) of fp32 x, the activation and its derivative from one exponential."""
    e = exp2(-tl.abs(x) * LOG2E, FAST)
    r = tl.fdiv(1.0, 1.0 + e, ieee_rounding=False)
    return tl.maximum(x, 0.0) + _log1p_unit(e), tl.where(x >= 0.0, r, e * r)


@triton.jit
def softplus(x, FAST: tl.constexpr):
    """log(1 + exp(x)) of fp32 x, accurate for every x (see the module docstring); the compiler drops the
    sigmoid that softplus_and_sigmoid also returns."""
    sp, _ = softplus_and_sigmoid(x, FAST)
    return sp
