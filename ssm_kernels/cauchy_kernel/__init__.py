"""cauchy_kernel: the Cauchy matrix-vector product of S4's DPLR kernel, K = sum_n v / (z - w)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch
from .._autograd import needs_grad
from .._utils import COMPLEX_DTYPES, ArgCheck

_dispatch.register("cauchy_kernel", "torch", "ssm_kernels.cauchy_kernel.pytorch", "cauchy_kernel_torch")
_dispatch.register("cauchy_kernel", "triton", "ssm_kernels.cauchy_kernel.triton", "cauchy_kernel_triton",
                   supports=_dispatch.complex64_triton_supports)


def cauchy_kernel(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """K[h, l] = sum_n v[h, n] / (z[l] - w[h, n]).

    Args:
        v: (H, N) complex64 / complex128; any strides.
        z: (L,), v's dtype (S4: the frequencies at which the kernel's generating function is evaluated).
        w: (H, N), v's dtype (the diagonal part of the state matrix); z - w must not vanish.
        backend: None (automatic), "torch" or "triton" (complex64 only).
    Returns:
        K: (H, L) in v's dtype; differentiable in v, z and w (torch's complex autograd convention).
        Memory O(H N) per chunk of z, not O(H N L).
    Example:
        >>> import torch, ssm_kernels
        >>> v, w = torch.randn(8, 4, dtype=torch.complex64), torch.randn(8, 4, dtype=torch.complex64)
        >>> z = torch.exp(2j * torch.pi * torch.arange(16) / 16).to(torch.complex64)
        >>> ssm_kernels.cauchy_kernel(v, z, w).shape
        torch.Size([8, 16])
    """
    check = ArgCheck("cauchy_kernel")
    check.tensor("v", v, ("H", "N"), dtypes=COMPLEX_DTYPES)
    check.tensor("z", z, ("L",), dtypes=(v.dtype,))
    check.tensor("w", w, ("H", "N"), dtypes=(v.dtype,))
    # size: H * N * L, the Cauchy sums computed
    fn = _dispatch.select("cauchy_kernel", v.device, backend=backend, dtype=v.dtype, size=v.numel() * z.numel(),
                          grad=needs_grad(v, z, w), beyond_int32=2 * max(v.numel(), v.shape[0] * z.numel()) >= 2 ** 31)
    return fn(v, z, w)


__all__ = ["cauchy_kernel"]
