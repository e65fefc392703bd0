"""Binding to csrc/fftconv: the CUDA FFT convolution, forward and backward, as torch custom ops with autograd.

One thread block per (batch, head) row at a time transforms the row in shared memory: N = 2M >= 2L real points
(a power of two, at least 2 * 2^MIN_LOG_POINTS) as one M-point complex FFT of radix-16 passes, fp32 throughout
for every input dtype (fp32, fp16, bf16), gates and D applied while loading and storing; nothing but the inputs
and outputs is read or written in global memory. A forward that records a gradient also saves each row's transform
V of v = u * pregate ((B, H, M, 2) fp32: 8 bytes per frequency and row, 4 L bytes more per row than a bf16 output
of L positions), which spares the backward the transform of v (one of its three per row) and its buffer: two
transforms and two buffers of shared memory per row (natively, H100 B8 H768 bf16 forward+backward: L 4096 1.309 ->
1.177 ms, L 16384 9.09 -> 6.06). With a postgate from SAVE_UNGATED_FROM positions on, it also
saves the output before that gate (in the kernels' dtype), which spares the backward its recomputation of the
convolution (an inverse transform) for one more write.
L <= 2^MAX_LOG_POINTS (M <= 16384: 128 KB of shared memory per buffer). Torch computes the kernel's spectrum (rfft of
the circular kernel, (H, M + 1) complex) once per forward, an input of the op that its backward reuses (natively,
H100 B8 H768 L 4096 bf16: forward+backward 1.428 -> 1.377 ms); the twiddle table is cached per size and device.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .._autograd import define_custom_op, needs_grad
from .._utils import new_output
from ._common import absent, backward_fake, circular_kernel, gradients, save_for_backward, unit_roots

MIN_LOG_POINTS = 5  # M >= 32 complex points: one warp's worth of work per pass
MAX_LOG_POINTS = 14  # csrc/fftconv/fft_block.cuh, kMaxLogPoints: L <= 2^14 (fftconv.MAX_CUDA_LENGTH)
# Threads per block of both kernels (read at each call, so a tuning run may set it). None: the backward's blocks
# have one radix-16 group per thread and pass (M / 16 threads), the forward's two (M / 32: fewer blocks' worth
# of barriers and more blocks per SM; natively 6% faster at L 4096, H100), within 32..512.
BLOCK_THREADS: Optional[int] = None
# Sequence length from which a forward that records a gradient saves its output before the postgate (read at each
# call). Natively (H100, B8 H768, both gates, this path: benchmarks/results/h100_fftconv_saved_ungated.txt):
# forward+backward 9% faster at L 4096 bf16 (1.584 ms against 1.745), 7% at 16384, 4% at 2048 fp32, 9% at 4096
# fp32, the forward unchanged (0.509 / 0.253 ms). An earlier version of this path made the forward 14-19% slower
# at L <= 2048, and shorter lengths are not measured: from 2048.
SAVE_UNGATED_FROM = 2048
_TWIDDLES: Dict[Tuple[int, torch.device], Tensor] = {}


def _kernels():
    """The compiled ops (the dispatcher loads csrc/fftconv before the first call; tests substitute a CPU model
    of the same row code)."""
    return torch.ops.ssm_kernels_cuda


def log_points(length: int) -> int:
    """log2 M of the transform for sequences of `length`: N = 2M the power of two >= 2L."""
    return max(MIN_LOG_POINTS, (2 * length - 1).bit_length() - 1)


def block_threads(log_m: int, forward: bool) -> int:
    if BLOCK_THREADS is not None:
        return BLOCK_THREADS
    groups_per_thread = 2 if forward else 1
    return min(512, max(32, (1 << log_m) // (16 * groups_per_thread)))


def pass_radix_logs(log_m: int) -> List[int]:
    """log2 of each pass's radix, as csrc/fftconv/fft_block.cuh's make_transform plans them: 16 first, the rest
    last."""
    return [4] * (log_m // 4) + ([log_m % 4] if log_m % 4 else [])


def twiddles(log_m: int, device: torch.device) -> Tensor:
    """(entries, 2) fp32, the kernels' twiddle table: W^k = exp(-2 pi i k / N) for k in [0, M/2], then per pass
    of block S and radix R the bases exp(-2 pi i o / S) for o < S / R (their powers are made in registers);
    from exact integer phases in fp64; cached per size and device."""
    key = (log_m, device)
    if key not in _TWIDDLES:
        parts = [unit_roots(torch.arange((1 << (log_m - 1)) + 1), 2 << log_m)]
        log_block = log_m
        for radix_log in pass_radix_logs(log_m):
            parts.append(unit_roots(torch.arange(1 << (log_block - radix_log)), 1 << log_block))
            log_block -= radix_log
        _TWIDDLES[key] = torch.cat(parts).to(device, torch.float32).contiguous()
    return _TWIDDLES[key]


def kernel_spectrum(k: Tensor, bidirectional: bool, log_m: int) -> Tensor:
    """(H, M + 1, 2) fp32: FFT_N of the circular kernel at frequencies 0..M, divided by 2N (the kernels' real-FFT
    identities double the inputs' spectra, and the inverse transform is unnormalised)."""
    points = 2 << log_m
    spectrum = torch.fft.rfft(circular_kernel(k, bidirectional, points)) / (2 * points)
    spectrum = torch.view_as_real(spectrum).contiguous()
    spectrum[:, 0, 1] = 0.0  # a real kernel's spectrum is real at 0 and N / 2; the kernels rely on it exactly
    spectrum[:, -1, 1] = 0.0
    return spectrum


def _one_dtype(u: Tensor, *gates: Optional[Tensor]) -> Tuple[torch.dtype, List[Optional[Tensor]]]:
    """The kernels read u and the gates in one dtype: u's when the gates share it, else fp32 for all (exact)."""
    if all(g is None or g.dtype == u.dtype for g in gates):
        return u.dtype, [u, *gates]
    return torch.float32, [t if t is None else t.float() for t in (u, *gates)]


def _skip(D: Optional[Tensor]) -> Optional[Tensor]:
    return None if D is None else D.float().contiguous()


def _v_spectrum_shape(u: Tensor) -> Tuple[int, int, int, int]:
    return (*u.shape[:2], 1 << log_points(u.shape[-1]), 2)


def _forward(u: Tensor, k: Tensor, D: Optional[Tensor], bidirectional: bool, pregate: Optional[Tensor],
             postgate: Optional[Tensor], save_ungated: bool, save_v_spectrum: bool,
             spectrum: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(y, the output before the postgate in the kernels' dtype where save_ungated, the (B, H, M, 2) fp32 transforms
    of v = u * pregate where save_v_spectrum), an empty tensor for what is not saved; spectrum:
    kernel_spectrum(k, bidirectional, log_points(L)), made once for the forward and the backward."""
    log_m = log_points(u.shape[-1])
    dtype, (u_in, pre, post) = _one_dtype(u, pregate, postgate)
    y = new_output(u.shape, dtype, u.device)
    ungated = new_output(u.shape, dtype, u.device) if save_ungated else None
    v_spectrum = new_output(_v_spectrum_shape(u), torch.float32, u.device) if save_v_spectrum else None
    _kernels().fftconv_fwd(u_in, pre, post, _skip(D), spectrum, twiddles(log_m, u.device), log_m,
                           block_threads(log_m, forward=True), y, ungated, v_spectrum)
    return (y.to(u.dtype), absent(u) if ungated is None else ungated,
            absent(u).float() if v_spectrum is None else v_spectrum)


def _forward_fake(u, k, D, bidirectional, pregate, postgate, save_ungated, save_v_spectrum, spectrum):
    dtype = _one_dtype(u, pregate, postgate)[0]
    return (u.new_empty(u.shape), u.new_empty(u.shape if save_ungated else (0,), dtype=dtype),
            u.new_empty(_v_spectrum_shape(u) if save_v_spectrum else (0,), dtype=torch.float32))


def _backward(grad: Tensor, ungated: Optional[Tensor], v_spectrum: Tensor, spectrum: Tensor, u: Tensor, k: Tensor,
              D: Optional[Tensor], bidirectional: bool, pregate: Optional[Tensor],
              postgate: Optional[Tensor]) -> List[Tensor]:
    """[du, dk, dD, dpregate, dpostgate] in the inputs' shapes and dtypes (placeholders for absent inputs);
    ungated: the forward's output before the postgate, or None; v_spectrum, spectrum: the forward's."""
    batch, heads, length = u.shape
    log_m = log_points(length)
    dtype, (u_in, pre, post) = _one_dtype(u, pregate, postgate)
    du = new_output(u.shape, dtype, u.device)
    dpre = new_output(u.shape, dtype, u.device) if pregate is not None else None
    dpost = new_output(u.shape, dtype, u.device) if postgate is not None else None
    dskip = new_output((batch, heads), torch.float32, u.device) if D is not None else None
    dk = new_output((2 if bidirectional else 1, heads, k.shape[-1]), torch.float32, u.device)
    _kernels().fftconv_bwd(grad.to(dtype), ungated, v_spectrum, u_in, pre, post, _skip(D), spectrum,
                           twiddles(log_m, u.device), log_m, block_threads(log_m, forward=False), bidirectional, du,
                           dpre, dpost, dskip, dk)
    return [du.to(u.dtype), dk.reshape(k.shape).to(k.dtype),
            dskip.sum(0).to(D.dtype) if D is not None else absent(u),
            dpre.to(pregate.dtype) if pregate is not None else absent(u),
            dpost.to(postgate.dtype) if postgate is not None else absent(u)]


def _backward_fake(grad, ungated, v_spectrum, spectrum, u, k, D, bidirectional, pregate, postgate):
    return backward_fake(grad, u, k, D, bidirectional, pregate, postgate)


def _save_for_backward(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2])
    save_for_backward(ctx, inputs, output, output[1], output[2], inputs[8])


def _gradients(backward_op, ctx, grad, *_):
    """The shared rule, ungated, V and the kernel's spectrum (saved last; ungated empty where not saved) passed to
    the backward after grad; no gradient of the inputs where y received none. V is saved wherever autograd records
    the forward (fftconv_cuda): should a caller have called the op without it, the backward makes it first."""
    if grad is None:
        return (None,) * 9
    ungated, v_spectrum, spectrum = ctx.saved_tensors[-3:]
    ungated = ungated if ungated.numel() else None
    if not v_spectrum.numel():
        u, k, D, pregate, postgate = ctx.saved_tensors[:5]
        with torch.no_grad():
            v_spectrum = _run(u, k, D, ctx.bidirectional, pregate, None, False, True, spectrum)[2]
    return (*gradients(lambda grad, *inputs: backward_op(grad, ungated, v_spectrum, spectrum, *inputs), ctx, grad),
            None, None, None)


_run = define_custom_op("fftconv_cuda", _forward, _forward_fake, _backward, _backward_fake, _save_for_backward,
                        _gradients, materialize_grads=False)


def fftconv_cuda(u: Tensor, k: Tensor, D: Optional[Tensor], bidirectional: bool, pregate: Optional[Tensor],
                 postgate: Optional[Tensor]) -> Tensor:
    """CUDA backend: (u, k, D, bidirectional, pregate, postgate) -> y (B, H, L)."""
    recorded = needs_grad(u, k, D, pregate, postgate)
    save_ungated = recorded and postgate is not None and u.shape[-1] >= SAVE_UNGATED_FROM
    spectrum = kernel_spectrum(k.detach(), bidirectional, log_points(u.shape[-1]))
    return _run(u, k, D, bidirectional, pregate, postgate, save_ungated, recorded, spectrum)[0]
