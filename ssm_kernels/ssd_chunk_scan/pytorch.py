"""The torch backend of ssd_chunk_scan (the CPU default): the SSD chunked matrix form of _chunked.py behind the
custom ops ssm_kernels::ssd_chunk_scan_torch_{fwd,bwd}, whose backward recomputes the chunk products instead
of autograd storing them; dt preprocessing, D and z around it are plain differentiable torch. Shapes and the
definition: reference.py."""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from .._autograd import define_custom_op
from .._utils import cdiv, compute_dtype, contiguous_outputs
from . import _chunked
from ._common import effective_dt, segment_ids, skip_and_gate


def _scan_forward(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_states: Optional[Tensor],
                  seg: Optional[Tensor], cu_seqlens: Optional[Tensor],
                  chunk_size: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(y (Bz, L, H, P), boundary states (Bz, nc + 1, H, P, N), varlen states (S, H, P, N)), all in x's dtype."""
    return contiguous_outputs(_chunked.forward(x, dt, A, B, C, initial_states, seg, cu_seqlens, chunk_size))


def _scan_forward_fake(x, dt, A, B, C, initial_states, seg, cu_seqlens, chunk_size):
    bz, length, h, p = x.shape
    n = B.shape[-1]
    sequences = 0 if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (x.new_empty(bz, length, h, p), x.new_empty(bz, cdiv(length, chunk_size) + 1, h, p, n),
            x.new_empty(sequences, h, p, n))


def _scan_backward(dy: Optional[Tensor], dstates: Optional[Tensor], dvarlen: Optional[Tensor], x: Tensor,
                   dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_states: Optional[Tensor],
                   seg: Optional[Tensor], cu_seqlens: Optional[Tensor], states: Tensor,
                   chunk_size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, ddt, dA, dB, dC, dinitial_states); dinitial_states is (Bz, H, P, N) even without initial_states."""
    return contiguous_outputs(_chunked.backward(dy, dstates, dvarlen, x, dt, A, B, C, initial_states, seg,
                                                cu_seqlens, states, chunk_size))


def _scan_backward_fake(dy, dstates, dvarlen, x, dt, A, B, C, initial_states, seg, cu_seqlens, states, chunk_size):
    bz, _, h, p = x.shape
    return tuple(t.new_empty(t.shape) for t in (x, dt, A, B, C)) + (x.new_empty(bz, h, p, B.shape[-1]),)


def _save(ctx, inputs, output):
    x, dt, A, B, C, initial_states, seg, cu_seqlens, chunk_size = inputs
    ctx.save_for_backward(x, dt, A, B, C, initial_states, seg, cu_seqlens, output[1])
    ctx.chunk_size = chunk_size
    ctx.has_initial_states = initial_states is not None


def _gradients(backward_op, ctx, dy, dstates, dvarlen):
    x, dt, A, B, C, initial_states, seg, cu_seqlens, states = ctx.saved_tensors
    dx, ddt, dA, dB, dC, dinit = backward_op(dy, dstates, dvarlen, x, dt, A, B, C, initial_states, seg, cu_seqlens,
                                             states, ctx.chunk_size)
    return dx, ddt, dA, dB, dC, (dinit if ctx.has_initial_states else None), None, None, None


_scan = define_custom_op("ssd_chunk_scan_torch", _scan_forward, _scan_forward_fake, _scan_backward,
                         _scan_backward_fake, _save, _gradients)


# On the CPU the (T, T) intra-chunk work grows with the chunk length T while the inter-chunk state passing
# it replaces is cheap, so chunks are processed in blocks of at most this many steps. The result is the
# same in exact arithmetic for any block length (tests check chunk_size independence).
CPU_BLOCK = 64


def ssd_chunk_scan_torch(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                         dt_limit=(0.0, float("inf")), initial_states=None, seq_idx=None, cu_seqlens=None):
    """Fast torch backend: the SSD chunked matrix form (see _chunked.py), one custom op with a recomputing
    backward; dt preprocessing, D and z around it are plain differentiable torch. On CPU tensors chunks
    are processed in blocks of at most CPU_BLOCK steps."""
    if x.device.type == "cpu":
        chunk_size = min(chunk_size, CPU_BLOCK)
    acc = compute_dtype(x.dtype)
    batch, length = x.shape[:2]
    dt = effective_dt(dt, dt_bias, dt_softplus, dt_limit, acc)
    seg = segment_ids(seq_idx, cu_seqlens, batch, length, x.device)
    init = None if initial_states is None else initial_states.to(acc)
    y, states, varlen = _scan(x.to(acc), dt, A.to(acc), B.to(acc), C.to(acc), init, seg, cu_seqlens, chunk_size)
    out = skip_and_gate(y, x, D, z).to(x.dtype)
    return out, states[:, -1], (varlen if cu_seqlens is not None else None)
