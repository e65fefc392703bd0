"""linear_scan: the first-order linear recurrence x_t = a_t * x_{t-1} + b_t (S5, LRU, EMA)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch
from .._autograd import needs_grad
from .._utils import COMPLEX_DTYPES, REAL_DTYPES, ArgCheck
from .._context_parallel import reject
from ._common import final_state, result_dtypes
from .context_parallel import linear_scan_context_parallel

SCAN_DTYPES = REAL_DTYPES + COMPLEX_DTYPES


def _fp32_math_supports(device, dtype, features) -> Optional[str]:
    """The Triton and CUDA kernels compute in fp32 / complex64."""
    if features.get("wide"):
        return ("the kernel computes in fp32 / complex64; an fp64 / complex128 input makes the scan 64-bit "
                "(the torch backend runs it)")
    return _dispatch.kernel_dtype_supports(device, dtype, features)


_dispatch.register("linear_scan", "torch", "ssm_kernels.linear_scan.pytorch", "linear_scan_torch")
_dispatch.register("linear_scan", "cpp", "ssm_kernels.linear_scan.cpp", "linear_scan_cpp")
_dispatch.register("linear_scan", "triton", "ssm_kernels.linear_scan.triton", "linear_scan_triton",
                   supports=_fp32_math_supports)
_dispatch.register("linear_scan", "cuda", "ssm_kernels.linear_scan.cuda", "linear_scan_cuda",
                   supports=_fp32_math_supports, extension="linear_scan")

_GATE_SHAPES = {3: ("B", "D", "L"), 2: ("D", "L"), 1: ("D",)}


def linear_scan(gates: torch.Tensor, tokens: torch.Tensor, initial_state: Optional[torch.Tensor] = None,
                reverse: bool = False, return_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
                backend: Optional[str] = None, cp_group=None):
    """First-order linear recurrence along the last axis.

    x_t = a_t * x_{t-1} + b_t with x_{-1} = initial_state (zeros without it); with reverse the scan runs
    from the end: x_t = a_t * x_{t+1} + b_t, the initial state entering after position L-1.
    Gates may be zero (resets) or larger than 1 in magnitude anywhere.

    Args:
        gates: a, (B, D, L), or (D, L) / (D,) shared over the batch (and over time for (D,)); real or
            complex (fp32, fp16, bf16, fp64, complex64, complex128); any strides.
        tokens: b, (B, D, L), same dtype choices; any strides.
        initial_state: (B, D), (S, D) with cu_seqlens, or None.
        reverse: scan from the end.
        return_final_state: also return the (B, D) state after the last step (x_{L-1}; x_0 with reverse;
            the initial state, or zeros, when L == 0); (S, D), one per sequence, with cu_seqlens.
        cu_seqlens: (S + 1,) int32 / int64 cumulative lengths of S sequences packed along L (B == 1; from 0
            to L, non-decreasing: empty sequences pass their initial state through), or None. Each sequence
            is its own scan from its own initial state.
        cp_group: a torch.distributed process group over which the sequence is split, or None. Each rank passes
            its contiguous shard (ranks in order; lengths may differ, each >= 1), the same initial_state and
            gets its shard of x and the whole sequence's final state (ssm_kernels._context_parallel: two scans
            of the shard and one O(B D) all_gather; not with cu_seqlens).
        backend: None (automatic), "torch" (chunked pure PyTorch, any device), "cpp" (csrc/cpu's C++ loop,
            CPU tensors; the automatic choice for them where it builds) or "triton" (CUDA tensors, fp32 /
            complex64 math; the CPU through TRITON_INTERPRET=1) or "cuda" (csrc/linear_scan, built on first use).
    Dtypes: the scan is complex when any of gates, tokens, initial_state is complex (a real gate with
        complex tokens is the usual S5/LRU case). x keeps the tokens' precision: the tokens' dtype for a real
        scan, else complex64 (complex128 for fp64/complex128 tokens). Math runs in fp32/complex64, or in
        fp64/complex128 when any input is 64-bit. Gradients come back in each input's dtype (the real part
        for a real input of a complex scan; summed over the dims a broadcast gate was shared across).
    Returns:
        x: (B, D, L), or (x, final_state (B, D) or (S, D)) with return_final_state.
    Example:
        >>> import torch, ssm_kernels
        >>> gates, tokens = torch.rand(2, 8, 100), torch.randn(2, 8, 100)
        >>> x = ssm_kernels.linear_scan(gates, tokens)
        >>> torch.allclose(x[..., 1], gates[..., 1] * x[..., 0] + tokens[..., 1])
        True
    """
    check = ArgCheck("linear_scan")
    check.tensor("tokens", tokens, ("B", "D", "L"), dtypes=SCAN_DTYPES)
    if not isinstance(gates, torch.Tensor) or gates.dim() not in _GATE_SHAPES:
        if isinstance(gates, torch.Tensor):
            check.fail(f"gates must have shape (B, D, L) = {tuple(tokens.shape)}, (D, L) or (D,), "
                       f"got {tuple(gates.shape)}")
        check.tensor("gates", gates)  # raises the TypeError naming gates
    check.tensor("gates", gates, _GATE_SHAPES[gates.dim()], dtypes=SCAN_DTYPES)
    if cu_seqlens is not None:
        check.cu_seqlens(cu_seqlens, tokens.shape[-1], tokens.shape[0], allow_empty=True)
    check.tensor("initial_state", initial_state, ("B" if cu_seqlens is None else "S", "D"), dtypes=SCAN_DTYPES,
                 optional=True)

    if cp_group is not None:
        reject("linear_scan", cu_seqlens=cu_seqlens)
        x, final = linear_scan_context_parallel(linear_scan, gates, tokens, initial_state, bool(reverse), cp_group,
                                                backend)
        return (x, final) if return_final_state else x
    if tokens.shape[-1] == 0:
        x = tokens.to(result_dtypes(gates, tokens, initial_state)[1]).clone()
    else:
        # size: B * D * L, the numel of tokens
        fn = _dispatch.select("linear_scan", tokens.device, backend=backend, dtype=tokens.dtype,
                              size=tokens.numel(), grad=needs_grad(gates, tokens, initial_state),
                              wide=result_dtypes(gates, tokens, initial_state)[0] in (torch.float64, torch.complex128))
        x = fn(gates, tokens, initial_state, cu_seqlens, bool(reverse))
    if return_final_state:
        return x, final_state(x, initial_state, bool(reverse), cu_seqlens)
    return x


__all__ = ["linear_scan"]
