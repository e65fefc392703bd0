"""Triton backend of causal_conv1d_update: one kernel per call, conv_state updated in place.

Grid (B, cdiv(D, BLOCK_D)): a program owns BLOCK_D channels of one batch row, so no other program touches
its part of conv_state. With xp = cat(conv_state, x) (S + T positions) it first writes the T outputs
y[t] = act(bias + sum_k w_k xp[S + t - W + 1 + k]), then shifts the state, new_state[i] = xp[i + T], in
ascending chunks of BLOCK_S positions: a chunk only reads positions at or after its own start + T, which
no earlier chunk has written, and a barrier between a chunk's loads and its stores keeps threads of the
program from overwriting inputs another thread has still to read. Any strides (vLLM's (B, W-1, D) cache
viewed as (B, D, W-1) included): a stride of 1 is specialised by Triton, so loads coalesce along it.

Sizes (but the token count T) and strides are compile-time constants: the step is launch-bound and
Triton's launcher costs about half a microsecond per runtime argument; a decoding loop has one stride
pattern (independent of the batch size), so one compilation.

Eager calls launch the kernel directly (one launch, the output the only allocation); under torch.compile
the same launcher runs inside a torch.library custom op that declares the in-place write of conv_state.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._triton_launch import launch
from .._utils import cdiv, new_output, next_power_of_2


# --- kernel --------------------------------------------------------------------------------------------
@triton.jit
def _update_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr, T, D: tl.constexpr, S: tl.constexpr,
                   sxb: tl.constexpr, sxd: tl.constexpr, sxt: tl.constexpr, ssb: tl.constexpr, ssd: tl.constexpr,
                   sss: tl.constexpr, swd: tl.constexpr, swk: tl.constexpr, syb: tl.constexpr, syd: tl.constexpr,
                   syt: tl.constexpr,
                   W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]
    d_mask = d < D
    x_ptr += b * sxb + d * sxd
    state_ptr += b * ssb + d * ssd
    y_ptr += b * syb + d * syd
    w_ptr += d * swd
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    # outputs: xp position S + t - (W - 1) + k >= 0 is in the state below S, in x from S on
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)[None, :]
        t_mask = d_mask & (t < T)
        acc = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
        if HAS_BIAS:
            acc += bias
        for k in tl.static_range(W):
            pos = S + t + (k - (W - 1))
            v = tl.load(state_ptr + pos * sss, mask=t_mask & (pos < S), other=0.0).to(tl.float32)
            v += tl.load(x_ptr + (pos - S) * sxt, mask=t_mask & (pos >= S), other=0.0).to(tl.float32)
            acc += tl.load(w_ptr + k * swk, mask=d_mask, other=0.0).to(tl.float32) * v
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc))
        tl.store(y_ptr + t * syt, acc.to(y_ptr.dtype.element_ty), mask=t_mask)
    tl.debug_barrier()  # every read of the old state is done before the state is overwritten
    for i0 in range(0, S, BLOCK_S):
        i = i0 + tl.arange(0, BLOCK_S)[None, :]
        i_mask = d_mask & (i < S)
        src = i + T
        v = tl.load(state_ptr + src * sss, mask=i_mask & (src < S), other=0.0)
        v += tl.load(x_ptr + (src - S) * sxt, mask=i_mask & (src >= S), other=0.0).to(v.dtype)
        tl.debug_barrier()
        tl.store(state_ptr + i * sss, v, mask=i_mask)


# --- launcher ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _config(dim: int, steps: int, state_len: int) -> Tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_T, BLOCK_S, channel blocks) for these sizes (cached: no per-call work)."""
    block_t = min(next_power_of_2(steps), 16)
    block_s = min(next_power_of_2(max(state_len, 1)), 32)
    block_d = max(16, min(next_power_of_2(dim), 2048 // max(block_t, block_s), 128))
    return block_d, block_t, block_s, cdiv(dim, block_d)


def _launch(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool) -> Tensor:
    """x: (B, D, T), or (B, D) for one token (run as T = 1 through a stride-0 axis: no view)."""
    batch, dim = x.shape[:2]
    steps = x.shape[2] if x.dim() == 3 else 1
    state_len = conv_state.shape[2]
    block_d, block_t, block_s, d_blocks = _config(dim, steps, state_len)
    y = new_output(x.shape, x.dtype, x.device)
    pad = () if x.dim() == 3 else (0,)
    launch(
        _update_kernel, (batch, d_blocks),
        x, conv_state, weight, x if bias is None else bias, y, steps, dim, state_len,
        *x.stride(), *pad, *conv_state.stride(), *weight.stride(), *y.stride(), *pad,
        W=weight.shape[1], HAS_BIAS=bias is not None, SILU=silu,
        BLOCK_D=block_d, BLOCK_T=block_t, BLOCK_S=block_s, num_warps=4)
    return y


# --- torch.compile wiring (no autograd: an "update" op) -----------------------------------------------
@torch.library.custom_op("ssm_kernels::causal_conv1d_update_triton", mutates_args=("conv_state",))
def _update_op(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool) -> Tensor:
    return _launch(x, conv_state, weight, bias, silu)


@_update_op.register_fake
def _(x, conv_state, weight, bias, silu):
    return x.new_empty(x.shape)


# --- backend function ----------------------------------------------------------------------------------
def causal_conv1d_update_triton(x, conv_state, weight, bias=None, activation=None):
    """Triton backend of ssm_kernels.causal_conv1d_update (validated; x (B, D, T) or (B, D)). Returns y like x."""
    if torch.compiler.is_compiling():
        return _update_op(x, conv_state, weight, bias, activation == "silu")
    return _launch(x, conv_state, weight, bias, activation == "silu")
