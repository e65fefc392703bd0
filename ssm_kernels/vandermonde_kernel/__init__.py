"""vandermonde_kernel: the S4D / DSS convolution kernel K = 2 Re(C · z^l), from log z."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch
from .._autograd import needs_grad
from .._utils import COMPLEX_DTYPES, ArgCheck

_dispatch.register("vandermonde_kernel", "torch", "ssm_kernels.vandermonde_kernel.pytorch",
                   "vandermonde_kernel_torch")
_dispatch.register("vandermonde_kernel", "triton", "ssm_kernels.vandermonde_kernel.triton",
                   "vandermonde_kernel_triton", supports=_dispatch.complex64_triton_supports)


def vandermonde_kernel(C: torch.Tensor, log_z: torch.Tensor, L: int, backend: Optional[str] = None) -> torch.Tensor:
    """K[h, l] = 2 Re sum_n C[h, n] exp(log_z[h, n] * l) for l = 0 .. L-1.

    The factor 2 and the real part account for the conjugate half of the state that S4D keeps implicit.

    Args:
        C: (H, N) complex64 / complex128; any strides.
        log_z: (H, N), C's dtype (S4D: dt * A).
        L: kernel length, an int >= 1.
        backend: None (automatic), "torch" or "triton" (complex64 only).
    Returns:
        K: (H, L) float32 for complex64, float64 for complex128; differentiable in C and log_z (torch's
        complex autograd convention). Memory O(H N sqrt(L)), not O(H N L).
    Example:
        >>> import torch, ssm_kernels
        >>> C = torch.randn(8, 4, dtype=torch.complex64)
        >>> log_z = torch.complex(-0.1 * torch.rand(8, 4), torch.rand(8, 4))
        >>> ssm_kernels.vandermonde_kernel(C, log_z, 100).shape
        torch.Size([8, 100])
    """
    check = ArgCheck("vandermonde_kernel")
    check.tensor("C", C, ("H", "N"), dtypes=COMPLEX_DTYPES)
    check.tensor("log_z", log_z, ("H", "N"), dtypes=(C.dtype,))
    L = check.integer("L", L, minimum=1)
    # size: H * N * L, the terms summed
    fn = _dispatch.select("vandermonde_kernel", C.device, backend=backend, dtype=C.dtype, size=C.numel() * L,
                          grad=needs_grad(C, log_z), beyond_int32=2 * max(C.numel(), C.shape[0] * L) >= 2 ** 31)
    return fn(C, log_z, L)


__all__ = ["vandermonde_kernel"]
