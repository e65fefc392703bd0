"""nn.Linear whose output is split into parts along its channels, as one autograd step.

A block's in_proj output is split into the inputs of several ops (Mamba: x and z; Mamba2: z0, x0, z, xBC, dt).
Autograd's split backward concatenates the parts' gradients into one tensor of the output's size before
the GEMM's backward reads it (279 MB written and read again for Mamba2 at d_model 2048, (4, 4096), bf16).
Here the backward takes each part's gradient where its op wrote it: the input's gradient is a sum of one
GEMM per part and the weight's gradient is written part by part, so no output-sized copy is made.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def is_plain_linear(module: nn.Module) -> bool:
    """Whether `module` is exactly an nn.Linear without forward hooks, so that a GEMM on its weight and bias
    computes what calling it would (not a subclass or a wrapper such as a LoRA layer)."""
    return type(module) is nn.Linear and not (module._forward_hooks or module._forward_pre_hooks)


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], sizes: Sequence[int],
                 channels_first: bool = False) -> Tuple[torch.Tensor, ...]:
    """nn.Linear's x (B, L, K) @ weight.T + bias, split into parts of `sizes` channels (summing to weight's
    rows), under autocast in its dtype:
    channels_first False: parts (B, L, C_p), views of the (B, L, O) output, as torch.split(..., dim=-1);
    channels_first True: parts (B, C_p, L) with L contiguous, views of one (O, B L) GEMM output (weight @ x^T).

    Each part's gradient is read as it lies where it is a (C_p, B L) matrix in memory (a transposed view of
    (B L, C_p) rows for channels-last parts, (C_p, B, L) order for channels-first ones), else copied into one."""
    if sum(sizes) != weight.shape[0]:
        raise ValueError(f"split_linear: sizes {list(sizes)} must sum to the weight's {weight.shape[0]} rows")
    dtype = gemm_dtype(x)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _SplitLinear.apply(x, weight, bias, dtype, tuple(sizes), channels_first)
    return _forward(x.to(dtype), weight.to(dtype), bias, tuple(sizes), channels_first)


def gemm_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer's GEMM on activations x runs in: autocast's where it is on, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def channels_first_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """nn.Linear's x (B, L, K) @ weight.T + bias as (B, O, L) with L contiguous, one GEMM (weight @ x^T)
    writing it: strides (L, B L, 1)."""
    batch, seqlen, width = x.shape
    out = weight @ x.reshape(batch * seqlen, width).t()  # (O, B L)
    if bias is not None:
        out = out + bias.to(out.dtype)[:, None]
    return out.view(-1, batch, seqlen).transpose(0, 1)


def _forward(x, w, bias, sizes, channels_first):
    if channels_first:
        return channels_first_linear(x, w, bias).split(sizes, dim=1)
    return F.linear(x, w, None if bias is None else bias.to(w.dtype)).split(sizes, dim=-1)


def _part_rows(grad: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """A part's gradient as the (C_p, B L) matrix of the GEMM output's (b, l) order: a view where it lies so."""
    if channels_first:  # (B, C, L)
        return grad.transpose(0, 1).reshape(grad.shape[1], -1)
    return grad.reshape(-1, grad.shape[-1]).t()  # (B, L, C) -> (C, B L), a view of channels-last rows


class _SplitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, dtype, sizes, channels_first):
        ctx.set_materialize_grads(False)  # a part without a gradient arrives as None, not zeros to multiply
        xc, w = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(xc, w)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.layout = (sizes, channels_first)
        return _forward(xc, w, bias, sizes, channels_first)

    @staticmethod
    def backward(ctx, *grads):
        x, w = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        sizes, channels_first = ctx.layout
        batch, seqlen, width = x.shape
        rows = x.reshape(batch * seqlen, width)  # (B L, K)
        dx = None
        dweight = torch.empty_like(w) if ctx.needs_input_grad[1] else None
        dbias = torch.empty(w.shape[0], dtype=w.dtype, device=w.device) if ctx.needs_input_grad[2] else None
        start = 0
        for size, grad in zip(sizes, grads):
            span = slice(start, start + size)
            start += size
            if grad is None or size == 0:  # this part reached no loss
                for t in (dweight, dbias):
                    if t is not None:
                        t[span] = 0
                continue
            g = _part_rows(grad.to(w.dtype), channels_first)  # (C_p, B L)
            if ctx.needs_input_grad[0]:
                dx = g.t() @ w[span] if dx is None else dx.addmm_(g.t(), w[span])  # (B L, K)
            if dweight is not None:
                torch.mm(g, rows, out=dweight[span])
            if dbias is not None:
                dbias[span] = g.sum(1)
        if dx is None and ctx.needs_input_grad[0]:
            dx = torch.zeros_like(rows)
        return (None if dx is None else dx.view(batch, seqlen, width).to(x_dtype),
                None if dweight is None else dweight.to(weight_dtype),
                None if dbias is None else dbias.to(bias_dtype), None, None, None)
