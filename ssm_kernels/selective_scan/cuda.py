"""Binding to csrc/selective_scan: the CUDA forward and backward kernels of selective_scan as torch custom ops
with autograd, and the backend function.

Kernels (see the .cu files): one block per (channel, batch row) in the forward, one per (kch channels, batch
row) in the backward. Saved for the backward: the inputs and the checkpoints (B, D, ceil(L / 512), N) fp32
(complex A: (.., N, 2)), the state entering every 512 positions; never a (B, D, L, N) tensor.

Arguments as the kernels take them (prepared in selective_scan_cuda, outside the custom op, so that autograd
returns every gradient in its input's dtype): u, delta, z in one dtype (fp32 when the three differ), with any
strides (the kernels take the L stride: no copies; unit stride and 16-byte alignment make loads vectorised);
A fp32 / complex64 and the states fp32 / complex64; D, delta_bias fp32 contiguous; B, C in u's dtype or fp32
(fixed ones fp32 / complex64; complex ones complex64, or real in u's dtype with interleaved (re, im) along 2L).
Complex tensors reach the kernels as their real views.

Memory of the backward beyond its outputs: variable or grouped dB / dC are added with fp32 atomics into (B, groups,
N, L) fp32 sums ((.., 2) complex), one channel per block, as mamba_ssm does. In torch's deterministic mode (or with
ATOMIC_BC off), one partial sum per block of kch channels instead, (B, D / kch, N, L), kch = the largest power of
two <= 16 that divides the channels per group, summed with torch (bitwise reproducible). For the (4, 4096, 4096)
N=16 case: 2 x 4 x 256 x 16 x 4096 x 4 bytes = 537 MB. Plus a (B, D, N) fp32 workspace.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._autograd import needs_grad
from .._utils import in_dtype, multiprocessor_count, new_output
from ._kernel_io import entering_states, gradients, real_view, seq_markers, state_rows
from ._op_wiring import define_ops

CKPT_SPACING = 512  # kSSCkptSpacing in csrc/selective_scan/selective_scan.h: checkpoint spacing
MAX_CHANNELS_PER_BLOCK = 16
ATOMIC_BC = True  # read at each call (see _atomic_bc)
# The atomics pay where the partials' grid (one block per kch channels) leaves SMs idle: the H200 measured them
# 1.9x faster at (1, 1024, 2048) (64 blocks) and 1.4x slower at (4, 4096, 4096) (1024 blocks), 3 resident a SM.
ATOMIC_BC_BELOW_BLOCKS_PER_SM = 3


def _bc_arg(X: Tensor, dim: int, cplx: bool) -> Tuple[Tensor, List[int]]:
    """B or C as the kernel takes it: (real tensor, [fixed, channels per group, stride batch, stride group,
    stride n, stride l, offset of the imaginary part]) in elements of that tensor."""
    if X.is_complex():
        Xr = torch.view_as_real(X)
        st, im = list(Xr.stride()[:-1]), 1
    elif cplx:  # real with (re, im) pairs interleaved along a last axis of 2L
        Xr = X
        st, im = list(X.stride()), X.stride(-1)
        st[-1] *= 2
    else:
        Xr, st, im = X, list(X.stride()), 0
    if X.dim() == 2:
        return Xr, [1, 1, 0, st[0], st[1], 0, im]
    if X.dim() == 3:
        return Xr, [0, dim, st[0], 0, st[1], st[2], im]
    return Xr, [0, dim // X.shape[1], st[0], st[1], st[2], st[3], im]


def _channels_per_block(dim: int, lay_B: List[int], lay_C: List[int]) -> int:
    """Channels per backward block: 1 when B and C are fixed, else the largest power of two <= 16 dividing
    the channels per group of every variable one (a block's channels share one group)."""
    kch = 1
    cpgs = [lay[1] for lay in (lay_B, lay_C) if not lay[0]]
    if cpgs:
        kch = MAX_CHANNELS_PER_BLOCK
        for cpg in cpgs:
            kch = min(kch, cpg & -cpg)
    return kch


def _atomic_bc(fixed_B: bool, fixed_C: bool, partial_blocks: int, device: torch.device) -> bool:
    """Variable dB / dC added with fp32 atomics into (B, groups, N, L) sums, as mamba_ssm does, one channel per
    block (no shared-memory accumulators, so more blocks per SM, and no partials for torch to sum), where the
    partials' grid of `partial_blocks` would not fill the GPU once; else (and in torch's deterministic mode, and
    with ATOMIC_BC off) per-block partials: at many blocks 4096-fold contention on each atomic's address costs
    more than the partials' sum."""
    if not ATOMIC_BC or (fixed_B and fixed_C) or torch.are_deterministic_algorithms_enabled():
        return False
    return partial_blocks < ATOMIC_BC_BELOW_BLOCKS_PER_SM * multiprocessor_count(device)


def _bc_sums(shape, atomic: bool, device) -> Tensor:
    """The variable dB / dC buffer: zeros for the atomics to add into, else per-block partials the kernel writes."""
    if atomic:
        return torch.zeros(shape, dtype=torch.float32, device=device)
    return new_output(shape, torch.float32, device)


def _n_ckpt(L: int) -> int:
    return (L + CKPT_SPACING - 1) // CKPT_SPACING


# --- launchers --------------------------------------------------------------------------------------------
def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, save_checkpoints):
    batch, dim, L = u.shape
    N = A.shape[1]
    cplx = A.is_complex()
    state_dtype = torch.complex64 if cplx else torch.float32
    pair = (2,) if cplx else ()
    rows = state_rows(u, cu_seqlens)
    y = new_output((batch, dim, L), u.dtype, u.device)
    final = new_output((rows, dim, N), state_dtype, u.device)
    ckpt = new_output((batch, dim, _n_ckpt(L) if save_checkpoints else 0, N, *pair), torch.float32, u.device)
    start = end = empty = None
    if cu_seqlens is not None:
        start, end, empty = seq_markers(cu_seqlens, L)
    if L == 0 or empty is not None:  # final states the kernel does not write: the initial ones
        init = entering_states(initial_state, rows, dim, N, state_dtype, u.device)
        if L == 0:
            return y, init.clone(), ckpt
    B_arg, lay_B = _bc_arg(B, dim, cplx)
    C_arg, lay_C = _bc_arg(C, dim, cplx)
    torch.ops.ssm_kernels_cuda.selective_scan_fwd(
        u, delta, real_view(A), B_arg, lay_B, C_arg, lay_C, D, z, delta_bias, delta_softplus, real_view(initial_state),
        start, end, y, real_view(final), ckpt)
    if empty is not None:  # an empty sequence's final state is its initial state
        final = torch.where(empty[:, None, None], init, final)
    return y, final, ckpt


def _backward(dout, dfinal, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, ckpt):
    batch, dim, L = u.shape
    N = A.shape[1]
    cplx = A.is_complex()
    state_dtype = torch.complex64 if cplx else torch.float32
    pair = (2,) if cplx else ()
    rows = state_rows(u, cu_seqlens)
    dev = u.device
    B_arg, lay_B = _bc_arg(B, dim, cplx)
    C_arg, lay_C = _bc_arg(C, dim, cplx)
    fixed_B, fixed_C = bool(lay_B[0]), bool(lay_C[0])
    partials_kch = _channels_per_block(dim, lay_B, lay_C)
    atomic = _atomic_bc(fixed_B, fixed_C, batch * (dim // partials_kch), dev)
    kch = 1 if atomic else partials_kch
    n_dblocks = dim // kch
    rows_B, rows_C = (dim // lay_B[1], dim // lay_C[1]) if atomic else (n_dblocks, n_dblocks)
    du = new_output((batch, dim, L), u.dtype, dev)
    ddelta = new_output((batch, dim, L), delta.dtype, dev)
    dz = new_output((batch, dim, L), z.dtype, dev) if z is not None else u.new_empty((0,))
    dA = new_output((batch, dim, N, *pair), torch.float32, dev)
    dD = new_output((batch, dim), torch.float32, dev)
    dbias = new_output((batch, dim), torch.float32, dev)
    dB = (new_output((batch, dim, N) + pair, torch.float32, dev) if fixed_B
          else _bc_sums((batch, rows_B, N, L) + pair, atomic, dev))
    dC = (new_output((batch, dim, N) + pair, torch.float32, dev) if fixed_C
          else _bc_sums((batch, rows_C, N, L) + pair, atomic, dev))
    dh0 = (new_output((rows, dim, N, *pair), torch.float32, dev) if initial_state is not None
           else u.new_empty((0,), dtype=torch.float32))
    workspace = torch.empty((batch, dim, N, *pair), dtype=torch.float32, device=dev)
    start = end = empty = None
    if cu_seqlens is not None:
        start, end, empty = seq_markers(cu_seqlens, L)
    if dfinal is not None:
        dfinal = in_dtype(dfinal, state_dtype).contiguous()
    if L > 0:
        torch.ops.ssm_kernels_cuda.selective_scan_bwd(
            u, delta, real_view(A), B_arg, lay_B, C_arg, lay_C, D, z, delta_bias, delta_softplus,
            real_view(initial_state), start, end, dout, real_view(dfinal), ckpt, kch, atomic,
            du, ddelta, dz, dA, dD, dbias, dB, dC, dh0, workspace)
    else:
        for t in (dA, dD, dbias, dB, dC):
            t.zero_()

    return gradients(du, ddelta, dz, dA, dD, dbias, dB, dC, dh0, A, B, C, D, z, delta_bias, initial_state,
                     dfinal, empty)


# --- autograd wiring (custom ops ssm_kernels::selective_scan_cuda[_bwd], shared with the Triton backend) -----
def _checkpoint_shape(u: Tensor, A: Tensor, B: Tensor, C: Tensor, n_chunks: Optional[int]) -> Tuple[int, ...]:
    n = _n_ckpt(u.shape[2]) if n_chunks is None else n_chunks
    return (u.shape[0], u.shape[1], n, A.shape[1], *((2,) if A.is_complex() else ()))


_run = define_ops("cuda", _forward, _backward, _checkpoint_shape, chunk_axis=2)


# --- backend function --------------------------------------------------------------------------------------
def _bc_input(X: Tensor, common: torch.dtype, cplx: bool) -> Tensor:
    """B or C in a dtype the kernels read: u's dtype or fp32 (fixed: fp32 / complex64; complex: complex64)."""
    if X.is_complex() or (cplx and X.dim() == 2):
        return in_dtype(X, torch.complex64)
    if X.dim() == 2 or X.dtype != common:
        return in_dtype(X, torch.float32)
    return X


def selective_scan_cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        initial_state=None, cu_seqlens=None):
    """CUDA backend of selective_scan: same arguments as selective_scan_torch; returns
    (out (B, D, L) in u's dtype, final state (B or S, D, N) fp32, complex64 for complex A)."""
    if A.dtype in (torch.float64, torch.complex128):
        raise NotImplementedError("selective_scan: the CUDA backend computes in fp32; A is "
                                  f"{str(A.dtype).replace('torch.', '')}")
    out_dtype = u.dtype
    common = u.dtype
    if common == torch.float64 or delta.dtype != common or (z is not None and z.dtype != common):
        common = torch.float32  # mixed dtypes: the kernel reads one dtype
    cplx = A.is_complex()
    state_dtype = torch.complex64 if cplx else torch.float32
    args = (in_dtype(u, common), in_dtype(delta, common), in_dtype(A, state_dtype), _bc_input(B, common, cplx),
            _bc_input(C, common, cplx), None if D is None else in_dtype(D, torch.float32).contiguous(),
            in_dtype(z, common), None if delta_bias is None else in_dtype(delta_bias, torch.float32).contiguous(),
            bool(delta_softplus), in_dtype(initial_state, state_dtype), cu_seqlens)
    # the checkpoints are only for the backward: inference skips writing them
    save = needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state)
    y, final, _ = _run(*args, save)
    return in_dtype(y, out_dtype), final
