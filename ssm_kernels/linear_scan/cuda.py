"""CUDA backend of linear_scan: binding to csrc/linear_scan (one fused kernel for the forward and the backward,
runs of 16-byte vectors per thread and cub block scans; see linear_scan.cu), behind the custom ops
ssm_kernels::linear_scan_cuda_{fwd,bwd}.

The kernel reads its streams in one element type T (fp32, fp16 or bf16; fp32 real views for a complex scan),
the gates in T or fp32, and writes dgates in the gates' type or fp32; other combinations (rare: e.g. fp16
gates with bf16 tokens, or low-precision real tokens in a complex scan) are converted here first.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._utils import multiprocessor_count
from ._common import define_scan_ops, kernel_functions, kernel_view, packed_rows, segments

TILE = 1024  # positions a block scans at a time (csrc: kThreads * K), tiles at multiples of it in memory
COMPLEX_TILE = 512
MAX_SEGMENTS = 1024
BLOCKS_PER_SM = 8  # fewer row blocks than this per SM: long rows are cut into segments (two passes)


def plan(rows: int, length: int, device: torch.device, scan_complex: bool = False, packed: bool = False):
    """(segments per row, tiles per segment) of a scan of `rows` rows of `length`; packed sequences (at any
    offset) may touch one tile more than their length needs."""
    return segments(rows, length, COMPLEX_TILE if scan_complex else TILE, packed,
                    BLOCKS_PER_SM * multiprocessor_count(device), MAX_SEGMENTS)


def _readable(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """t as the kernel reads it: kept when its (real view) type is `dtype` or fp32, else converted to fp32
    (complex64 for complex tensors)."""
    if t is None:
        return None
    real = t.dtype.to_real() if t.is_complex() else t.dtype
    if real in (dtype, torch.float32):
        return t
    return t.to(torch.complex64 if t.is_complex() else torch.float32)


def _launch(gates: Tensor, inputs: Tensor, outputs: Tensor, h0: Optional[Tensor], cu_seqlens: Optional[Tensor],
            reverse: bool, scan_complex: bool, *, states: Optional[Tensor] = None, dgates: Optional[Tensor] = None,
            dh0: Optional[Tensor] = None) -> None:
    """_common.KernelLaunch on CUDA tensors."""
    batch, dim, length = inputs.shape
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int64).contiguous()
        batch, length = packed_rows(cu_seqlens)
    if length == 0:
        return
    n_segments, seg_tiles = plan(batch * dim, length, inputs.device, scan_complex, cu_seqlens is not None)
    if scan_complex:  # fp32 views everywhere
        inputs = _readable(inputs, torch.float32)
        gates = _readable(gates, torch.float32)
    stream = inputs.dtype.to_real() if inputs.is_complex() else inputs.dtype
    gates = _readable(gates, stream)
    # outputs the kernel cannot write in their dtype go through an fp32 buffer
    finish = []

    def writable(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
        if t is None or _readable(t, dtype) is t:
            return t
        buffer = torch.empty(t.shape, dtype=torch.complex64 if t.is_complex() else torch.float32, device=t.device)
        finish.append((t, buffer))
        return buffer

    gate_type = gates.dtype.to_real() if gates.is_complex() else gates.dtype
    outputs = writable(outputs, stream)
    dgates = writable(dgates, gate_type)
    (a, sa, a_complex), (u, su, u_complex), (o, so, o_complex) = map(kernel_view, (gates, inputs, outputs))
    s, ss, _ = kernel_view(states)
    g, sg, _ = kernel_view(dgates)
    h, sh, _ = kernel_view(h0)
    dh = None if dh0 is None else (torch.view_as_real(dh0) if dh0.is_complex() else dh0)
    summaries = inputs.new_empty((batch * dim * n_segments * 4,) if n_segments > 1 else (1,), dtype=torch.float32)
    torch.ops.ssm_kernels_cuda.linear_scan(
        a, sa, a_complex, u, su, u_complex, o, so, o_complex, s, ss, g, sg, h, sh[:2], dh, cu_seqlens, summaries,
        batch, dim, length, seg_tiles, n_segments, reverse, scan_complex)
    for target, buffer in finish:
        target.copy_(buffer)


linear_scan_cuda = define_scan_ops("cuda", *kernel_functions(_launch))
linear_scan_cuda.__doc__ = "CUDA backend: (gates, tokens, initial_state, reverse) -> x (B, D, L)."
