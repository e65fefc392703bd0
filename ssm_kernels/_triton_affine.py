"""Composition of affine maps x -> a x + b for tl.associative_scan (imported by the Triton backends only).

Applying (a1, b1) then (a2, b2) is x -> a2 (a1 x + b1) + b2 = (a1 a2) x + (a2 b1 + b2): an inclusive scan of
the pairs gives the state of a first-order linear recurrence at every position from a zero start, with the
product of the gates alongside (the factor on the entering state). Complex values come as (re, im) pairs.
"""
import triton
import triton.language as tl  # noqa: F401 (the interpreter looks for it in every jit function's module)


@triton.jit
def combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def combine_complex(a1r, a1i, b1r, b1i, a2r, a2i, b2r, b2i):
    return (a1r * a2r - a1i * a2i, a1r * a2i + a1i * a2r,
            a2r * b1r - a2i * b1i + b2r, a2r * b1i + a2i * b1r + b2i)


@triton.jit
def combine_with_exclusive(a1, b1, e_a1, e_b1, a2, b2, e_a2, e_b2):
    """Scan element (map of a segment, map of the segment without its last element): a scan of
    (a_t, b_t, 1, 0) gives at t the composition of the maps before t (an exclusive scan in one pass: Triton
    has no shift)."""
    # combine() of both pairs, written out: the interpreter runs a scan's combine once per element, and a nested
    # call costs it as much again
    return a1 * a2, a2 * b1 + b2, a1 * e_a2, e_a2 * b1 + e_b2


@triton.jit
def combine_folded(x1, p1, f1, x2, p2, f2):
    """Scan element (x, p, f) of a recurrence whose gate sits on the step out of a position: the value at a
    position is x + p c (c entering it) and f times that value leaves it. The adjoint scan reads its gates this
    way, each from its own position instead of its neighbour's (no shifted load):
    (x1, p1, f1) then (x2, p2, f2) = (x2 + p2 f1 x1, p2 f1 p1, f2)."""
    q = p2 * f1
    return x2 + q * x1, q * p1, f2


@triton.jit
def combine_folded_complex(x1r, x1i, p1r, p1i, f1r, f1i, x2r, x2i, p2r, p2i, f2r, f2i):
    qr = p2r * f1r - p2i * f1i
    qi = p2r * f1i + p2i * f1r
    return (x2r + qr * x1r - qi * x1i, x2i + qr * x1i + qi * x1r,
            qr * p1r - qi * p1i, qr * p1i + qi * p1r, f2r, f2i)
