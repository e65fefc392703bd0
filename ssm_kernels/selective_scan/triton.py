"""Triton backend of selective_scan (Mamba-1), real and complex A: launchers, autograd wiring, backend function.

Kernels: _triton_fwd.py (forward) and _triton_bwd.py (backward). Both run one program per (batch row, block
of BLOCK_D channels) that walks L in chunks of BLOCK_L positions and, per chunk, loads the group's B / C tiles
once and runs the block's channels one at a time (coalesced rows of u, delta, z; real A scans runs of RUN
positions in registers and only the runs' totals across lanes); per-channel carried values (states,
adjoints, accumulators) stay in registers as (BLOCK_D, N) tensors. The backward walks the chunks in reverse,
recomputes the states from the checkpoints and reverse-scans the adjoint; see the kernels' docstrings.

Saved for the backward: the inputs and the checkpoints (B, ceil(L / BLOCK_L), D, N) fp32 (the state
entering every chunk), never a (B, D, L, N) tensor.

Not supported here (_kernel_supports in __init__.py gives the reason, dispatch falls back to torch): fp64
inputs, and fp64 / complex128 A (the latter once the public function passes that feature to select()).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._autograd import needs_grad
from .._triton_launch import fast_math, launch
from .._utils import cdiv, in_dtype, new_output, next_power_of_2
from ._kernel_io import entering_states, gate_grad_buffer, gradients, real_view, rows_like, seq_markers, state_rows
from ._op_wiring import define_ops
from ._triton_bwd import _selective_scan_bwd_complex_kernel, _selective_scan_bwd_kernel
from ._triton_fwd import _selective_scan_fwd_complex_kernel, _selective_scan_fwd_kernel


# --- block sizes ------------------------------------------------------------------------------------------
# A program owns (batch row, BLOCK_D channels) and walks chunks of BLOCK_L positions, one channel at a time on
# a (BLOCK_N, BLOCK_L) tile. BLOCK_L is the checkpoint spacing: the forward and the backward use the same one
# (from _blocks); their BLOCK_D and num_warps differ (the backward's larger BLOCK_D shrinks its dB / dC
# partials (B, D / BLOCK_D, N, L) fp32). TILE_BUDGET bounds BLOCK_N * BLOCK_L (fp32 elements of one tile):
# large N (e.g. 256) gets shorter chunks; complex A (two tiles per value) halves it.
# H100 sweep (python -m benchmarks tune selective_scan --quick, bf16 (4, 4096, 4096) N16):
# forward 1.31 ms with BLOCK_L 64 / one warp / 16 channels (2.9-4.0 ms with 2-4 warps or BLOCK_L 128-256:
# cross-warp scans cost barriers); forward+backward 11.95 ms with one warp / 32 channels in the backward
# (12.3 with two warps, 17-20 with four warps or 64 channels).
FWD_BLOCK_D = 16
FWD_WARPS = 1
BWD_BLOCK_D = 32
BWD_WARPS = 1
BLOCK_L = 64
TILE_BUDGET = 8192
# Bytes of a run (_run_args): 16, one vectorised load, is the longest run Triton keeps in one thread.
RUN_BYTES = 16
# Fewest programs a launch should have: a program is one warp walking L serially, so a small batch * channels
# (a batch-1 prompt's forward, (1, 2048, 1024): 128 programs of 16 channels on 132 SMs) leaves the SMs one warp
# each with nothing to hide its latency; BLOCK_D halves (down to 1) until the grid reaches this many programs.
MIN_PROGRAMS = 1024
# The backward's dB / dC partials of a variable B / C are (B, D / BLOCK_D, N, L) fp32 each: its channel blocks
# shrink only while each stays within this budget (or within its size at BWD_BLOCK_D), so that one long packed
# sequence (batch 1, L 65536) does not trade gigabytes for speed.
BWD_PARTIALS_BUDGET = 512 * 2**20
# The real backward adds dB / dC with atomics outside torch's deterministic mode (see _atomic_bc).
ATOMIC_BC = True
# Register caps of the kernels (ptxas maxnreg), None: ptxas' choice, which is 216-255 at one warp (8 programs per
# SM, 12.5% occupancy; latency-bound: no eligible warp in 57% of the backward's cycles on the H200). Compiled
# offline for sm_90 (Triton 3.6, bf16 (4, 4096, 4096) constexprs): the forward at BLOCK_L 32 fits 168 without
# spills (12 programs per SM), at 128 with 116 B of spills; the backward spills at any cap (BLOCK_L 32: 72 B
# uncapped, 612 B at 168). Settings for the tuner (benchmarks/tune/selective_scan.py) until measured.
FWD_MAXNREG = None
BWD_MAXNREG = None


def _pow2_divisor(n: int) -> int:
    """The largest power of two dividing n (n >= 1)."""
    return n & -n


def _blocks(batch: int, dim: int, N: int, L: int, cpgs, backward: bool, cplx: bool,
            atomic: bool = False) -> Tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_N, BLOCK_L, num_warps). BLOCK_L (the checkpoint spacing) does not depend on `backward`;
    BLOCK_D divides the channels per group of every variable B / C (`cpgs`), so that a program's channels
    all read one group, and shrinks until the grid (batch, dim / BLOCK_D) has MIN_PROGRAMS programs (in the
    backward with a variable B or C and partials, not `atomic`, while they stay within BWD_PARTIALS_BUDGET)."""
    block_n = next_power_of_2(N)
    budget = TILE_BUDGET // (2 if cplx else 1)
    block_l = max(2, min(BLOCK_L, next_power_of_2(max(L, 1))))
    while block_l > 2 and block_n * block_l > budget:  # large N: shorter chunks
        block_l //= 2
    block_d = min(BWD_BLOCK_D if backward else FWD_BLOCK_D, next_power_of_2(dim))
    for cpg in cpgs:
        block_d = min(block_d, _pow2_divisor(cpg))
    partials = lambda bd: batch * cdiv(dim, bd) * N * L * 4 * (2 if cplx else 1)  # noqa: E731 (bytes of one)
    budget = max(partials(block_d), BWD_PARTIALS_BUDGET) if backward and cpgs and not atomic else None
    while block_d > 1 and batch * cdiv(dim, block_d) < MIN_PROGRAMS:
        if budget is not None and partials(block_d // 2) > budget:
            break
        block_d //= 2
    return block_d, block_n, block_l, BWD_WARPS if backward else FWD_WARPS


def _register_cap(maxnreg) -> dict:
    """Launch option capping the kernel's registers per thread (nothing when None)."""
    return {} if maxnreg is None else dict(maxnreg=maxnreg)


def _run_args(u: Tensor, A: Tensor, lay_B, block_l: int) -> dict:
    """RUN of the real kernels (none for complex A): positions per run of their (RUN, runs, N) tiles,
    RUN_BYTES of the variable B (whose loads set the tiles' layout; u when B is fixed), so that a run is one
    vectorised load in one thread."""
    if A.is_complex():
        return {}
    X = u if lay_B[1] else lay_B[0]
    return dict(RUN=min(block_l, max(1, RUN_BYTES // X.element_size())))


def _bc_layout(X: Tensor, dim: int, cplx: bool):
    """B or C as (tensor to pass, fixed, channels per group, strides (batch, group, n, l) of the grouped view,
    offset of the imaginary part). Complex tensors pass as their real views; real ones with complex A hold
    interleaved (re, im) pairs along a last axis of 2L."""
    if X.is_complex():
        X = torch.view_as_real(X)
        st, im = list(X.stride()[:-1]), 1
    elif cplx:
        st = list(X.stride())
        im = st[-1]
        st[-1] *= 2  # position l starts at element 2 l
    else:
        st, im = list(X.stride()), 0
    if len(st) == 2:
        return X, True, 1, (0, st[0], st[1], 0), im
    if len(st) == 3:
        return X, False, dim, (st[0], 0, st[1], st[2]), im
    return X, False, dim // X.shape[1], tuple(st), im


def _geometry(u: Tensor, A: Tensor, B: Tensor, C: Tensor, backward: bool):
    """Sizes, the layouts of B and C (see _bc_layout) and the block sizes."""
    batch, dim, L = u.shape
    N = A.shape[1]
    cplx = A.is_complex()
    lay_B = _bc_layout(B, dim, cplx)
    lay_C = _bc_layout(C, dim, cplx)
    cpgs = [lay[2] for lay in (lay_B, lay_C) if not lay[1]]
    blocks = _blocks(batch, dim, N, L, cpgs, backward, cplx, atomic=backward and _atomic_bc(A))
    return (batch, dim, L, N), lay_B, lay_C, blocks


def _n_chunks(u: Tensor, A: Tensor, B: Tensor, C: Tensor) -> int:
    _, _, _, (_, _, block_l, _) = _geometry(u, A, B, C, backward=False)
    return cdiv(u.shape[2], block_l)


def _shared_args(u, delta, A, z, lay_B, lay_C, h0):
    """Strides of u, delta, z, A, B, C, h0 in the kernels' order (complex ones of their real views)."""
    zs = z.stride() if z is not None else (0, 0, 0)
    cplx = A.is_complex()
    s_B = (*lay_B[3], lay_B[4]) if cplx else lay_B[3]
    s_C = (*lay_C[3], lay_C[4]) if cplx else lay_C[3]
    s_h0 = (0, 0, 0) if h0 is None else real_view(h0).stride()[:3]
    return (*u.stride(), *delta.stride(), *zs), (*real_view(A).stride()[:2], *s_B, *s_C, *s_h0)


def _atomic_bc(A: Tensor) -> bool:
    """Whether the real backward adds dB / dC of a variable B / C with atomics (see _triton_bwd.py): not in
    torch's deterministic mode, where it writes per-program partials for torch to sum (268 MB more at
    (4, 4096, 4096) N 16, the same bits every run)."""
    return ATOMIC_BC and not A.is_complex() and not torch.are_deterministic_algorithms_enabled()


def _atomic_arg(A: Tensor, atomic: bool) -> dict:
    """The real backward kernel's ATOMIC_BC (the complex one always writes partials and has none)."""
    return {} if A.is_complex() else dict(ATOMIC_BC=atomic)


def _bc_grad_buffer(fixed: bool, atomic: bool, per_group: int, batch, dim, N, L, n_dblocks, pair, device) -> Tensor:
    """What the backward kernel writes dB or dC into, fp32: (B, D, N) per batch row and channel for a fixed
    B / C; else (B, groups, N, L), zeros the kernel adds into (atomic), or (B, n_dblocks, N, L) partials."""
    if fixed:
        return new_output((batch, dim, N, *pair), torch.float32, device)
    if atomic:
        return torch.zeros((batch, dim // per_group, N, L), dtype=torch.float32, device=device)
    return new_output((batch, n_dblocks, N, L, *pair), torch.float32, device)


# --- launchers --------------------------------------------------------------------------------------------
def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, save_checkpoints):
    (batch, dim, L, N), lay_B, lay_C, (BD, BN, BL, warps) = _geometry(u, A, B, C, backward=False)
    cplx = A.is_complex()
    state_dtype = torch.complex64 if cplx else torch.float32
    pair = (2,) if cplx else ()
    rows = state_rows(u, cu_seqlens)
    n_chunks = cdiv(L, BL)
    y = rows_like(u)  # u's order: out_proj's weight gradient reads a (D, B L) matrix in place
    final = new_output((rows, dim, N), state_dtype, u.device)
    ckpt = new_output((batch, n_chunks if save_checkpoints else 0, dim, N, *pair), torch.float32, u.device)
    start = end = empty = None
    if cu_seqlens is not None:
        start, end, empty = seq_markers(cu_seqlens, L)
    if L == 0 or empty is not None:  # final states the kernel does not write: the initial ones
        init = entering_states(initial_state, rows, dim, N, state_dtype, u.device)
        if L == 0:
            return y, init.clone(), ckpt
    data_strides, param_strides = _shared_args(u, delta, A, z, lay_B, lay_C, initial_state)
    kernel = _selective_scan_fwd_complex_kernel if cplx else _selective_scan_fwd_kernel
    launch(
        kernel, (batch, cdiv(dim, BD)),
        u, delta, real_view(A), lay_B[0], lay_C[0], D, z, delta_bias, real_view(initial_state), start, end,
        y, real_view(final), ckpt, y.stride(0), y.stride(1),
        L, dim, N, n_chunks, lay_B[2], lay_C[2], *data_strides, *param_strides,
        BLOCK_D=BD, BLOCK_N=BN, BLOCK_L=BL, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_H0=initial_state is not None,
        VARLEN=cu_seqlens is not None, B_FIXED=lay_B[1], C_FIXED=lay_C[1], SAVE_CKPT=save_checkpoints,
        FAST=fast_math(u), num_warps=warps, **_run_args(u, A, lay_B, BL), **_register_cap(FWD_MAXNREG),
    )
    if empty is not None:  # an empty sequence's final state is its initial state
        final = torch.where(empty[:, None, None], init, final)
    return y, final, ckpt


def _backward(dout, dfinal, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, ckpt):
    (batch, dim, L, N), lay_B, lay_C, (BD, BN, BL, warps) = _geometry(u, A, B, C, backward=True)
    if ckpt.shape[1] != cdiv(L, BL):
        raise AssertionError("the backward must walk the forward's checkpoint spacing")
    cplx = A.is_complex()
    state_dtype = torch.complex64 if cplx else torch.float32
    pair = (2,) if cplx else ()
    rows = state_rows(u, cu_seqlens)
    n_chunks = cdiv(L, BL)
    n_dblocks = cdiv(dim, BD)
    dev = u.device
    fixed_B, fixed_C = lay_B[1], lay_C[1]
    du = new_output((batch, dim, L), u.dtype, dev)
    ddelta = new_output((batch, dim, L), delta.dtype, dev)
    dz = gate_grad_buffer(z)
    dA = new_output((batch, dim, N, *pair), torch.float32, dev)
    dD = new_output((batch, dim), torch.float32, dev)
    dbias = new_output((batch, dim), torch.float32, dev)
    atomic = _atomic_bc(A)
    dB = _bc_grad_buffer(fixed_B, atomic, lay_B[2], batch, dim, N, L, n_dblocks, pair, dev)
    dC = _bc_grad_buffer(fixed_C, atomic, lay_C[2], batch, dim, N, L, n_dblocks, pair, dev)
    dh0 = new_output((rows, dim, N, *pair), torch.float32, dev) if initial_state is not None else None
    start = end = empty = None
    if cu_seqlens is not None:
        start, end, empty = seq_markers(cu_seqlens, L)
    if dfinal is not None:
        dfinal = in_dtype(dfinal, state_dtype).contiguous()
    if L > 0:
        data_strides, param_strides = _shared_args(u, delta, A, z, lay_B, lay_C, initial_state)
        kernel = _selective_scan_bwd_complex_kernel if cplx else _selective_scan_bwd_kernel
        launch(
            kernel, (batch, n_dblocks),
            u, delta, real_view(A), lay_B[0], lay_C[0], D, z, delta_bias, real_view(initial_state), start, end,
            dout, real_view(dfinal), ckpt,
            du, ddelta, dz, dA, dD, dbias, dB, dC, dh0,
            L, dim, N, n_chunks, n_dblocks, lay_B[2], lay_C[2], *data_strides, *dout.stride(),
            *((0, 0) if dz is None else dz.stride()[:2]), *param_strides,
            BLOCK_D=BD, BLOCK_N=BN, BLOCK_L=BL, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_H0=initial_state is not None,
            HAS_DFINAL=dfinal is not None, VARLEN=cu_seqlens is not None, B_FIXED=fixed_B, C_FIXED=fixed_C,
            FAST=fast_math(u), num_warps=warps, **_run_args(u, A, lay_B, BL), **_atomic_arg(A, atomic),
            **_register_cap(BWD_MAXNREG),
        )
    else:
        for t in (dA, dD, dbias, dB, dC):
            t.zero_()

    return gradients(du, ddelta, dz, dA, dD, dbias, dB, dC, dh0, A, B, C, D, z, delta_bias, initial_state,
                     dfinal, empty)


# --- autograd wiring (custom ops ssm_kernels::selective_scan_triton[_bwd], shared with the CUDA backend) -----
def _checkpoint_shape(u: Tensor, A: Tensor, B: Tensor, C: Tensor, n_chunks: Optional[int]) -> Tuple[int, ...]:
    n = _n_chunks(u, A, B, C) if n_chunks is None else n_chunks
    return (u.shape[0], n, u.shape[1], A.shape[1], *((2,) if A.is_complex() else ()))


_run = define_ops("triton", _forward, _backward, _checkpoint_shape, chunk_axis=1, dz_like_z=True, y_like_u=True)


# --- backend function --------------------------------------------------------------------------------------
def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None, cu_seqlens=None):
    """Triton backend of selective_scan: same arguments as selective_scan_torch; returns
    (out (B, D, L) in u's dtype, final state (B or S, D, N) fp32, complex64 for complex A)."""
    if A.dtype in (torch.float64, torch.complex128):
        raise NotImplementedError("selective_scan: the Triton backend computes in fp32; A is "
                                  f"{str(A.dtype).replace('torch.', '')}")
    # the checkpoints are only for the backward: inference skips writing them
    save = needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state)
    y, final, _ = _run(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, save)
    return y, final
