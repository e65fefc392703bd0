"""The torch backend of selective_scan (the CPU default): the chunked scan of _chunked.py behind the custom ops
ssm_kernels::selective_scan_torch_{fwd,bwd} (a backward that recomputes per chunk), with the elementwise pre-
and post-processing around it left to autograd. Shapes and the definition: reference.py."""
from __future__ import annotations

import math
from typing import Optional, Tuple

from torch import Tensor

from .._autograd import define_custom_op
from .._utils import contiguous_outputs
from ._chunked import CHUNK, _backward, _forward, _Inputs
from ._common import compute_dtypes, grouped, skip_and_gate, softplus_delta


def _final_rows(u: Tensor, cu_seqlens: Optional[Tensor]) -> int:
    return u.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def _scan_forward(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Optional[Tensor],
                  cu_seqlens: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """(y (Bt, D, L), final state, checkpoints) from inputs in the compute dtype and layout (_chunked.py)."""
    return contiguous_outputs(_forward(_Inputs(u, dt, A, B, C, initial_state, cu_seqlens)))


def _scan_forward_fake(u, dt, A, B, C, initial_state, cu_seqlens):
    batch, dim, length = u.shape
    return (u.new_empty(batch, dim, length), A.new_empty(_final_rows(u, cu_seqlens), dim, A.shape[1]),
            A.new_empty(batch, dim, math.ceil(length / CHUNK), A.shape[1]))


def _scan_backward(gy: Tensor, g_final: Tensor, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor],
                   checkpoints: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    inp = _Inputs(u, dt, A, B, C, initial_state, cu_seqlens)
    return contiguous_outputs(_backward(inp, gy, g_final, checkpoints))


def _scan_backward_fake(gy, g_final, u, dt, A, B, C, initial_state, cu_seqlens, checkpoints):
    return tuple(t.new_empty(t.shape) for t in (u, dt, A, B, C)) + (
        A.new_empty(_final_rows(u, cu_seqlens), u.shape[1], A.shape[1]),)


def _save(ctx, inputs, output):
    u, dt, A, B, C, initial_state, cu_seqlens = inputs
    ctx.has_initial_state = initial_state is not None
    ctx.save_for_backward(u, dt, A, B, C, initial_state, cu_seqlens, output[2])


def _gradients(backward_op, ctx, gy, g_final, _g_checkpoints):
    u, dt, A, B, C, initial_state, cu_seqlens, checkpoints = ctx.saved_tensors
    gu, gdt, gA, gB, gC, g_init = backward_op(gy, g_final, u, dt, A, B, C, initial_state, cu_seqlens, checkpoints)
    return gu, gdt, gA, gB, gC, (g_init if ctx.has_initial_state else None), None


_scan = define_custom_op("selective_scan_torch", _scan_forward, _scan_forward_fake, _scan_backward,
                         _scan_backward_fake, _save, _gradients)


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         initial_state=None, cu_seqlens=None):
    """Fast torch backend: chunked scan (see _chunked) plus elementwise pre/post-processing that autograd
    differentiates. Returns (out (B, D, L) in u's dtype, final state)."""
    real, acc = compute_dtypes(u, A)
    uf = u.to(real)
    dt = softplus_delta(delta, delta_bias, delta_softplus, real)
    init = None if initial_state is None else initial_state.to(acc)
    y, final, _ = _scan(uf, dt, A.to(acc), grouped(B, A, acc), grouped(C, A, acc), init, cu_seqlens)
    return skip_and_gate(y, uf, D, z).to(u.dtype), final
