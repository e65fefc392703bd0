"""selective_state_update: one decoding step of the selective scan (Mamba-1 and Mamba-2 shapes), in place."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _dispatch
from .._utils import INDEX_DTYPES, REAL_DTYPES, ArgCheck, PassedChecks

_dispatch.register("selective_state_update", "torch", "ssm_kernels.selective_state_update.pytorch",
                   "selective_state_update_torch")
_dispatch.register("selective_state_update", "triton", "ssm_kernels.selective_state_update.triton",
                   "selective_state_update_triton", supports=_dispatch.kernel_dtype_supports)


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                           z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
                           dt_softplus: bool = False, state_batch_indices: Optional[torch.Tensor] = None,
                           dt_proj_weight: Optional[torch.Tensor] = None,
                           backend: Optional[str] = None) -> torch.Tensor:
    """One step of the selective scan; `state` is updated in place (no autograd: an "update" op).

        dt' = softplus(dt + dt_bias)       state <- exp(dt' A) * state + dt' x B
        out = (C . state + D x) * silu(z)

    Two forms, as in mamba_ssm:
      Mamba-1: state (Bc, D, N); x, dt, z (B, D); A (D, N); B, C (B, N) or (B, G, N) (channel d uses group
               d // (D / G), as in selective_scan); D, dt_bias (D,).
      Mamba-2: state (Bc, H, P, N); x, dt, z (B, H, P); A (H, P, N) (typically expanded from (H,) with
               stride 0); B, C (B, G, N) (head h uses group h // (H / G)); D, dt_bias (H, P).
    Args:
        state: fp32 / fp16 / bf16 (fp64) state cache; Bc == B without state_batch_indices.
        x, dt, z: the step's inputs, fp32 / fp16 / bf16 (fp64).
        A, D, dt_bias: parameters in any float dtype, read in the math's precision (fp32; fp64 for fp64 x): a
            bf16 model passes its D and dt_bias as they are, without a cast kernel per layer and token.
        state_batch_indices: (B,) int32 / int64 cache row of each batch entry (distinct, in [0, Bc)).
        dt_proj_weight: Mamba-1 form only: (D, R) weight of the dt projection (Mamba's dt_proj.weight, any float
            dtype); dt is then its low-rank input (B, R) and the step computes dt @ dt_proj_weight^T itself, in
            fp32 (one GEMM kernel per layer and token fewer than projecting first; dt_bias is still added).
        backend: None (automatic), "torch" or "triton".
    Returns:
        out in x's shape and dtype.
    Example:
        >>> import torch, ssm_kernels
        >>> state, x, dt = torch.zeros(2, 8, 4), torch.randn(2, 8), torch.rand(2, 8)
        >>> A, B, C = -torch.rand(8, 4), torch.randn(2, 4), torch.randn(2, 4)
        >>> ssm_kernels.selective_state_update(state, x, dt, A, B, C, dt_softplus=True).shape  # state updated in place
        torch.Size([2, 8])
    """
    tensors = (state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, dt_proj_weight)
    key = _PASSED.key(tensors, dt_softplus)
    if not _PASSED.known(key):
        _validate(*tensors, dt_softplus)
        _PASSED.remember(key)
    # size: the numel of state (a decoding step: no backward)
    fn = _dispatch.select("selective_state_update", state.device, backend=backend, dtype=x.dtype,
                          size=state.numel())
    return fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, dt_proj_weight)


_PASSED = PassedChecks()  # called once per decoded token: see PassedChecks


def _validate(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices, dt_proj_weight, dt_softplus):
    check = ArgCheck("selective_state_update")
    if not isinstance(state, torch.Tensor):
        check.tensor("state", state)
    heads_form = state.dim() == 4
    channels = ("H", "P") if heads_form else ("D",)
    check.tensor("state", state, ("Bc",) + channels + ("N",), dtypes=REAL_DTYPES)
    check.tensor("x", x, ("B",) + channels, dtypes=REAL_DTYPES)
    if dt_proj_weight is None:
        check.tensor("dt", dt, ("B",) + channels, dtypes=REAL_DTYPES)
    elif heads_form:
        check.fail("dt_proj_weight is for the Mamba-1 form (state (Bc, D, N)); the Mamba-2 form's dt is per head")
    else:
        check.tensor("dt_proj_weight", dt_proj_weight, ("D", "R"), dtypes=REAL_DTYPES)
        check.tensor("dt", dt, ("B", "R"), dtypes=REAL_DTYPES)
    check.tensor("A", A, channels + ("N",), dtypes=REAL_DTYPES)
    for name, X in (("B", B), ("C", C)):
        if not heads_form and isinstance(X, torch.Tensor) and X.dim() == 2:
            check.tensor(name, X, ("B", "N"), dtypes=REAL_DTYPES)
        else:
            check.tensor(name, X, ("B", f"G_{name}", "N"), dtypes=REAL_DTYPES)
            if X.shape[1] < 1 or check.dims[channels[0]] % X.shape[1]:
                check.fail(f"{name} has {X.shape[1]} groups, which must divide "
                           f"{channels[0]} = {check.dims[channels[0]]}")
    check.tensor("D", D, channels, dtypes=REAL_DTYPES, optional=True)
    check.tensor("z", z, ("B",) + channels, dtypes=REAL_DTYPES, optional=True)
    check.tensor("dt_bias", dt_bias, channels, dtypes=REAL_DTYPES, optional=True)
    check.tensor("state_batch_indices", state_batch_indices, ("B",), dtypes=INDEX_DTYPES, optional=True)
    if state_batch_indices is None and state.shape[0] != x.shape[0]:
        check.fail(f"state must have shape (B, ...) with B = {x.shape[0]} rows without state_batch_indices, "
                   f"got {tuple(state.shape)}")
    if not isinstance(dt_softplus, bool):
        check.fail(f"dt_softplus must be a bool, got {type(dt_softplus).__name__}", TypeError)


__all__ = ["selective_state_update"]
