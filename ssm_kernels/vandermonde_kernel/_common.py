"""What the vandermonde_kernel backends share: their custom ops' fakes and autograd wiring.

forward(C, log_z, L) -> K (H, L) real; backward(grad, C, log_z) -> (dC, dlog_z).
"""
from __future__ import annotations

from typing import Callable

import torch

from .._autograd import define_custom_op


def _save(ctx, inputs, output):
    C, log_z, _ = inputs
    ctx.save_for_backward(C, log_z)


def _gradients(backward_op, ctx, grad):
    C, log_z = ctx.saved_tensors
    dC, dlog_z = backward_op(grad.to(C.real.dtype).contiguous(), C, log_z)
    return dC, dlog_z, None


def define_vandermonde_op(name: str, forward: Callable, backward: Callable) -> Callable:
    """The custom ops ssm_kernels::<name>_{fwd,bwd} of one backend (name: "vandermonde_kernel_<backend>")."""
    return define_custom_op(
        name, forward, lambda C, log_z, L: C.new_empty((C.shape[0], L), dtype=C.real.dtype),
        backward, lambda grad, C, log_z: (torch.empty_like(C), torch.empty_like(log_z)), _save, _gradients)
