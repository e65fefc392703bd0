"""selective_scan: the Mamba-1 selective state space scan, and mamba_ssm's selective_scan_fn."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch
from .._autograd import needs_grad
from .._utils import COMPLEX_DTYPES, REAL_DTYPES, ArgCheck, PassedChecks
from .._context_parallel import reject
from ._common import check_bc
from .context_parallel import selective_scan_context_parallel


def _kernel_supports(device, dtype, features) -> Optional[str]:
    """The Triton and the CUDA kernels: fp32 / fp16 / bf16 inputs, computed in fp32."""
    if features.get("fp64_A"):
        return "the selective scan's kernels compute in fp32; fp64 / complex128 A runs on the torch backend"
    return _dispatch.kernel_dtype_supports(device, dtype, features)


_dispatch.register("selective_scan", "torch", "ssm_kernels.selective_scan.pytorch", "selective_scan_torch")
_dispatch.register("selective_scan", "triton", "ssm_kernels.selective_scan.triton", "selective_scan_triton",
                   supports=_kernel_supports)
_dispatch.register("selective_scan", "cuda", "ssm_kernels.selective_scan.cuda", "selective_scan_cuda",
                   supports=_kernel_supports, extension="selective_scan")

PARAM_DTYPES = (torch.float32, torch.float64)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                   initial_state: Optional[torch.Tensor] = None, return_final_state: bool = False,
                   cu_seqlens: Optional[torch.Tensor] = None, backend: Optional[str] = None, cp_group=None):
    """Mamba-1 selective scan.

    With Δ = softplus(delta + delta_bias) (softplus only when delta_softplus; delta_bias optional):
        h_t = exp(Δ_t A) * h_{t-1} + Δ_t u_t B_t        (h_{-1} = initial_state, zeros by default)
        y_t = C_t . h_t + D u_t,   y_t *= silu(z_t)
    For complex A, y_t = 2 Re(C_t . h_t) + D u_t, as mamba_ssm computes it (the state holds one of each
    conjugate pair of modes).

    Args:
        u, delta: (B, D, L) fp32 / fp16 / bf16 (fp64 on the torch backend); any strides.
        A: (D, N) fp32 (fp64) or complex64 (complex128).
        B, C: (D, N) fixed, (B, N, L) variable, or (B, G, N, L) grouped (G divides D; channel d uses group
            d // (D / G)). With complex A: fixed ones complex; variable ones complex, or real of length 2L with
            real and imaginary parts interleaved ((B, N, 2L) / (B, G, N, 2L)), as mamba_ssm takes them.
        D, delta_bias: (D,) or None, fp32 (fp64).
        z: (B, D, L) or None: the output gate.
        initial_state: (B, D, N), or (S, D, N) with cu_seqlens; fp32 (complex64 for complex A), fp64 allowed.
        return_final_state: also return the final state: (B, D, N), or (S, D, N) with cu_seqlens, the last
            state of every sequence (an empty sequence's is its initial state), in A's compute dtype (fp32 /
            complex64, fp64 / complex128 for fp64 inputs).
        cu_seqlens: (S + 1,) int32 / int64 cumulative sequence lengths of packed sequences, only with B == 1:
            starts at 0, non-decreasing, ends at L. The state restarts at every sequence start.
        cp_group: a torch.distributed process group over which the sequence is split, or None: each rank passes
            its contiguous shard of u, delta, z and variable B / C (ranks in order, lengths >= 1 may differ), the
            same parameters and initial_state, and gets its shard of y and the whole sequence's final state
            (ssm_kernels._context_parallel: two scans of the shard, one O(B D N) all_gather; not with
            cu_seqlens).
        backend: None (automatic), "torch", "triton" or "cuda".
    Returns:
        y (B, D, L) in u's dtype, or (y, final_state) with return_final_state.
    Example:
        >>> import torch, ssm_kernels
        >>> u, delta = torch.randn(2, 8, 32), torch.rand(2, 8, 32)
        >>> A, B, C = -torch.rand(8, 4), torch.randn(2, 4, 32), torch.randn(2, 4, 32)
        >>> y, h = ssm_kernels.selective_scan(u, delta, A, B, C, delta_softplus=True, return_final_state=True)
        >>> y.shape, h.shape
        (torch.Size([2, 8, 32]), torch.Size([2, 8, 4]))
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    key = _PASSED.key(tensors, delta_softplus) if cu_seqlens is None else None  # cu_seqlens: values checked
    if not _PASSED.known(key):
        _validate(*tensors, delta_softplus, cu_seqlens)
        _PASSED.remember(key)

    if cp_group is not None:
        reject("selective_scan", cu_seqlens=cu_seqlens)
        y, final_state = selective_scan_context_parallel(selective_scan, u, delta, A, B, C, D, z, delta_bias,
                                                         delta_softplus, initial_state, cp_group, backend)
        return (y, final_state) if return_final_state else y
    # size: B * D * L, the numel of u
    fn = _dispatch.select("selective_scan", u.device, backend=backend, dtype=u.dtype, size=u.numel(),
                          grad=needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state),
                          fp64_A=A.dtype in (torch.float64, torch.complex128))
    y, final_state = fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens)
    return (y, final_state) if return_final_state else y


_PASSED = PassedChecks()  # a model calls it once per layer and step with the same signature: see PassedChecks


def _validate(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, cu_seqlens):
    check = ArgCheck("selective_scan")
    check.tensor("u", u, ("B", "D", "L"), dtypes=REAL_DTYPES)
    check.tensor("delta", delta, ("B", "D", "L"), dtypes=REAL_DTYPES)
    check.tensor("A", A, ("D", "N"), dtypes=PARAM_DTYPES + COMPLEX_DTYPES)
    check_bc(check, "B", B, A.is_complex())
    check_bc(check, "C", C, A.is_complex())
    check.tensor("D", D, ("D",), dtypes=PARAM_DTYPES, optional=True)
    check.tensor("z", z, ("B", "D", "L"), dtypes=REAL_DTYPES, optional=True)
    check.tensor("delta_bias", delta_bias, ("D",), dtypes=PARAM_DTYPES, optional=True)
    if not isinstance(delta_softplus, bool):
        check.fail(f"delta_softplus must be a bool, got {type(delta_softplus).__name__}", TypeError)
    state_rows = "B"
    if cu_seqlens is not None:
        check.cu_seqlens(cu_seqlens, check.dims["L"], check.dims["B"], allow_empty=True)
        state_rows = "S"
    state_dtypes = COMPLEX_DTYPES if A.is_complex() else PARAM_DTYPES
    check.tensor("initial_state", initial_state, (state_rows, "D", "N"), dtypes=state_dtypes, optional=True)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """mamba_ssm's selective_scan_fn: same arguments and return convention (out, or (out, last_state)).
    See selective_scan for the shapes.

    Example:
        >>> import torch, ssm_kernels
        >>> u, delta = torch.randn(2, 8, 32), torch.rand(2, 8, 32)
        >>> A, B, C = -torch.rand(8, 4), torch.randn(2, 4, 32), torch.randn(2, 4, 32)
        >>> out, last_state = ssm_kernels.selective_scan_fn(u, delta, A, B, C, return_last_state=True)
        >>> out.shape, last_state.shape
        (torch.Size([2, 8, 32]), torch.Size([2, 8, 4]))
    """
    return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                          return_final_state=return_last_state)


__all__ = ["selective_scan", "selective_scan_fn"]
