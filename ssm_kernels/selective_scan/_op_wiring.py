"""The torch.library wiring shared by the Triton and CUDA selective-scan backends.

Both backends expose the same pair of custom ops, ssm_kernels::selective_scan_<backend>_fwd (forward: y, final
state, checkpoints) and ssm_kernels::selective_scan_<backend>_bwd (every gradient, empty tensors for absent
inputs), with the same autograd rule. They differ only in their launchers and in the checkpoint layout,
which `checkpoint_shape` describes for the fake (meta) forward.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .._autograd import define_custom_op
from ._kernel_io import gate_grad_buffer, rows_like, state_rows


def define_ops(backend: str, forward: Callable, backward: Callable, checkpoint_shape: Callable,
               chunk_axis: int, dz_like_z: bool = False, y_like_u: bool = False) -> Callable:
    """Register the two custom ops of `backend` and return the function to call them with (op arguments:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, save_checkpoints).

    forward(same arguments) -> (y, final state, checkpoints); backward(dout, dfinal, u, delta, A, B, C, D, z,
    delta_bias, delta_softplus, initial_state, cu_seqlens, checkpoints) -> 9 gradients (None for absent
    inputs); checkpoint_shape(u, A, B, C, n_chunks or None) -> the checkpoints' shape (real view) with that
    many chunks (None: as the forward saves them), whose chunk axis is `chunk_axis`. dz_like_z: the backward
    writes dz in z's layout (gate_grad_buffer), not contiguous; y_like_u: the forward writes y in u's
    (batch, channel) order (rows_like), not contiguous.
    """
    def forward_impl(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                   z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                   initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor], save_checkpoints: bool
                   ) -> Tuple[Tensor, Tensor, Tensor]:
        return forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens,
                       save_checkpoints)

    def forward_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, save_checkpoints):
        cplx = A.is_complex()
        return (rows_like(u) if y_like_u else u.new_empty(u.shape),
                u.new_empty((state_rows(u, cu_seqlens), u.shape[1], A.shape[1]),
                            dtype=torch.complex64 if cplx else torch.float32),
                u.new_empty(checkpoint_shape(u, A, B, C, None if save_checkpoints else 0), dtype=torch.float32))

    def backward_impl(dout: Tensor, dfinal: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                    C: Tensor, D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                    delta_softplus: bool, initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor],
                    ckpt: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        grads = backward(dout, dfinal, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                         cu_seqlens, ckpt)
        return tuple(g if g is not None else u.new_empty((0,)) for g in grads)

    def backward_fake(dout, dfinal, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens,
                      ckpt):
        def like(t):
            return (torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None
                    else u.new_empty((0,)))
        dz = gate_grad_buffer(z) if dz_like_z and z is not None else like(z)
        return (like(u), like(delta), like(A), like(B), like(C), like(D), dz, like(delta_bias),
                like(initial_state))

    def setup_context(ctx, inputs, output):
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, _ = inputs
        ctx.delta_softplus = delta_softplus
        ctx.present = [t is not None for t in (D, z, delta_bias, initial_state)]
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, output[2])

    def backward_rule(backward_op, ctx, dy, dfinal, _dckpt):
        u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, ckpt = ctx.saved_tensors
        if dy is None:  # only the final state was used
            dy = torch.zeros_like(u)
        if ckpt.shape[chunk_axis] == 0 and u.shape[2] > 0:
            raise RuntimeError(f"selective_scan ({backend}): the forward ran without checkpoints (no input "
                               "required grad when it ran), so it cannot be differentiated")
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = backward_op(
            dy, dfinal, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, initial_state, cu_seqlens, ckpt)
        has_D, has_z, has_bias, has_h0 = ctx.present
        return (du, ddelta, dA, dB, dC, dD if has_D else None, dz if has_z else None,
                dbias if has_bias else None, None, dh0 if has_h0 else None, None, None)

    # unused outputs' gradients (the final state's, often; the checkpoints', always) arrive as None: the kernel
    # skips a None dfinal, and zeros would be allocated and filled for nothing
    return define_custom_op(f"selective_scan_{backend}", forward_impl, forward_fake, backward_impl, backward_fake,
                            setup_context, backward_rule, materialize_grads=False, eager_backward=backward)
