"""Linear layers on channels-first activations (B, C, L), L contiguous, as the Mamba-1 block keeps them.

The conv and the scan read and write rows along L; nn.Linear works on (B, L, C). These GEMMs read and write the
channels-first layout directly (weight @ activations^T), so no transposing copy sits between them.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._split_linear import gemm_dtype, split_linear


def split_channels(xz: torch.Tensor):
    """xz (B, 2C, L) -> its halves x, z (B, C, L) (views, as xz.chunk(2, dim=1)), whose backward writes the
    gradient of xz in xz's own memory layout: for channels_first_linear's output, (2C, B, L) in memory, which
    its GEMM's backward reads as one (2C, B L) matrix (chunk's backward, a cat, writes a contiguous (B, 2C, L)
    that the GEMM's backward first copies into that layout)."""
    if not (torch.is_grad_enabled() and xz.requires_grad):  # inference: no autograd.Function to go through
        return xz.chunk(2, dim=1)
    return _SplitChannels.apply(xz)


class _SplitChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xz):
        ctx.layout = (xz.shape, xz.stride(), xz.dtype, xz.device)
        return xz.chunk(2, dim=1)

    @staticmethod
    def backward(ctx, dx, dz):
        shape, stride, dtype, device = ctx.layout
        dxz = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        half = shape[1] // 2
        for part, grad in ((dxz[:, :half], dx), (dxz[:, half:], dz)):
            if grad is None:
                part.zero_()
            else:
                part.copy_(grad)
        return dxz


def channels_first_linear_halves(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """channels_first_linear then split_channels, as one autograd step: x (B, L, K) -> the two halves (B, C, L)
    of nn.Linear's output (views of one GEMM's (2C, B L) result), under autocast in its dtype.

    Its backward takes the halves' gradients as they lie: where each is in the GEMM output's (C, B, L) memory
    order (the conv's and the selective scan's backward write their input gradients in their inputs' layout),
    the weight's gradient and the input's are GEMMs reading them in place, without split_channels' copy of
    both into one (2C, B L) gradient; a gradient in another layout is copied into that order first."""
    half = weight.shape[0] // 2
    return split_linear(x, weight, bias, (half, half), channels_first=True)


def batched_linear(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight (O, K) @ x (B, K, L) -> (B, O, L): one batched GEMM over a broadcast weight (torch.matmul would
    copy a strided x to fold its batch into rows)."""
    return torch.bmm(weight.expand(x.shape[0], -1, -1), x)


def batched_linear_and_input(weight: torch.Tensor, x: torch.Tensor):
    """(x, batched_linear(weight, x)) for a block that reads x (B, K, L) twice: through this GEMM and through
    another op (the Mamba block's scan reads the conv output x_proj projects), under autocast in its dtype.

    Autograd would sum the two gradients of x in a separate kernel (a (B, K, L) tensor read twice and written);
    here x's other use takes the first output (x's values, a view), and the backward adds the GEMM's input
    gradient into that use's gradient inside the GEMM (baddbmm), as mamba_ssm's mamba_inner_fn does: in place
    where nothing else holds that gradient (the selective scan's du, which the Mamba block's x feeds), which
    spares copying it first (268 MB of traffic at (4, 4096, 4096) bf16)."""
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return x, batched_linear(weight, x)  # inference: no autograd.Function to go through
    return _LinearAndInput.apply(x, weight, gemm_dtype(x))


class _LinearAndInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, dtype):
        ctx.set_materialize_grads(False)
        xc, w = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(xc, w)
        ctx.dtypes = (x.dtype, weight.dtype)
        return x.view_as(x), batched_linear(w, xc)

    @staticmethod
    def backward(ctx, dx_other, dout):
        x, w = ctx.saved_tensors
        x_dtype, weight_dtype = ctx.dtypes
        dx = dweight = None
        if dout is not None:
            dout = dout.to(w.dtype)
            wt = w.t().expand(x.shape[0], -1, -1)  # (B, K, O)
            if ctx.needs_input_grad[0]:  # (B, K, L)
                if dx_other is None:
                    dx = torch.bmm(wt, dout)
                elif _addable_in_place(dx_other, w.dtype):
                    dx = dx_other.baddbmm_(wt, dout)
                else:
                    dx = torch.baddbmm(dx_other.to(w.dtype), wt, dout)
            if ctx.needs_input_grad[1]:
                dweight = torch.bmm(dout, x.transpose(1, 2)).sum(0).to(weight_dtype)  # (O, K)
        elif ctx.needs_input_grad[0] and dx_other is not None:
            dx = dx_other
        return None if dx is None else dx.to(x_dtype), dweight, None


def _addable_in_place(grad: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether a backward may add into an incoming gradient in place: one the engine alone holds (an op's
    backward made it for this use only: not a cotangent the caller passed, nor one an add's backward also
    hands its other input), dense, in `dtype`, not a view, and no graph records (double backward, tracing).
    The engine's own test before it steals a gradient (AccumulateGrad) is the same reference count."""
    if torch.compiler.is_compiling() or torch.is_grad_enabled():  # (Dynamo traces no _use_count)
        return False
    return (grad.dtype == dtype and grad._use_count() == 1 and grad._base is None and grad.is_contiguous()
            and not grad.requires_grad)


def linear_from_channels_first(y: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """nn.Linear applied to y (B, K, L) read as (B, L, K): -> (B, L, O), under autocast in its dtype.

    F.linear(y.transpose(1, 2), ...) copies y into (B L, K) rows before its GEMM whenever the weight needs a
    gradient; here the forward reads y transposed in a batched GEMM, and the backward writes dy as (B, K, L)
    (the layout the scan's backward reads) and takes the weight's gradient in one GEMM over B L."""
    dtype = gemm_dtype(y)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (y, weight, bias)):
        return _LinearFromChannelsFirst.apply(y, weight, bias, dtype)
    return _forward(y, weight.to(dtype), bias, dtype)  # inference: no autograd.Function to go through


def _forward(y: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    y = y.to(dtype)
    rows = _rows_view(y)
    if rows is not None:  # one GEMM over the B L positions
        out = (rows @ w.t()).view(y.shape[0], y.shape[2], -1)
    else:
        out = torch.bmm(y.transpose(1, 2), w.t().expand(y.shape[0], -1, -1))  # (B, L, O)
    return out if bias is None else out + bias.to(dtype)


def _rows_view(y: torch.Tensor) -> Optional[torch.Tensor]:
    """y (B, K, L) as the (B L, K) matrix of its positions where that is a view (y in (K, B, L) memory order,
    as the selective scan writes its output for the Mamba block's channels-first activations), else None."""
    batch, width, seqlen = y.shape
    if batch == 1 or y.stride(0) == seqlen * y.stride(2):
        return y.transpose(1, 2).reshape(batch * seqlen, width)
    return None


class _LinearFromChannelsFirst(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, weight, bias, dtype):
        w = weight.to(dtype)
        out = _forward(y, w, bias, dtype)
        ctx.save_for_backward(y, w)
        ctx.dtypes = (y.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx, dout):
        y, w = ctx.saved_tensors
        y_dtype, weight_dtype, bias_dtype = ctx.dtypes
        dout = dout.to(w.dtype)
        dy = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dy = torch.bmm(w.t().expand(dout.shape[0], -1, -1), dout.transpose(1, 2)).to(y_dtype)  # (B, K, L)
        if ctx.needs_input_grad[1]:
            dweight = weight_grad(dout, y.to(w.dtype)).to(weight_dtype)
        if bias_dtype is not None and ctx.needs_input_grad[2]:
            dbias = dout.sum((0, 1)).to(bias_dtype)
        return dy, dweight, dbias, None


_BMM_REFUSES_OUT_DTYPE = set()  # device types where torch.bmm refused out_dtype (CPU; torch before it had one)


def weight_grad(dout: torch.Tensor, y: torch.Tensor, partials: Optional[bool] = None) -> torch.Tensor:
    """The weight gradient of out = y^T @ weight^T: dout (B, L, O) and y (B, K, L), one dtype -> (O, K) =
    sum over b and l of dout[b, l, :]^T y[b, :, l], accumulated in fp32 (returned in fp32 or dout's dtype).

    Where y lies in (K, B, L) order its (b, l) positions are one matrix axis: one GEMM reads it in place.
    Otherwise a single GEMM needs y copied into (B L, K) rows: a transposing copy of the whole activation (134 MB
    at (4, 4096, 4096) bf16). The `partials` form instead runs
    one GEMM per batch row (bmm reads y_b transposed as it lies) writing fp32 partials (B, O, K), summed over
    the batch: no copy, and no rounding of the partials to bf16. It is taken (partials=None) on CUDA when the
    partials are no larger than the copy (O <= L) and torch's bmm writes fp32 from fp16 / bf16 (out_dtype)."""
    batch, seqlen, width_out = dout.shape
    rows = _rows_view(y)
    if rows is not None:  # y's positions are one matrix axis already: one GEMM, no copy, no partials
        return dout.reshape(-1, width_out).t() @ rows
    if partials is None:
        partials = y.is_cuda and width_out <= seqlen and (y.dtype == torch.float32 or
                                                          y.device.type not in _BMM_REFUSES_OUT_DTYPE)
    if partials:
        a, b = dout.transpose(1, 2), y.transpose(1, 2)  # (B, O, L), (B, L, K)
        if y.dtype == torch.float32:
            return torch.bmm(a, b).sum(0)
        try:
            return torch.bmm(a, b, out_dtype=torch.float32).sum(0)
        except (TypeError, RuntimeError, NotImplementedError):  # no out_dtype in this torch / for this device
            _BMM_REFUSES_OUT_DTYPE.add(y.device.type)
    rows = y.transpose(1, 2).reshape(-1, y.shape[1])  # (B L, K)
    return dout.reshape(-1, width_out).t() @ rows
