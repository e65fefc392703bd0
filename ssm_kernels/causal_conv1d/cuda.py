"""Binding to csrc/causal_conv1d: the CUDA forward and backward kernels as torch custom ops with autograd.

The kernels take fp32 weight and bias (cast here, so autograd returns their gradients in the caller's
dtypes), int32 seq_idx, and x / dout with unit stride along L; outputs are allocated here.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._autograd import define_custom_op
from .._utils import new_output
from ._common import gradients, save_for_backward


def _unit_stride_l(t: Tensor) -> Tensor:
    # not .contiguous(): a size-1 L keeps whatever stride it has (torch calls that contiguous)
    return t if t.stride(-1) == 1 else t.clone(memory_format=torch.contiguous_format)


def _forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
             initial_states: Optional[Tensor], silu: bool) -> Tensor:
    out = new_output(x.shape, x.dtype, x.device)
    torch.ops.ssm_kernels_cuda.causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, silu, out)
    return out


def _backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
              initial_states: Optional[Tensor], dout: Tensor, silu: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    batch, dim, _ = x.shape
    width = weight.shape[1]
    dx = new_output(x.shape, x.dtype, x.device)
    dweight = new_output(weight.shape, torch.float32, x.device)
    dbias = new_output((dim,), torch.float32, x.device)
    dinitial = new_output((batch, dim, width - 1), x.dtype, x.device)
    torch.ops.ssm_kernels_cuda.causal_conv1d_bwd(x, weight, bias, seq_idx, initial_states, _unit_stride_l(dout),
                                                 silu, dx, dweight, dbias, dinitial)
    return dx, dweight, dbias, dinitial


def _backward_fake(x, weight, bias, seq_idx, initial_states, dout, silu):
    batch, dim, _ = x.shape
    return (x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty((dim,)),
            x.new_empty((batch, dim, weight.shape[1] - 1)))


_run = define_custom_op("causal_conv1d_cuda", _forward, lambda x, *_: x.new_empty(x.shape), _backward,
                        _backward_fake, save_for_backward, gradients)


def causal_conv1d_cuda(x, weight, bias=None, activation=None, seq_idx=None, initial_states=None):
    """CUDA backend of ssm_kernels.causal_conv1d (arguments already validated). Returns y (B, D, L)."""
    return _run(_unit_stride_l(x), weight.float().contiguous(),
                None if bias is None else bias.float().contiguous(),
                None if seq_idx is None else seq_idx.to(torch.int32).contiguous(),
                initial_states, activation == "silu")
