"""Helpers shared by fftconv's reference and backends: the math dtype, the gates / skip around the convolution
(v = u * pregate; y = (conv + D v) * postgate), the circular kernel the FFT backends transform, and the custom-op
wiring (saved tensors, gradients, fakes) of the GPU backends."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._utils import compute_dtype


def math_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """fp64 when any input is fp64, else fp32."""
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return compute_dtype(torch.float64 if wide else torch.float32)


def gated_input(u, pregate, dtype):
    """v = u * pregate (u without it) in dtype."""
    v = u.to(dtype)
    return v if pregate is None else v * pregate.to(dtype)


def finish(y, v, D, postgate, out_dtype):
    """(y + D v) * postgate, in out_dtype."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * v
    if postgate is not None:
        y = y * postgate.to(y.dtype)
    return y.to(out_dtype)


def unit_roots(exponents: torch.Tensor, period: int) -> torch.Tensor:
    """(..., 2) fp64: cos and sin of -2 pi e / period for integer exponents e, reduced modulo the period before
    the fp64 angle is formed (exact phases: the DFT tables of the FFT backends)."""
    angle = (exponents % period).to(torch.float64) * (-2 * math.pi / period)
    return torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)


def circular_kernel(k: torch.Tensor, bidirectional: bool, points: int) -> torch.Tensor:
    """(H, points) fp32: the kernel as a circular one of `points` >= 2L taps, k0 at lags 0..Lk-1 and, when
    bidirectional, k1 reversed at lags points-Lk..points-1 (k1[j] weighs v_{t+1+j}: lag -1-j)."""
    causal = k[0] if bidirectional else k
    heads, taps = causal.shape
    circular = torch.zeros(heads, points, dtype=torch.float32, device=k.device)
    circular[:, :taps] = causal
    if bidirectional:
        circular[:, points - taps:] = k[1].flip(-1)  # points >= 2L >= 2 Lk: the two ends never overlap
    return circular


def absent(u: torch.Tensor) -> torch.Tensor:
    """A backward op's placeholder for the gradient of an absent input (a new one each: outputs of a custom op
    may not alias)."""
    return u.new_empty(0)


def forward_fake(u, k, D, bidirectional, pregate, postgate):
    return u.new_empty(u.shape)


def backward_fake(grad, u, k, D, bidirectional, pregate, postgate):
    return [u.new_empty(u.shape), k.new_empty(k.shape), D.new_empty(D.shape) if D is not None else absent(u),
            pregate.new_empty(u.shape) if pregate is not None else absent(u),
            postgate.new_empty(u.shape) if postgate is not None else absent(u)]


def save_for_backward(ctx, inputs, output, *outputs_to_save):
    """Saves the tensor inputs, then outputs_to_save (a backend's own, after them in ctx.saved_tensors)."""
    u, k, D, bidirectional, pregate, postgate = inputs[:6]
    ctx.bidirectional = bidirectional
    ctx.present = [t is not None for t in (u, k, D, pregate, postgate)]
    ctx.save_for_backward(u, k, D, pregate, postgate, *outputs_to_save)


def gradients(backward_op, ctx, grad):
    """The custom op's backward rule: backward_op returns [du, dk, dD, dpregate, dpostgate] (placeholders for
    absent inputs)."""
    u, k, D, pregate, postgate = ctx.saved_tensors[:5]
    grads = backward_op(grad, u, k, D, ctx.bidirectional, pregate, postgate)
    du, dk, dD, dpre, dpost = (g if present else None for g, present in zip(grads, ctx.present))
    return du, dk, dD, None, dpre, dpost
