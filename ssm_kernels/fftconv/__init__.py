"""fftconv: long (global) convolution by FFT, the S4 / H3 / Hyena convolution with skip and gates."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch
from .._autograd import needs_grad
from .._utils import REAL_DTYPES, ArgCheck
from ._common import math_dtype

# The Triton kernel's FFT of 2L points keeps its tiles in registers and shared memory: bf16 inputs (bf16 dot
# operands) up to 8192 points; fp32 / fp16 inputs (fp32 operands, tf32x3) up to 4096.
MAX_TRITON_LENGTH = {torch.bfloat16: 4096, torch.float32: 2048, torch.float16: 2048}
# The CUDA kernel's transform of 2L points lives in shared memory (csrc/fftconv: 2^cuda.MAX_LOG_POINTS; cuda.py is
# not imported here: nothing heavy at import).
MAX_CUDA_LENGTH = 16384


def _triton_supports(device, dtype, features) -> Optional[str]:
    if features.get("wide"):
        return "the Triton kernel computes in fp32; an fp64 input makes the convolution fp64 (the torch backend runs it)"
    longest = MAX_TRITON_LENGTH.get(dtype)
    if longest is not None and features.get("length", 0) > longest:
        return (f"the Triton kernel takes L <= {longest} for {str(dtype).replace('torch.', '')} inputs (one FFT of "
                f"{2 * longest} points per sequence on chip); longer sequences run on the torch backend")
    return _dispatch.kernel_dtype_supports(device, dtype, features)


def _cuda_supports(device, dtype, features) -> Optional[str]:
    if features.get("wide"):
        return "the CUDA kernel computes in fp32; an fp64 input makes the convolution fp64 (the torch backend runs it)"
    if features.get("length", 0) > MAX_CUDA_LENGTH:
        return (f"the CUDA kernel takes L <= {MAX_CUDA_LENGTH} (one FFT of {2 * MAX_CUDA_LENGTH} points per "
                "sequence in shared memory); longer sequences run on the torch backend")
    return _dispatch.kernel_dtype_supports(device, dtype, features)


_dispatch.register("fftconv", "torch", "ssm_kernels.fftconv.pytorch", "fftconv_torch")
_dispatch.register("fftconv", "triton", "ssm_kernels.fftconv.triton", "fftconv_triton", supports=_triton_supports)
_dispatch.register("fftconv", "cuda", "ssm_kernels.fftconv.cuda", "fftconv_cuda", supports=_cuda_supports,
                   extension="fftconv")


def fftconv(u: torch.Tensor, k: torch.Tensor, D: Optional[torch.Tensor] = None, bidirectional: bool = False,
            pregate: Optional[torch.Tensor] = None, postgate: Optional[torch.Tensor] = None,
            backend: Optional[str] = None):
    """y = (v * k + D v) * postgate with v = u * pregate, * a convolution along the last axis.

    Causal: y_t = sum_{0 <= j < Lk} k[j] v_{t-j}. Bidirectional (state-spaces/s4's convention): k[0] is the
    causal kernel as above and k[1] the anti-causal one, y_t += sum_{0 <= j < Lk} k[1][j] v_{t+1+j}
    (k[1][0] weighs the next input). Inputs outside [0, L) are zero.

    Args:
        u: (B, H, L) fp32 / fp16 / bf16 / fp64; any strides.
        k: (H, Lk) with 1 <= Lk <= L (a shorter kernel acts as zero-padded to L), or (2, H, Lk) when
            bidirectional; real, any float dtype (fp32 parameters with bf16 inputs are fine).
        D: (H,) skip connection, or None.
        bidirectional: add the anti-causal part k[1].
        pregate, postgate: (B, H, L) multiplicative gates, or None.
        backend: None (automatic), "torch" (torch.fft, any device), "triton" (CUDA tensors, or the CPU through
            TRITON_INTERPRET=1; L <= 4096 for bf16 inputs, <= 2048 for fp32 / fp16; tensor-core DFTs fused with
            the gates and D) or "cuda" (csrc/fftconv; L <= 16384, any float dtype, fp32 shared-memory FFTs
            fused with the gates and D).
    Math runs in fp32 (fp64 when any input is fp64); y and every gradient come back in the inputs' dtypes.
    Returns:
        y: (B, H, L) in u's dtype.
    Example:
        >>> import torch, ssm_kernels
        >>> u, k = torch.randn(2, 8, 128), torch.randn(8, 128)
        >>> ssm_kernels.fftconv(u, k, D=torch.ones(8)).shape
        torch.Size([2, 8, 128])
    """
    check = ArgCheck("fftconv")
    check.tensor("u", u, ("B", "H", "L"), dtypes=REAL_DTYPES)
    length = check.dims["L"]
    check.tensor("k", k, (2, "H", "Lk") if bidirectional else ("H", "Lk"), dtypes=REAL_DTYPES)
    if length > 0:
        check.integer("k.shape[-1] (the kernel length Lk)", check.dims["Lk"], minimum=1, maximum=length)
    check.tensor("D", D, ("H",), dtypes=REAL_DTYPES, optional=True)
    check.tensor("pregate", pregate, ("B", "H", "L"), dtypes=REAL_DTYPES, optional=True)
    check.tensor("postgate", postgate, ("B", "H", "L"), dtypes=REAL_DTYPES, optional=True)

    if length == 0:
        return u.clone()  # nothing to convolve; keeps y connected to the graph like any other output
    # size: B * H * L, the numel of u
    fn = _dispatch.select("fftconv", u.device, backend=backend, dtype=u.dtype, size=u.numel(),
                          grad=needs_grad(u, k, D, pregate, postgate), length=length,
                          wide=math_dtype(u, k, D, pregate, postgate) == torch.float64)
    return fn(u, k, D, bool(bidirectional), pregate, postgate)


__all__ = ["fftconv"]
