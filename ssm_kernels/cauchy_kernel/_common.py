"""What the cauchy_kernel backends share: their custom ops' fakes and autograd wiring.

forward(v, z, w) -> K (H, L); backward(grad, v, z, w, need_z) -> (dv, dw, dz), dz empty unless need_z (custom
ops cannot return None): z, the evaluation points, rarely needs a gradient (S4's are fixed frequencies).
"""
from __future__ import annotations

from typing import Callable

import torch

from .._autograd import define_custom_op


def _save(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gradients(backward_op, ctx, grad):
    v, z, w = ctx.saved_tensors
    need_z = ctx.needs_input_grad[1]
    dv, dw, dz = backward_op(grad.contiguous(), v, z, w, need_z)
    return dv, dz if need_z else None, dw


def define_cauchy_op(name: str, forward: Callable, backward: Callable) -> Callable:
    """The custom ops ssm_kernels::<name>_{fwd,bwd} of one backend (name: "cauchy_kernel_<backend>")."""
    return define_custom_op(
        name, forward, lambda v, z, w: v.new_empty((v.shape[0], z.shape[0])), backward,
        lambda grad, v, z, w, need_z: (torch.empty_like(v), torch.empty_like(w),
                                       torch.empty_like(z) if need_z else z.new_empty(0)),
        _save, _gradients)
