"""ssd_chunk_scan: the Mamba-2 SSD scan (chunked), and mamba_ssm's mamba_chunk_scan_combined signature."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .. import _dispatch
from .._autograd import needs_grad
from .._context_parallel import reject
from .._utils import INDEX_DTYPES, REAL_DTYPES, ArgCheck, beyond_int32_offsets, index_extent
from .context_parallel import ssd_chunk_scan_context_parallel

_dispatch.register("ssd_chunk_scan", "torch", "ssm_kernels.ssd_chunk_scan.pytorch", "ssd_chunk_scan_torch")
_dispatch.register("ssd_chunk_scan", "triton", "ssm_kernels.ssd_chunk_scan.triton", "ssd_chunk_scan_triton",
                   supports=_dispatch.triton_int32_supports)

DEFAULT_DT_LIMIT = (0.0, float("inf"))
# the Triton backward splits a group's heads until its per-group kernels have about this many programs
# (two per H100 SM); each split writes its own dB / dC partial
SPLIT_PROGRAMS = 264


def _beyond_int32(x, dt, B, C, z, initial_states, seq_idx, chunk_size: int) -> bool:
    """Whether an input view or a buffer of the Triton kernels (which index with 32-bit offsets) reaches
    2**31 elements. The buffers are bounded from above: output / dx / dz, the chunk states, the backward's
    per-row partials and its per-split dB / dC partials (as many splits as the launcher makes at most)."""
    batch, length, heads, headdim = x.shape
    groups, dstate = B.shape[-2:]
    chunks = math.ceil(length / chunk_size)
    splits = min(heads // groups, math.ceil(SPLIT_PROGRAMS / max(chunks * batch * groups, 1)))
    buffers = (batch * length * heads * headdim,
               batch * (chunks + 1) * heads * headdim * dstate,
               batch * heads * chunks * chunk_size * (chunk_size // 64 + 2),
               splits * batch * length * groups * dstate)
    inputs = (index_extent(t) for t in (x, dt, B, C, z, initial_states, seq_idx))
    return beyond_int32_offsets(*inputs, *buffers)


def _check_dt_limit(check: ArgCheck, dt_limit) -> Tuple[float, float]:
    if not isinstance(dt_limit, (tuple, list)) or len(dt_limit) != 2:
        check.fail(f"dt_limit must be a pair (min, max), got {dt_limit!r}", TypeError)
    low = check.finite("dt_limit[0]", dt_limit[0])
    high = dt_limit[1]
    if isinstance(high, bool) or not isinstance(high, (int, float)):
        check.fail(f"dt_limit[1] must be a real number, got {type(high).__name__}", TypeError)
    if math.isnan(high) or high == -math.inf:
        check.fail(f"dt_limit[1] must be finite or +inf, got {high}")
    if low > high:
        check.fail(f"dt_limit must have min <= max, got {tuple(dt_limit)}")
    return low, float(high)


def ssd_chunk_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   chunk_size: int = 256, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                   dt_bias: Optional[torch.Tensor] = None, dt_softplus: bool = False,
                   dt_limit: Tuple[float, float] = DEFAULT_DT_LIMIT, initial_states: Optional[torch.Tensor] = None,
                   seq_idx: Optional[torch.Tensor] = None, cu_seqlens: Optional[torch.Tensor] = None,
                   return_final_states: bool = False, return_varlen_states: bool = False,
                   backend: Optional[str] = None, cp_group=None):
    """Mamba-2 SSD scan. Per head h, with dt' = clamp(softplus(dt + dt_bias) if dt_softplus else dt + dt_bias,
    *dt_limit) (the clamp always applies, as in mamba_ssm):

        state_t = exp(dt'_t A_h) state_{t-1} + dt'_t x_t B_t^T      (P, N), B/C of group h // (H / G)
        out_t   = (state_t C_t + D_h x_t) * silu(z_t)

    The result does not depend on chunk_size (it sets the chunk length of the algorithm only).

    Args:
        x: (B, L, H, P) fp32 / fp16 / bf16 (fp64 on the torch backend); any strides.
        dt: (B, L, H) raw step sizes.
        A: (H,), negative for a decaying state (fp32 also with low-precision x).
        B, C: (B, L, G, N); G (ngroups) divides H.
        chunk_size: chunk length >= 1.
        D: (H,) or (H, P) skip connection, or None.
        z: (B, L, H, P) gate, or None.
        dt_bias: (H,) or None. dt_softplus: apply softplus to dt + dt_bias.
        dt_limit: (min, max) clamp of dt'; min finite, max finite or +inf.
        initial_states: (B, H, P, N), the state before step 0; it continues the first sequence.
        seq_idx: (B, L) int32/int64: a new sequence (zero state) starts wherever seq_idx changes.
        cu_seqlens: (S + 1,) int, B = 1: packed sequences [cu_seqlens[s], cu_seqlens[s + 1]); strictly
            increasing from 0 to L (no empty sequences). The state resets at every cu_seqlens[s]; with
            seq_idx too, it resets at the boundaries of both.
        return_final_states: also return the (B, H, P, N) state after step L - 1.
        return_varlen_states: also return the (S, H, P, N) states after the last step of every sequence of
            cu_seqlens (which it requires).
        cp_group: a torch.distributed process group over which the sequence is split, or None: each rank passes
            its contiguous shard of x, dt, B, C, z (ranks in order, lengths >= 1 may differ), the same
            parameters and initial_states, and gets its shard of out and the whole sequence's final states
            (ssm_kernels._context_parallel: two scans of the shard, one O(B H P N) all_gather; not with seq_idx
            or cu_seqlens).
        backend: None (automatic), "torch" or "triton".
    Returns:
        out (B, L, H, P) in x's dtype; with return_final_states and/or return_varlen_states the tuple
        (out, final_states), (out, varlen_states) or (out, final_states, varlen_states), mamba_ssm's order.
        States are fp32 (fp64 for fp64 x). Every floating input gets a gradient, through states too.
    Example:
        >>> import torch, ssm_kernels
        >>> x, dt = torch.randn(2, 64, 4, 16), torch.rand(2, 64, 4)
        >>> A, B, C = -torch.rand(4), torch.randn(2, 64, 1, 8), torch.randn(2, 64, 1, 8)
        >>> y, final = ssm_kernels.ssd_chunk_scan(x, dt, A, B, C, chunk_size=16, return_final_states=True)
        >>> y.shape, final.shape
        (torch.Size([2, 64, 4, 16]), torch.Size([2, 4, 16, 8]))
    """
    check = ArgCheck("ssd_chunk_scan")
    check.tensor("x", x, ("B", "L", "H", "P"), dtypes=REAL_DTYPES)
    check.tensor("dt", dt, ("B", "L", "H"), dtypes=REAL_DTYPES)
    check.tensor("A", A, ("H",), dtypes=REAL_DTYPES)
    check.tensor("B", B, ("B", "L", "G", "N"), dtypes=REAL_DTYPES)
    check.tensor("C", C, ("B", "L", "G", "N"), dtypes=REAL_DTYPES)
    heads, groups = check.dims["H"], check.dims["G"]
    if groups == 0 or heads % groups != 0:
        check.fail(f"B and C must have shape (B, L, G, N) with G (ngroups) dividing H = {heads}, got G = {groups}")
    chunk_size = check.integer("chunk_size", chunk_size, minimum=1)
    if D is not None and D.dim() == 2:
        check.tensor("D", D, ("H", "P"), dtypes=REAL_DTYPES)
    else:
        check.tensor("D", D, ("H",), dtypes=REAL_DTYPES, optional=True)
    check.tensor("z", z, ("B", "L", "H", "P"), dtypes=REAL_DTYPES, optional=True)
    check.tensor("dt_bias", dt_bias, ("H",), dtypes=REAL_DTYPES, optional=True)
    check.tensor("initial_states", initial_states, ("B", "H", "P", "N"), dtypes=REAL_DTYPES, optional=True)
    check.tensor("seq_idx", seq_idx, ("B", "L"), dtypes=INDEX_DTYPES, optional=True)
    dt_limit = _check_dt_limit(check, dt_limit)
    if cu_seqlens is not None:
        check.cu_seqlens(cu_seqlens, check.dims["L"], check.dims["B"], allow_empty=False)
    if return_varlen_states and cu_seqlens is None:
        check.fail("return_varlen_states=True needs cu_seqlens")

    if cp_group is not None:
        reject("ssd_chunk_scan", seq_idx=seq_idx, cu_seqlens=cu_seqlens)
        out, final_states = ssd_chunk_scan_context_parallel(ssd_chunk_scan, x, dt, A, B, C, chunk_size, D, z, dt_bias,
                                                            bool(dt_softplus), dt_limit, initial_states, cp_group,
                                                            backend)
        return (out, final_states) if return_final_states else out
    # size: B * L * H * P, the numel of x
    fn = _dispatch.select("ssd_chunk_scan", x.device, backend=backend, dtype=x.dtype, size=x.numel(),
                          grad=needs_grad(x, dt, A, B, C, D, z, dt_bias, initial_states),
                          beyond_int32=_beyond_int32(x, dt, B, C, z, initial_states, seq_idx, chunk_size))
    out, final_states, varlen_states = fn(x, dt, A, B, C, chunk_size, D, z, dt_bias, bool(dt_softplus), dt_limit,
                                          initial_states, seq_idx, cu_seqlens)
    extra = ((final_states,) if return_final_states else ()) + ((varlen_states,) if return_varlen_states else ())
    return (out,) + extra if extra else out


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=DEFAULT_DT_LIMIT,
                              return_final_states=False, return_varlen_states=False, backend=None):
    """mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined: same arguments, order and returns
    (out; (out, final_states); (out, varlen_states); or (out, final_states, varlen_states)).

    As in mamba_ssm, cu_seqlens is used only with return_varlen_states (which requires it). Unlike
    mamba_ssm, the states then also reset at cu_seqlens boundaries without seq_idx (mamba_ssm's output
    would carry state across them), and varlen states have gradients. See ssd_chunk_scan for shapes.

    Example:
        >>> import torch, ssm_kernels
        >>> x, dt, A = torch.randn(2, 64, 4, 16), torch.rand(2, 64, 4), -torch.rand(4)
        >>> B, C = torch.randn(2, 64, 1, 8), torch.randn(2, 64, 1, 8)
        >>> out, final = ssm_kernels.mamba_chunk_scan_combined(x, dt, A, B, C, 32, return_final_states=True)
        >>> out.shape, final.shape
        (torch.Size([2, 64, 4, 16]), torch.Size([2, 4, 16, 8]))
    """
    if return_varlen_states and cu_seqlens is None:
        raise ValueError("mamba_chunk_scan_combined: cu_seqlens must be provided if return_varlen_states is True")
    return ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                          dt_limit=dt_limit, initial_states=initial_states, seq_idx=seq_idx,
                          cu_seqlens=cu_seqlens if return_varlen_states else None,
                          return_final_states=return_final_states, return_varlen_states=return_varlen_states,
                          backend=backend)


__all__ = ["ssd_chunk_scan", "mamba_chunk_scan_combined"]
