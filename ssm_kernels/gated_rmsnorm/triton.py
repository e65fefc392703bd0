"""Triton backend of gated_rmsnorm: one forward kernel and one backward kernel.

Layout: x, z (..., D) with any strides. The leading dimensions are merged where their strides allow into at
most two row dimensions (rows = r0 * n1 + r1, offsets r0 * s0 + r1 * s1); only a layout that cannot be
merged into two (three or more leading dimensions with unrelated strides) is copied with .contiguous().
Tiles are (BLOCK_M rows, BLOCK_G channels of one group); D is the contiguous axis of the usual layout, so
the loads are coalesced along it (Triton specialises a unit stride).

Forward, grid (cdiv(M, BLOCK_M), G): per row and group u = x (or x * silu(z) when norm_before_gate=False),
rstd = 1 / sqrt(mean(u^2) + eps), y = u * rstd * w (* silu(z) when norm_before_gate=True); fp32 math, y in
x's dtype (contiguous (..., D)). Nothing is stored for backward but the inputs (rstd is recomputed).

Backward, grid (row programs, G): each program loops over its rows in BLOCK_M tiles, recomputes n = u * rstd,
and with gy = dy * w (* silu(z) when the gate follows the norm):
    du = rstd * (gy - n * mean(gy * n)),   dx = du (* silu(z) when the gate comes first),
    dz = dy * n * w * silu'(z) (gate after) or du * x * silu'(z) (gate first),
and accumulates its partial dweight = sum over rows of dy * n (* silu(z)) in fp32 registers, written to a
(programs, D) buffer and summed with torch (deterministic: no atomics).

With a linear layer after the norm (linear_weight: Mamba-2's out_proj, as mamba_ssm fuses it), the norm's output
is not kept for the backward: the backward takes the layer's input gradient dy = dout W first, and the norm's
backward kernel writes the output again (STORE_Y) for the weight's gradient dout^T y, which costs one write
instead of a forward pass reading x and z again.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._autograd import define_custom_op
from .._triton_launch import launch
from .._utils import cdiv, new_output, next_power_of_2
from ._common import then_linear

# The backward uses about this many row programs per group (fewer partial dweight rows to sum).
BWD_TARGET_PROGRAMS = 1024


# --- kernels -------------------------------------------------------------------------------------------
@triton.jit
def _silu_parts(z):
    """(sigmoid(z), silu(z)) in fp32."""
    s = 1.0 / (1.0 + tl.exp(-z))
    return s, z * s


@triton.jit
def _normed_output(n, w, gate, HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):
    """The output from the normalised rows n (BLOCK_M, BLOCK_G): n * w, then * silu(z) (gate) when the gate
    follows the norm. Shared by the forward and by the backward that writes the output again."""
    y = n * w[None, :]
    if HAS_Z:
        if NORM_BEFORE_GATE:
            y = y * gate
    return y


@triton.jit
def _fwd_kernel(x_ptr, z_ptr, w_ptr, y_ptr, M, N1, GS, eps,
                sx0, sx1, sxd, sz0, sz1, szd, swd, sy0, sy1, syd,
                HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    pid_m = tl.program_id(0)
    group = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    r0 = rows // N1
    r1 = rows % N1
    cols = tl.arange(0, BLOCK_G)
    d = group * GS + cols
    mask = (rows < M)[:, None] & (cols < GS)[None, :]
    x = tl.load(x_ptr + (r0 * sx0 + r1 * sx1)[:, None] + d[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + d * swd, mask=cols < GS, other=0.0).to(tl.float32)
    gate = x  # (without z: unused)
    if HAS_Z:
        z = tl.load(z_ptr + (r0 * sz0 + r1 * sz1)[:, None] + d[None, :] * szd, mask=mask, other=0.0).to(tl.float32)
        _, gate = _silu_parts(z)
        if not NORM_BEFORE_GATE:
            x = x * gate
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / GS + eps)
    y = _normed_output(x * rstd[:, None], w, gate, HAS_Z, NORM_BEFORE_GATE)
    tl.store(y_ptr + (r0 * sy0 + r1 * sy1)[:, None] + d[None, :] * syd, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(x_ptr, z_ptr, w_ptr, dy_ptr, dx_ptr, dz_ptr, dw_ptr, y_ptr, M, N1, GS, eps, rows_per_program,
                sx0, sx1, sxd, sz0, sz1, szd, swd, sdy0, sdy1, sdyd, sdx0, sdx1, sdxd, sdz0, sdz1, sdzd, sdwp, sym,
                HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, STORE_Y: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    pid_m = tl.program_id(0)
    group = tl.program_id(1)
    cols = tl.arange(0, BLOCK_G)
    col_mask = cols < GS
    d = group * GS + cols
    w = tl.load(w_ptr + d * swd, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_G], dtype=tl.float32)
    first = pid_m * rows_per_program
    for start in range(first, first + rows_per_program, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        r0 = rows // N1
        r1 = rows % N1
        mask = ((rows < M) & (rows < first + rows_per_program))[:, None] & col_mask[None, :]
        x = tl.load(x_ptr + (r0 * sx0 + r1 * sx1)[:, None] + d[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + (r0 * sdy0 + r1 * sdy1)[:, None] + d[None, :] * sdyd, mask=mask,
                     other=0.0).to(tl.float32)
        u = x
        gate = x  # (without z: unused)
        if HAS_Z:
            z = tl.load(z_ptr + (r0 * sz0 + r1 * sz1)[:, None] + d[None, :] * szd, mask=mask,
                        other=0.0).to(tl.float32)
            sig, gate = _silu_parts(z)
            dgate = sig * (1.0 + z * (1.0 - sig))  # silu'(z)
            if not NORM_BEFORE_GATE:
                u = x * gate
        rstd = 1.0 / tl.sqrt(tl.sum(u * u, axis=1) / GS + eps)
        n = u * rstd[:, None]
        if STORE_Y:  # the forward's output again (contiguous, as the forward writes it), for a GEMM reading it
            y = _normed_output(n, w, gate, HAS_Z, NORM_BEFORE_GATE)
            tl.store(y_ptr + rows[:, None] * sym + d[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
        gy = dy * w[None, :]
        if HAS_Z:
            if NORM_BEFORE_GATE:
                dz = dy * n * w[None, :] * dgate
                gy = gy * gate
                dw += tl.sum(dy * n * gate, axis=0)
            else:
                dw += tl.sum(dy * n, axis=0)
        else:
            dw += tl.sum(dy * n, axis=0)
        du = rstd[:, None] * (gy - n * (tl.sum(gy * n, axis=1) / GS)[:, None])
        dx = du
        if HAS_Z:
            if not NORM_BEFORE_GATE:
                dx = du * gate
                dz = du * x * dgate
            tl.store(dz_ptr + (r0 * sdz0 + r1 * sdz1)[:, None] + d[None, :] * sdzd,
                     dz.to(dz_ptr.dtype.element_ty), mask=mask)
        tl.store(dx_ptr + (r0 * sdx0 + r1 * sdx1)[:, None] + d[None, :] * sdxd, dx.to(dx_ptr.dtype.element_ty),
                 mask=mask)
    tl.store(dw_ptr + pid_m * sdwp + d, dw, mask=col_mask)


# --- launchers -----------------------------------------------------------------------------------------
def _row_dims(t: Tensor) -> Optional[Tuple[int, int, int, int]]:
    """(n0, n1, s0, s1) with row r at offset (r // n1) * s0 + (r % n1) * s1, or None when the leading
    dimensions of t do not merge into two."""
    dims: List[Tuple[int, int]] = [(n, s) for n, s in zip(t.shape[:-1], t.stride()[:-1]) if n != 1]
    merged: List[Tuple[int, int]] = []
    for n, s in dims:
        if merged and merged[-1][1] == n * s:  # the previous dimension steps over this whole one
            merged[-1] = (merged[-1][0] * n, s)
        else:
            merged.append((n, s))
    if len(merged) > 2:
        return None
    while len(merged) < 2:
        merged.insert(0, (1, 0))
    (n0, s0), (n1, s1) = merged
    return n0, n1, s0, s1


def _rows(t: Tensor) -> Tuple[Tensor, Tuple[int, int, int, int]]:
    dims = _row_dims(t)
    if dims is None:  # three or more leading dimensions with unrelated strides: one copy
        t = t.contiguous()
        dims = _row_dims(t)
    return t, dims


@functools.lru_cache(maxsize=None)
def _blocks(group_size: int) -> Tuple[int, int, int]:
    """(BLOCK_M, BLOCK_G, num_warps): about 4096 elements per tile, at least one whole group per row."""
    block_g = next_power_of_2(group_size)
    block_m = max(1, min(64, 4096 // block_g))
    num_warps = 4 if block_g * block_m <= 4096 else 8
    return block_m, block_g, num_warps


def _forward_launch(x: Tensor, weight: Tensor, z: Optional[Tensor], eps: float, group_size: int,
                    norm_before_gate: bool) -> Tensor:
    dim = x.shape[-1]
    x_r, (_, n1, sx0, sx1) = _rows(x)
    m = x.numel() // dim
    z_r, (_, _, sz0, sz1) = _rows(z) if z is not None else (x_r, (0, 0, 0, 0))
    if z is not None and _row_dims(z_r)[1] != n1:  # z's rows split differently from x's
        z_r, x_r = z_r.contiguous(), x_r.contiguous()
        (_, n1, sx0, sx1), (_, _, sz0, sz1) = _row_dims(x_r), _row_dims(z_r)
    y = new_output(x.shape, x.dtype, x.device)
    if m == 0:
        return y
    block_m, block_g, num_warps = _blocks(group_size)
    grid = (cdiv(m, block_m), dim // group_size)
    launch(_fwd_kernel, grid, x_r, z_r, weight, y, m, n1, group_size, eps,
           sx0, sx1, x_r.stride(-1), sz0, sz1, z_r.stride(-1), weight.stride(0),
           dim * n1 if m else 0, dim, 1,
           HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate,
           BLOCK_M=block_m, BLOCK_G=block_g, num_warps=num_warps)
    return y


def _backward_launch(x, weight, z, dy, eps, group_size, norm_before_gate, store_y: bool = False):
    """(dx, dz or None, dweight), and with store_y the forward's output y (contiguous (..., D)) recomputed on the
    way (one more write instead of a forward pass reading x and z again)."""
    dim = x.shape[-1]
    m = x.numel() // dim
    y = new_output(x.shape, x.dtype, x.device) if store_y else x.new_empty(0)
    if m == 0:
        return torch.zeros_like(x), (torch.zeros_like(z) if z is not None else None), torch.zeros_like(weight), y
    # one row layout for all four (..., D) tensors: x's, unless the others do not share it
    tensors = [x, dy] + ([z] if z is not None else [])
    dims = [_row_dims(t) for t in tensors]
    if any(d is None or d[:2] != dims[0][:2] for d in dims):
        tensors = [t.contiguous() for t in tensors]
        dims = [_row_dims(t) for t in tensors]
    x_r, dy_r = tensors[0], tensors[1]
    z_r = tensors[2] if z is not None else x_r
    n1 = dims[0][1]
    (sx0, sx1), (sdy0, sdy1) = dims[0][2:], dims[1][2:]
    sz0, sz1 = dims[2][2:] if z is not None else (0, 0)
    dx = new_output(x.shape, x.dtype, x.device)
    dz = new_output(z.shape, z.dtype, z.device) if z is not None else dx
    block_m, block_g, num_warps = _blocks(group_size)
    groups = dim // group_size
    row_blocks = cdiv(m, block_m)
    programs = max(1, min(row_blocks, BWD_TARGET_PROGRAMS // groups))
    rows_per_program = cdiv(row_blocks, programs) * block_m
    programs = cdiv(m, rows_per_program)
    dw_part = new_output((programs, dim), torch.float32, x.device)
    launch(
        _bwd_kernel, (programs, groups),
        x_r, z_r, weight, dy_r, dx, dz, dw_part, y if store_y else dx, m, n1, group_size, eps, rows_per_program,
        sx0, sx1, x_r.stride(-1), sz0, sz1, z_r.stride(-1), weight.stride(0), sdy0, sdy1, dy_r.stride(-1),
        dim * n1, dim, 1, dim * n1, dim, 1, dw_part.stride(0), dim,
        HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate, STORE_Y=store_y,
        BLOCK_M=block_m, BLOCK_G=block_g, num_warps=num_warps)
    return dx, (dz if z is not None else None), dw_part.sum(0).to(weight.dtype), y


# --- autograd wiring -----------------------------------------------------------------------------------
def _forward(x: Tensor, weight: Tensor, z: Optional[Tensor], eps: float, group_size: int,
             norm_before_gate: bool) -> Tensor:
    return _forward_launch(x, weight, z, eps, group_size, norm_before_gate)


def _backward(x: Tensor, weight: Tensor, z: Optional[Tensor], dy: Tensor, eps: float, group_size: int,
              norm_before_gate: bool) -> Tuple[Tensor, Tensor, Tensor]:
    dx, dz, dw, _ = _backward_launch(x, weight, z, dy, eps, group_size, norm_before_gate)
    return dx, (dz if dz is not None else x.new_empty(0)), dw


def _backward_fake(x, weight, z, dy, eps, group_size, norm_before_gate):
    return x.new_empty(x.shape), (z.new_empty(z.shape) if z is not None else x.new_empty(0)), \
        weight.new_empty(weight.shape)


def _save(ctx, inputs, output):
    x, weight, z, eps, group_size, norm_before_gate = inputs
    ctx.save_for_backward(x, weight, z)
    ctx.args = (eps, group_size, norm_before_gate)


def _gradients(backward_op, ctx, dy):
    x, weight, z = ctx.saved_tensors
    dx, dz, dw = backward_op(x, weight, z, dy, *ctx.args)
    return dx, dw, (dz if z is not None else None), None, None, None


_run = define_custom_op("gated_rmsnorm_triton", _forward, lambda x, *_: x.new_empty(x.shape), _backward,
                        _backward_fake, _save, _gradients)


# --- the norm with a linear layer after it (linear_weight): its output is not kept for the backward -------
def _linear_forward(x: Tensor, weight: Tensor, z: Optional[Tensor], linear_weight: Tensor,
                    linear_bias: Optional[Tensor], eps: float, group_size: int, norm_before_gate: bool) -> Tensor:
    return then_linear(_forward_launch(x, weight, z, eps, group_size, norm_before_gate), linear_weight, linear_bias)


def _linear_forward_fake(x, weight, z, linear_weight, linear_bias, eps, group_size, norm_before_gate):
    return x.new_empty((*x.shape[:-1], linear_weight.shape[0]), dtype=linear_weight.dtype)


def _linear_backward(x: Tensor, weight: Tensor, z: Optional[Tensor], linear_weight: Tensor, dout: Tensor,
                     eps: float, group_size: int, norm_before_gate: bool,
                     bias_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The linear layer's input gradient first (dy = dout W), then the norm's backward, which also writes the
    norm's output y again for the weight's gradient (dout^T y): no forward pass of the norm in the backward."""
    rows = dout.reshape(-1, dout.shape[-1])  # (M, O)
    dy = (rows @ linear_weight).view(x.shape)
    dx, dz, dw, y = _backward_launch(x, weight, z, dy, eps, group_size, norm_before_gate, store_y=True)
    dlinear = rows.t() @ y.view(-1, x.shape[-1]).to(rows.dtype)
    dbias = rows.sum(0) if bias_grad else rows.new_empty(0)
    return dx, (dz if dz is not None else x.new_empty(0)), dw, dlinear, dbias


def _linear_backward_fake(x, weight, z, linear_weight, dout, eps, group_size, norm_before_gate, bias_grad):
    return (x.new_empty(x.shape), z.new_empty(z.shape) if z is not None else x.new_empty(0),
            weight.new_empty(weight.shape), linear_weight.new_empty(linear_weight.shape),
            dout.new_empty(linear_weight.shape[:1] if bias_grad else (0,)))


def _linear_save(ctx, inputs, output):
    x, weight, z, linear_weight, linear_bias, eps, group_size, norm_before_gate = inputs
    ctx.save_for_backward(x, weight, z, linear_weight)
    ctx.args = (eps, group_size, norm_before_gate)
    ctx.has_bias = linear_bias is not None


def _linear_gradients(backward_op, ctx, dout):
    x, weight, z, linear_weight = ctx.saved_tensors
    bias_grad = ctx.has_bias and ctx.needs_input_grad[4]
    dx, dz, dw, dlinear, dbias = backward_op(x, weight, z, linear_weight, dout, *ctx.args, bias_grad)
    return dx, dw, (dz if z is not None else None), dlinear, (dbias if bias_grad else None), None, None, None


_run_linear = define_custom_op("gated_rmsnorm_linear_triton", _linear_forward, _linear_forward_fake,
                               _linear_backward, _linear_backward_fake, _linear_save, _linear_gradients)


# --- backend function (supports: the lambda registered in __init__.py rejects fp64) ------------------
def gated_rmsnorm_triton(x, weight, z=None, eps=1e-6, group_size=None, norm_before_gate=True, linear_weight=None,
                         linear_bias=None):
    """Triton backend of ssm_kernels.gated_rmsnorm (arguments already validated). Returns y (..., D), or
    y @ linear_weight^T + linear_bias (..., O) where linear_weight is given."""
    group_size = x.shape[-1] if group_size is None else int(group_size)
    if linear_weight is not None:
        return _run_linear(x, weight, z, linear_weight, linear_bias, float(eps), group_size, bool(norm_before_gate))
    return _run(x, weight, z, float(eps), group_size, bool(norm_before_gate))
