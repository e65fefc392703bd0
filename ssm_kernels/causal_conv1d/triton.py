"""Triton backend of causal_conv1d: a streaming forward kernel and one fused backward kernel.

Layout: x (B, D, L) with any strides. Both the channel-first layout (L contiguous) and the channel-last one
(D contiguous: Mamba's in_proj output viewed as (B, D, L)) are read in place; each kernel takes a
(BLOCK_D, BLOCK_L) tile whose long side follows the contiguous axis (Triton specialises a stride of 1, so
the loads are coalesced along it). Outputs y / dx get x's layout.

Forward, grid (cdiv(L, BLOCK_L), cdiv(D, BLOCK_D), B): y[t] = act(bias + sum_k w_k xp[t + k - W + 1]), the
W shifted tiles are W loads of the same lines (one DRAM read of x, the halo from L1/L2); positions < 0 come
from initial_states by a second masked load (only the first L tile has any), seq_idx drops taps that cross
a sequence boundary. Nothing is stored for backward but the inputs.

Backward, grid (chunks of L, cdiv(D, BLOCK_D), B), one kernel: per output tile it recomputes the
pre-activation a at t = s .. s + W - 1, g = dout * silu'(a), dx[s] = sum_j w_{W-1-j} g[s + j]; the j = 0
term gives the program's partial sums of dweight (g * shifted x) and dbias (g), written per program to a
(B * chunks, D, W) fp32 buffer and reduced with torch.sum (deterministic). The program of the first chunk
also writes dinitial_states (the same dx formula at positions -(W-1) .. -1).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._utils import new_output

MAX_WIDTH = 8
# The backward runs several L tiles per program (fewer partial sums) once there are this many programs.
BWD_TARGET_PROGRAMS = 2048
MAX_BLOCK_L = 256  # channel-first tiles: at most this many positions along L


# --- kernels -------------------------------------------------------------------------------------------
@triton.jit
def _load_xp(x_ptr, init_ptr, d, d_mask, pos, L, sxd, sxl, sid, sil, W: tl.constexpr, HAS_INIT: tl.constexpr):
    """xp at positions pos (1, n) of channels d (BLOCK_D, 1), fp32: x for 0 <= pos < L, initial_states for
    -(W-1) <= pos < 0, else 0. x_ptr / init_ptr already point at the batch row."""
    v = tl.load(x_ptr + d * sxd + pos * sxl, mask=d_mask & (pos >= 0) & (pos < L), other=0.0).to(tl.float32)
    if HAS_INIT:
        v += tl.load(init_ptr + d * sid + (pos + (W - 1)) * sil, mask=d_mask & (pos < 0) & (pos >= 1 - W),
                     other=0.0).to(tl.float32)
    return v


@triton.jit
def _load_seq(seq_ptr, pos, L, ssl):
    """Sequence id at positions pos (positions < 0 continue the first token's sequence)."""
    return tl.load(seq_ptr + tl.minimum(tl.maximum(pos, 0), L - 1) * ssl)


@triton.jit
def _pre_activation(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, d, d_mask, t, L, sxd, sxl, swd, swk, sid, sil,
                    ssl, W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr,
                    HAS_INIT: tl.constexpr):
    """a = bias + sum_k w[:, k] xp[t - W + 1 + k] at channels d (BLOCK_D, 1), positions t (1, n), fp32; taps
    across a sequence boundary of seq_idx are dropped. Used by the forward and recomputed by the backward."""
    a = tl.zeros((d + t).shape, dtype=tl.float32)
    if HAS_BIAS:
        a += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_SEQ:
        seq_t = _load_seq(seq_ptr, t, L, ssl)
    for k in tl.static_range(W):
        pos = t + (k - (W - 1))
        v = _load_xp(x_ptr, init_ptr, d, d_mask, pos, L, sxd, sxl, sid, sil, W, HAS_INIT)
        if HAS_SEQ:
            if k < W - 1:
                v = tl.where(_load_seq(seq_ptr, pos, L, ssl) == seq_t, v, 0.0)
        a += tl.load(w_ptr + d * swd + k * swk, mask=d_mask, other=0.0).to(tl.float32) * v
    return a


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, y_ptr,
                D, L, sxb, sxd, sxl, swd, swk, sib, sid, sil, ssb, ssl, syb, syd, syl,
                W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr,
                SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
    d_mask = d < D
    x_ptr += b * sxb
    init_ptr += b * sib
    seq_ptr += b * ssb
    acc = _pre_activation(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, d, d_mask, t, L, sxd, sxl, swd, swk, sid,
                          sil, ssl, W, HAS_BIAS, HAS_SEQ, HAS_INIT)
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    tl.store(y_ptr + b * syb + d * syd + t * syl, acc.to(y_ptr.dtype.element_ty), mask=d_mask & (t < L))


@triton.jit
def _grad_pre(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, dout_ptr, d, d_mask, t, L,
              sxd, sxl, swd, swk, sid, sil, ssl, sgd, sgl,
              W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr,
              SILU: tl.constexpr):
    """g = dL/d(pre-activation) at positions t (1, n): dout * silu'(a), a recomputed; 0 outside [0, L)."""
    inside = d_mask & (t >= 0) & (t < L)
    g = tl.load(dout_ptr + d * sgd + t * sgl, mask=inside, other=0.0).to(tl.float32)
    if SILU:
        a = _pre_activation(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, d, d_mask, t, L, sxd, sxl, swd, swk, sid,
                            sil, ssl, W, HAS_BIAS, HAS_SEQ, HAS_INIT)
        s = 1.0 / (1.0 + tl.exp(-a))
        g = g * (s * (1.0 + a * (1.0 - s)))
    return g


@triton.jit
def _dx_at(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, dout_ptr, d, d_mask, s, L,
           sxd, sxl, swd, swk, sid, sil, ssl, sgd, sgl,
           W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr,
           SILU: tl.constexpr):
    """(dxp at positions s, g at positions s): dxp[s] = sum_j w_{W-1-j} g[s + j] same(s + j, s)."""
    dx = tl.zeros((d.shape[0], s.shape[1]), dtype=tl.float32)
    g0 = tl.zeros((d.shape[0], s.shape[1]), dtype=tl.float32)
    if HAS_SEQ:
        seq_s = _load_seq(seq_ptr, s, L, ssl)
    for j in tl.static_range(W):
        g = _grad_pre(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, dout_ptr, d, d_mask, s + j, L,
                      sxd, sxl, swd, swk, sid, sil, ssl, sgd, sgl, W, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU)
        if j == 0:
            g0 = g
        else:
            if HAS_SEQ:
                g = tl.where(_load_seq(seq_ptr, s + j, L, ssl) == seq_s, g, 0.0)
        dx += tl.load(w_ptr + d * swd + (W - 1 - j) * swk, mask=d_mask, other=0.0).to(tl.float32) * g
    return dx, g0


@triton.jit
def _bwd_kernel(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, dout_ptr, dx_ptr, dinit_ptr, dw_ptr, db_ptr,
                D, L, tiles_per_chunk, n_chunks,
                sxb, sxd, sxl, swd, swk, sib, sid, sil, ssb, ssl, sgb, sgd, sgl, sdb, sdd, sdl, sjb, sjd, sjl,
                W: tl.constexpr, W_PAD: tl.constexpr, INIT_PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
                HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]
    d_mask = d < D
    x_ptr += b * sxb
    init_ptr += b * sib
    seq_ptr += b * ssb
    dout_ptr += b * sgb
    dx_ptr += b * sdb
    kk = tl.arange(0, W_PAD)[None, :]
    dw = tl.zeros((BLOCK_D, W_PAD), dtype=tl.float32)
    db = tl.zeros((BLOCK_D, 1), dtype=tl.float32)
    for i in range(tiles_per_chunk):
        s = (pid_c * tiles_per_chunk + i) * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
        dx, g = _dx_at(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, dout_ptr, d, d_mask, s, L,
                       sxd, sxl, swd, swk, sid, sil, ssl, sgd, sgl, W, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU)
        tl.store(dx_ptr + d * sdd + s * sdl, dx.to(dx_ptr.dtype.element_ty), mask=d_mask & (s < L))
        db += tl.sum(g, axis=1)[:, None]
        if HAS_SEQ:
            seq_s = _load_seq(seq_ptr, s, L, ssl)
        for k in tl.static_range(W):
            pos = s + (k - (W - 1))
            v = _load_xp(x_ptr, init_ptr, d, d_mask, pos, L, sxd, sxl, sid, sil, W, HAS_INIT)
            if HAS_SEQ:
                if k < W - 1:
                    v = tl.where(_load_seq(seq_ptr, pos, L, ssl) == seq_s, v, 0.0)
            dw += tl.where(kk == k, tl.sum(g * v, axis=1)[:, None], 0.0)
    part = b * n_chunks + pid_c
    tl.store(dw_ptr + part * D * W + d * W + kk, dw, mask=d_mask & (kk < W))
    tl.store(db_ptr + part * D + d, db, mask=d_mask)
    if HAS_INIT:
        if pid_c == 0:
            s = tl.arange(0, INIT_PAD)[None, :] - (W - 1)
            dinit, _ = _dx_at(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, dout_ptr, d, d_mask, s, L,
                              sxd, sxl, swd, swk, sid, sil, ssl, sgd, sgl, W, HAS_BIAS, HAS_SEQ, HAS_INIT, SILU)
            tl.store(dinit_ptr + b * sjb + d * sjd + (s + (W - 1)) * sjl, dinit.to(dinit_ptr.dtype.element_ty),
                     mask=d_mask & (s < 0))


# --- launchers -----------------------------------------------------------------------------------------
def _channel_last(x: Tensor) -> bool:
    return x.stride(1) == 1 and x.stride(2) != 1 and x.shape[2] > 1


def _like_layout(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A fresh (NaN-poisoned in tests) tensor of x's shape and layout (channel-first or channel-last)."""
    batch, dim, length = x.shape
    if _channel_last(x):
        return new_output((batch, length, dim), dtype, x.device).transpose(1, 2)
    return new_output((batch, dim, length), dtype, x.device)


@functools.lru_cache(maxsize=None)
def _blocks(dim: int, length: int, channel_last: bool, tile: int, max_block_l: int) -> Tuple[int, int]:
    """(BLOCK_D, BLOCK_L): `tile` elements, the long side along the contiguous axis."""
    if channel_last:
        block_d = min(triton.next_power_of_2(dim), 128)
        block_l = max(1, min(triton.next_power_of_2(length), tile // block_d))
    else:
        block_l = min(triton.next_power_of_2(length), max_block_l)
        block_d = max(1, min(triton.next_power_of_2(dim), tile // block_l))
    return block_d, block_l


def _strides3(t: Optional[Tensor]) -> Tuple[int, int, int]:
    return (0, 0, 0) if t is None else t.stride()


def _forward_launch(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
                    initial_states: Optional[Tensor], silu: bool) -> Tensor:
    batch, dim, length = x.shape
    width = weight.shape[1]
    y = _like_layout(x, x.dtype)
    block_d, block_l = _blocks(dim, length, _channel_last(x), 4096, MAX_BLOCK_L)
    grid = (triton.cdiv(length, block_l), triton.cdiv(dim, block_d), batch)
    _fwd_kernel[grid](
        x, weight, x if bias is None else bias, x if seq_idx is None else seq_idx,
        x if initial_states is None else initial_states, y,
        dim, length, *x.stride(), *weight.stride(), *_strides3(initial_states),
        *((0, 0) if seq_idx is None else seq_idx.stride()), *y.stride(),
        W=width, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, HAS_INIT=initial_states is not None,
        SILU=silu, BLOCK_D=block_d, BLOCK_L=block_l, num_warps=4)
    return y


def _backward_launch(x, weight, bias, seq_idx, initial_states, dout, silu, need_dinit):
    batch, dim, length = x.shape
    width = weight.shape[1]
    block_d, block_l = _blocks(dim, length, _channel_last(x), 2048, MAX_BLOCK_L)
    n_tiles = triton.cdiv(length, block_l)
    # enough programs to fill the GPU, but few partial sums: chunks of several L tiles per program
    programs = batch * triton.cdiv(dim, block_d) * n_tiles
    tiles_per_chunk = max(1, min(n_tiles, programs // BWD_TARGET_PROGRAMS))
    n_chunks = triton.cdiv(n_tiles, tiles_per_chunk)
    dx = _like_layout(x, x.dtype)
    dinit = new_output((batch, dim, width - 1), x.dtype if initial_states is None else initial_states.dtype,
                       x.device)
    dw_part = new_output((batch * n_chunks, dim, width), torch.float32, x.device)
    db_part = new_output((batch * n_chunks, dim), torch.float32, x.device)
    has_init = initial_states is not None and width > 1
    _bwd_kernel[(n_chunks, triton.cdiv(dim, block_d), batch)](
        x, weight, x if bias is None else bias, x if seq_idx is None else seq_idx,
        x if initial_states is None else initial_states, dout, dx, dinit, dw_part, db_part,
        dim, length, tiles_per_chunk, n_chunks,
        *x.stride(), *weight.stride(), *_strides3(initial_states),
        *((0, 0) if seq_idx is None else seq_idx.stride()), *dout.stride(), *dx.stride(), *dinit.stride(),
        W=width, W_PAD=triton.next_power_of_2(width), INIT_PAD=triton.next_power_of_2(max(width - 1, 1)),
        HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, HAS_INIT=has_init, SILU=silu,
        BLOCK_D=block_d, BLOCK_L=block_l, num_warps=4)
    if not has_init and need_dinit:
        dinit.zero_()  # W == 1: an empty state, nothing to write
    return dx, dw_part.sum(0), db_part.sum(0), dinit


# --- autograd wiring -----------------------------------------------------------------------------------
@torch.library.custom_op("ssm_kernels::causal_conv1d_triton", mutates_args=())
def _forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
             initial_states: Optional[Tensor], silu: bool) -> Tensor:
    return _forward_launch(x, weight, bias, seq_idx, initial_states, silu)


@_forward.register_fake
def _(x, weight, bias, seq_idx, initial_states, silu):
    batch, dim, length = x.shape
    if _channel_last(x):
        return x.new_empty((batch, length, dim)).transpose(1, 2)
    return x.new_empty((batch, dim, length))


@torch.library.custom_op("ssm_kernels::causal_conv1d_triton_bwd", mutates_args=())
def _backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
              initial_states: Optional[Tensor], dout: Tensor, silu: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dw, db, dinit = _backward_launch(x, weight, bias, seq_idx, initial_states, dout, silu, True)
    return dx, dw.to(weight.dtype), db.to(weight.dtype if bias is None else bias.dtype), dinit


@_backward.register_fake
def _(x, weight, bias, seq_idx, initial_states, dout, silu):
    batch, dim, length = x.shape
    dx = x.new_empty((batch, length, dim)).transpose(1, 2) if _channel_last(x) else x.new_empty(x.shape)
    return (dx, weight.new_empty(weight.shape), (weight if bias is None else bias).new_empty((dim,)),
            (x if initial_states is None else initial_states).new_empty((batch, dim, weight.shape[1] - 1)))


def _setup_context(ctx, inputs, output):
    x, weight, bias, seq_idx, initial_states, silu = inputs
    ctx.save_for_backward(x, weight, bias, seq_idx, initial_states)
    ctx.silu = silu


def _autograd_backward(ctx, dout):
    x, weight, bias, seq_idx, initial_states = ctx.saved_tensors
    dx, dweight, dbias, dinit = _backward(x, weight, bias, seq_idx, initial_states, dout, ctx.silu)
    return (dx, dweight, dbias if bias is not None else None, None,
            dinit if initial_states is not None else None, None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


# --- backend function ----------------------------------------------------------------------------------
def supports(device, dtype, features) -> Optional[str]:
    if dtype == torch.float64:
        return "Triton kernels take fp32 / fp16 / bf16 inputs, got float64"
    if features.get("width", 1) > MAX_WIDTH:
        return f"the Triton kernel supports widths up to {MAX_WIDTH}, got {features['width']}"
    return None


def causal_conv1d_triton(x, weight, bias=None, activation=None, seq_idx=None, initial_states=None):
    """Triton backend of ssm_kernels.causal_conv1d (arguments already validated). Returns y (B, D, L)."""
    return _forward(x, weight, bias, seq_idx, initial_states, activation == "silu")
