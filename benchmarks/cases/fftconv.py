"""fftconv: the H3/Hyena long convolution with skip and both gates, causal and bidirectional. On the GPU the
cases of FlashFFTConv's comparisons (B 8, H 768, bf16 and fp32, L 4096 and 16384); the torch backend is plain
torch.fft (rfft / irfft in fp32, autograd through them), the yardstick the Triton backend is measured against.
Backends that do not take a case (the Triton and CUDA kernels' L limits) are left out of it.

Flops (TFLOP/s column) are the algorithm's, whatever a backend executes: a real transform of N = 2L points counts
2.5 N log2 N (half the radix-2 complex count 5 N log2 N), a complex product 6 per frequency. Forward per row: v's
transform, the product with the kernel's spectrum, the inverse, and 4 per position for the gates and D (u pre,
+ D v, * post); per head the transform of its kernel (both sides in one circular kernel when bidirectional).
Backward per row: g's transform, its products with the kernel's and with v's spectra (v's kept from the forward),
the inverse for dv, and 8 per position (g, dpost, + D g, du, dpre, dD); per head the inverse for dk. So the column
compares backends on equal terms, not with the ~700 TFLOP/s of bf16 tensor-core matmuls they may not use."""
from __future__ import annotations

import math

import torch

from ssm_kernels import _dispatch
from ssm_kernels.fftconv import MAX_CUDA_LENGTH, MAX_TRITON_LENGTH, fftconv
from ssm_kernels.fftconv.reference import fftconv_ref

from ..core import Case, Variant


def _case(batch: int, heads: int, length: int, bidirectional: bool, dtype: torch.dtype, reference: bool,
          device_types=("cpu", "cuda")) -> Case:
    def make(device, with_peers):
        u, pre, post = (torch.randn(batch, heads, length, device=device, dtype=dtype, requires_grad=True)
                        for _ in range(3))
        kshape = (2, heads, length) if bidirectional else (heads, length)
        k = torch.randn(kshape, device=device, requires_grad=True)
        D = torch.randn(heads, device=device, requires_grad=True)
        leaves = (u, k, D, pre, post)
        variants = {}
        for backend in _dispatch.implemented_backends("fftconv"):
            longest = {"triton": MAX_TRITON_LENGTH[dtype], "cuda": MAX_CUDA_LENGTH}.get(backend, length)
            if _dispatch.backend_problem(backend, device, "fftconv") is None and length <= longest:
                variants[backend] = Variant(lambda backend=backend: fftconv(u, k, D, bidirectional, pre, post,
                                                                            backend=backend), leaves)
        if reference:
            variants["reference"] = Variant(lambda: fftconv_ref(u, k, D, bidirectional, pre, post), leaves)
        return variants

    io = batch * heads * length * dtype.itemsize
    kernel = (2 if bidirectional else 1) * heads * length * 4
    kind = "bidir" if bidirectional else "causal"
    flops_fwd, flops_bwd = flops(batch * heads, heads, length)
    return Case("fftconv", f"B{batch} H{heads} L{length} {kind} {str(dtype).replace('torch.', '')}", make,
                bytes_fwd=4 * io + kernel, bytes_fwd_bwd=11 * io + 3 * kernel,
                flops_fwd=flops_fwd, flops_fwd_bwd=flops_fwd + flops_bwd,
                dtype=dtype, dispatch_size=batch * heads * length, device_types=device_types)


def flops(rows: int, heads: int, length: int):
    """(forward, backward) flops of `rows` convolutions of `length` positions with one kernel per head, as the module
    docstring counts them."""
    points = 2 * length
    transform = 2.5 * points * math.log2(points)
    product = 6 * (points // 2 + 1)
    forward = rows * (2 * transform + product + 4 * length) + heads * transform
    backward = rows * (2 * transform + 2 * product + 8 * length) + heads * transform
    return int(forward), int(backward)


def cases(quick: bool):
    if quick:
        return [_case(2, 64, 1024, False, torch.float32, True), _case(2, 64, 1024, True, torch.float32, False)]
    cpu, gpu = ("cpu",), ("cuda",)
    return [_case(4, 256, 4096, False, torch.float32, True, cpu), _case(4, 256, 4096, True, torch.float32, False, cpu),
            _case(8, 768, 4096, False, torch.bfloat16, False, gpu),
            _case(8, 768, 2048, False, torch.float32, False, gpu),
            _case(8, 768, 2048, False, torch.float16, False, gpu),
            _case(8, 768, 4096, True, torch.bfloat16, False, gpu),
            _case(8, 768, 1024, False, torch.bfloat16, False, gpu),
            _case(8, 768, 16384, False, torch.bfloat16, False, gpu),
            _case(8, 768, 4096, False, torch.float32, False, gpu)]
