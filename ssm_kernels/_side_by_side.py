"""Gradients of an op's inputs written side by side where the inputs lie so, and a split that hands them on whole.

The Mamba2 block splits its conv output xBC (B, L, conv_dim) into the SSD's x, B and C, channel slices of one
tensor. torch.split's backward concatenates the three gradients into a new tensor of xBC's size (at d_model 2048,
(4, 4096) bf16: 142 MB read and written again). Here an op whose inputs are such slices (`side_by_side` finds
their parent) writes their gradients into one buffer laid out like that parent (`gradient_buffers`), and `split`'s
backward passes that buffer on as the parent's gradient instead of copying it; any other gradients are
concatenated as torch.split's are.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._utils import is_dense, new_output_like


def _channel_run(part: Tensor, lead: int) -> Optional[Tuple[int, Optional[int]]]:
    """(channels, channel stride) of part's axes after the first `lead`, where they are one strided run of
    channels (row-major, the last axis varying fastest); stride None for a single channel. Else None."""
    stride: Optional[int] = None
    expected = 0
    for size, step in zip(reversed(part.shape[lead:]), reversed(part.stride()[lead:])):
        if size == 1:
            continue
        if stride is None:
            stride, expected = step, step * size
        elif step != expected:
            return None
        else:
            expected *= size
    channels = math.prod(part.shape[lead:])
    return (channels, stride) if channels > 0 else None


def side_by_side(parts: Sequence[Tensor], lead: int) -> Optional[Tensor]:
    """The tensor (*lead sizes, channels) whose consecutive channel slices `parts` are, if they are: views of one
    storage in one dtype, with equal sizes and strides on their first `lead` axes, the other axes of each one
    strided run of channels (as a reshape of a (*lead, channels_p) slice makes them), one channel stride, each
    part's channels starting where the previous part's end; and that tensor dense (is_dense: no gaps, no element
    twice). Else None. The result is a view of the parts' storage."""
    if not parts or any(not isinstance(p, Tensor) or p.dim() <= lead for p in parts):
        return None
    first = parts[0]
    storage = first.untyped_storage().data_ptr()
    lead_layout = [(size, step if size != 1 else 0) for size, step in zip(first.shape[:lead], first.stride()[:lead])]
    runs = []
    for part in parts:
        if (part.dtype != first.dtype or part.device != first.device or part.layout != torch.strided
                or part.untyped_storage().data_ptr() != storage
                or [(size, step if size != 1 else 0) for size, step in zip(part.shape[:lead], part.stride()[:lead])]
                != lead_layout):
            return None
        run = _channel_run(part, lead)
        if run is None:
            return None
        runs.append(run)
    strides = {stride for _, stride in runs if stride is not None}
    if len(strides) > 1:
        return None
    channel_stride = strides.pop() if strides else 1
    offset = first.storage_offset()
    for part, (channels, _) in zip(parts, runs):
        if part.storage_offset() != offset:
            return None
        offset += channels * channel_stride
    shape = (*first.shape[:lead], sum(channels for channels, _ in runs))
    parent = first.as_strided(shape, (*first.stride()[:lead], channel_stride), first.storage_offset())
    return parent if is_dense(parent) else None


def gradient_buffers(parts: Sequence[Tensor], lead: int) -> Optional[List[Tensor]]:
    """Where `parts` lie side by side (side_by_side), one new buffer in their parent's memory order (NaN-filled
    while outputs are poisoned) and its slices shaped like the parts, for an op to write their gradients into;
    else None."""
    parent = side_by_side(parts, lead)
    if parent is None:
        return None
    buffer = new_output_like(parent)
    views, start = [], 0
    for part in parts:
        channels = math.prod(part.shape[lead:])
        views.append(buffer.narrow(lead, start, channels).view(part.shape))
        start += channels
    return views


class _Split(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: Tuple[int, ...], dim: int):
        ctx.set_materialize_grads(False)  # a part that reached no loss arrives as None
        ctx.layout = (tensor.shape, sizes, dim)
        return tensor.split(sizes, dim)

    @staticmethod
    def backward(ctx, *grads):
        shape, sizes, dim = ctx.layout
        present = [g for g in grads if g is not None]
        if not present:
            return None, None, None
        if len(present) == len(grads) and dim == len(shape) - 1:
            whole = side_by_side(grads, dim)
            if whole is not None and whole.shape == shape:
                return whole, None, None
        parts = [g if g is not None else present[0].new_zeros((*shape[:dim], size, *shape[dim + 1:]))
                 for g, size in zip(grads, sizes)]
        return torch.cat(parts, dim), None, None


def split(tensor: Tensor, sizes: Sequence[int], dim: int = -1) -> Tuple[Tensor, ...]:
    """torch.split(tensor, sizes, dim) (a list of sizes), whose backward passes the parts' gradients on without a
    copy where they are consecutive slices of one tensor of `tensor`'s shape along the last axis (an op that wrote
    them with gradient_buffers); else concatenates them as torch.split's backward does."""
    if torch.compiler.is_compiling() or not (torch.is_grad_enabled() and tensor.requires_grad):
        return torch.split(tensor, list(sizes), dim)
    return _Split.apply(tensor, tuple(sizes), dim % tensor.dim())
