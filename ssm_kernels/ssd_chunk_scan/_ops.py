"""torch.library registration of the chunked SSD scan: forward and backward are opaque custom ops, so that
torch.compile(fullgraph=True) traces through them and the backward recomputes the chunk products instead
of autograd storing them. Shapes and math: see _chunked.py."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._utils import contiguous_outputs
from . import _chunked


def _num_chunks(length: int, chunk_size: int) -> int:
    return -(-length // chunk_size)


@torch.library.custom_op("ssm_kernels::ssd_chunk_scan_torch_fwd", mutates_args=())
def ssd_chunk_scan_fwd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_states: Optional[Tensor],
                       seg: Optional[Tensor], cu_seqlens: Optional[Tensor],
                       chunk_size: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(y (Bz, L, H, P), boundary states (Bz, nc + 1, H, P, N), varlen states (S, H, P, N)), all in x's dtype."""
    return contiguous_outputs(_chunked.forward(x, dt, A, B, C, initial_states, seg, cu_seqlens, chunk_size))


@ssd_chunk_scan_fwd.register_fake
def _(x, dt, A, B, C, initial_states, seg, cu_seqlens, chunk_size):
    bz, length, h, p = x.shape
    n = B.shape[-1]
    sequences = 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (x.new_empty(bz, length, h, p), x.new_empty(bz, _num_chunks(length, chunk_size) + 1, h, p, n),
            x.new_empty(sequences, h, p, n))


@torch.library.custom_op("ssm_kernels::ssd_chunk_scan_torch_bwd", mutates_args=())
def ssd_chunk_scan_bwd(dy: Optional[Tensor], dstates: Optional[Tensor], dvarlen: Optional[Tensor], x: Tensor,
                       dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_states: Optional[Tensor],
                       seg: Optional[Tensor], cu_seqlens: Optional[Tensor], states: Tensor,
                       chunk_size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, ddt, dA, dB, dC, dinitial_states); dinitial_states is (Bz, H, P, N) even without initial_states."""
    return contiguous_outputs(_chunked.backward(dy, dstates, dvarlen, x, dt, A, B, C, initial_states, seg,
                                                cu_seqlens, states, chunk_size))


@ssd_chunk_scan_bwd.register_fake
def _(dy, dstates, dvarlen, x, dt, A, B, C, initial_states, seg, cu_seqlens, states, chunk_size):
    bz, _, h, p = x.shape
    return tuple(t.new_empty(t.shape) for t in (x, dt, A, B, C)) + (x.new_empty(bz, h, p, B.shape[-1]),)


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, initial_states, seg, cu_seqlens, chunk_size = inputs
    ctx.save_for_backward(x, dt, A, B, C, initial_states, seg, cu_seqlens, output[1])
    ctx.chunk_size = chunk_size
    ctx.has_initial_states = initial_states is not None


def _backward(ctx, dy, dstates, dvarlen):
    x, dt, A, B, C, initial_states, seg, cu_seqlens, states = ctx.saved_tensors
    dx, ddt, dA, dB, dC, dinit = ssd_chunk_scan_bwd(dy, dstates, dvarlen, x, dt, A, B, C, initial_states, seg,
                                                    cu_seqlens, states, ctx.chunk_size)
    return dx, ddt, dA, dB, dC, (dinit if ctx.has_initial_states else None), None, None, None


torch.library.register_autograd("ssm_kernels::ssd_chunk_scan_torch_fwd", _backward, setup_context=_setup_context)
