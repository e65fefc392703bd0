"""Triton backend of fftconv: the FFT convolution as Monarch DFT-matrix products on tensor cores, fused with
the gates and the skip, one program per (head, two batch rows), forward and backward one kernel each
(_triton_fwd.py, _triton_bwd.py; the DFT steps in _triton_monarch.py).

The transform has N = N1 N2 points, the power of two >= 2L (at least MIN_POINTS; at most 8192 for bf16 inputs
and 4096 for fp32 / fp16 ones: the per-program tiles live on chip, see MAX_TRITON_LENGTH), so any such L works and no circular wrap-around reaches
an output, causal or bidirectional. Per call, torch computes the kernel's spectrum once ((H, 2, N1, N2) fp32,
divided by N); the (B, H, N) spectra of the inputs never exist in memory. Nothing but the inputs is saved for
the backward, which recomputes the input spectra.

Precision: bf16 inputs multiply bf16 operands on tensor cores (about 4e-3 relative error against the exact
convolution, within bf16's tolerance of 1e-2); fp32 and fp16 inputs use three tf32 products per dot (tf32x3,
about 1e-7), since one rounding to bf16 / fp16 per step would miss their tolerances (fp16 operands would also
risk overflow in the spectrum). Accumulation, twiddles and the pointwise products are fp32.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor
from triton.runtime.errors import OutOfResources

from .._autograd import define_custom_op
from .._triton_launch import launch_fitting_shared_memory
from .._utils import cdiv, new_output
from ._common import absent, backward_fake, circular_kernel, forward_fake, gradients, save_for_backward
from ._triton_bwd import _fftconv_bwd_kernel
from ._triton_fwd import _fftconv_fwd_kernel
from ._triton_monarch import OPERANDS_TF32X3, dft_tables, fft_shape, operand_mode

MIN_POINTS = 512  # N1 / 2 and N2 >= 16 (tensor-core dot dimensions)
CHUNK = 32  # spectrum rows per step (read at each call, so a tuning run may set it)
MIN_CHUNK = 16
# Warps per kernel and operand kind (python -m benchmarks tune fftconv; H200, B8 H768: bf16 at L4096, tf32x3 (fp32
# inputs) at L2048): fewer warps spill more registers, and 4-warp tf32x3 backwards compile to 32 registers and
# thousands of spills (20x slower).
NUM_WARPS = {"forward": {"bf16": 4, "tf32x3": 8}, "backward": {"bf16": 8, "tf32x3": 8}}


def kernel_spectrum(k: Tensor, bidirectional: bool, n1: int, n2: int) -> Tensor:
    """(H, 2, N1, N2) fp32: the DFT of the circular kernel divided by N, real and imaginary planes, frequency
    k1 + N1 k2 at [k1, k2]."""
    points = n1 * n2
    spectrum = torch.fft.fft(circular_kernel(k, bidirectional, points)) / points
    spectrum = spectrum.view(-1, n2, n1).transpose(1, 2)
    return torch.stack([spectrum.real, spectrum.imag], dim=1).contiguous()


def _strides(t: Optional[Tensor], like: Tensor):
    """(tensor, its three strides), or `like` and zeros for an absent one (a dummy pointer the kernel never reads)."""
    return (like, 0, 0, 0) if t is None else (t, *t.stride())


def _setup(u: Tensor, k: Tensor, bidirectional: bool):
    batch, heads, length = u.shape
    n1, n2 = fft_shape(length, MIN_POINTS)
    n_pairs = cdiv(batch, 2)
    operands = operand_mode(u.dtype, u.device)
    meta = dict(N1=n1, N2=n2, CHUNK=min(CHUNK, n1), OPERANDS=operands)
    tables = dft_tables(n1, n2, u.device, operands)
    return n_pairs, (n_pairs * heads,), kernel_spectrum(k, bidirectional, n1, n2), tables, meta


def _warps(kernel: str, meta: dict) -> int:
    return NUM_WARPS[kernel]["tf32x3" if meta["OPERANDS"] == OPERANDS_TF32X3 else "bf16"]


def _launch(kernel, grid, *args, CHUNK: int, **meta):
    """kernel[grid] with the fewest pipelining stages' shared memory cut first, then halved chunks (the
    fp32 operands of the dots take twice the shared memory of bf16 ones)."""
    while True:
        try:
            return launch_fitting_shared_memory(kernel, grid, *args, CHUNK=CHUNK, **meta)
        except OutOfResources:
            if CHUNK <= MIN_CHUNK:
                raise
            CHUNK //= 2


def _forward(u: Tensor, k: Tensor, D: Optional[Tensor], bidirectional: bool, pregate: Optional[Tensor],
             postgate: Optional[Tensor]) -> Tensor:
    batch, heads, length = u.shape
    n_pairs, grid, spectrum, tables, meta = _setup(u, k, bidirectional)
    y = new_output(u.shape, u.dtype, u.device)
    _launch(
        _fftconv_fwd_kernel, grid,
        *_strides(u, u), *_strides(pregate, u), *_strides(postgate, u), *_strides(y, u),
        D if D is not None else u, spectrum, *tables, batch, n_pairs, length,
        HAS_SKIP=D is not None, HAS_PRE=pregate is not None, HAS_POST=postgate is not None,
        num_warps=_warps("forward", meta), **meta)
    return y


def _backward(grad: Tensor, u: Tensor, k: Tensor, D: Optional[Tensor], bidirectional: bool,
              pregate: Optional[Tensor], postgate: Optional[Tensor]) -> List[Tensor]:
    """[du, dk, dD, dpregate, dpostgate] in the inputs' shapes and dtypes (empty for an absent input)."""
    batch, heads, length = u.shape
    taps = k.shape[-1]
    n_pairs, grid, spectrum, tables, meta = _setup(u, k, bidirectional)
    du = new_output(u.shape, u.dtype, u.device)
    dpre = new_output(u.shape, pregate.dtype, u.device) if pregate is not None else None
    dpost = new_output(u.shape, postgate.dtype, u.device) if postgate is not None else None
    dskip = new_output((n_pairs, heads), torch.float32, u.device) if D is not None else None
    dk = new_output((n_pairs, 2 if bidirectional else 1, heads, taps), torch.float32, u.device)
    _launch(
        _fftconv_bwd_kernel, grid,
        *_strides(grad, u), *_strides(u, u), *_strides(pregate, u), *_strides(postgate, u),
        *_strides(du, u), *_strides(dpre, u), *_strides(dpost, u),
        dskip if dskip is not None else dk, dk, D if D is not None else u, spectrum, *tables,
        batch, n_pairs, heads, length, taps,
        HAS_SKIP=D is not None, HAS_PRE=pregate is not None, HAS_POST=postgate is not None,
        BIDIRECTIONAL=bidirectional, num_warps=_warps("backward", meta), **meta)
    dk = dk.sum(0).reshape(k.shape).to(k.dtype)
    return [du, dk, dskip.sum(0).to(D.dtype) if D is not None else absent(u),
            dpre if dpre is not None else absent(u), dpost if dpost is not None else absent(u)]


fftconv_triton = define_custom_op("fftconv_triton", _forward, forward_fake, _backward, backward_fake, save_for_backward,
                                  gradients)
fftconv_triton.__doc__ = "Triton backend: (u, k, D, bidirectional, pregate, postgate) -> y (B, H, L)."
