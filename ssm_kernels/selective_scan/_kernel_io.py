"""What the Triton and CUDA selective-scan backends do around their kernel launches, written once: real views
of complex tensors, the packed-sequence markers the kernels read, and the reduction of the backward's
per-program partial sums into gradients in the inputs' dtypes."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._utils import in_dtype, new_output, new_output_like, sum_over


def real_view(t: Optional[Tensor]) -> Optional[Tensor]:
    """The real view of a complex tensor (interleaved (re, im) as a last axis of 2); others unchanged."""
    return torch.view_as_real(t) if t is not None and t.is_complex() else t


def state_rows(u: Tensor, cu_seqlens: Optional[Tensor]) -> int:
    """Rows of the initial / final state: B, or the number of packed sequences."""
    return u.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def seq_markers(cu_seqlens: Tensor, L: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(start (L,), end (L,), empty (S,)): start[t] / end[t] int32 = the sequence starting / ending at t, or -1;
    empty: the sequences of length 0."""
    cu = cu_seqlens.to(torch.int64)
    S = cu.numel() - 1
    empty = cu[1:] == cu[:-1]
    ids = torch.arange(S, dtype=torch.int32, device=cu.device)
    start = torch.full((L + 1,), -1, dtype=torch.int32, device=cu.device)
    end = torch.full((L + 1,), -1, dtype=torch.int32, device=cu.device)
    start.scatter_(0, torch.where(empty, L, cu[:-1]), ids)  # empty sequences write the dummy slot L
    end.scatter_(0, torch.where(empty, L, cu[1:] - 1), ids)
    return start[:L].contiguous(), end[:L].contiguous(), empty


def entering_states(initial_state: Optional[Tensor], rows: int, dim: int, N: int, dtype: torch.dtype,
                    device) -> Tensor:
    """The states entering the sequences, (rows, D, N) in the state dtype: initial_state, or zeros. What the
    forward kernels leave unwritten is the final state of an empty packed sequence (and of all when L = 0)."""
    if initial_state is not None:
        return in_dtype(initial_state, dtype)
    return torch.zeros(rows, dim, N, dtype=dtype, device=device)


def rows_like(t: Tensor) -> Tensor:
    """A (B, D, L) buffer with positions contiguous, in t's (batch, channel) order where t is dense with positions
    contiguous (for the (D, B, L) order of a channels-first GEMM's output, one (D, B L) matrix), else contiguous."""
    out = new_output_like(t) if t.stride(2) == 1 else None
    if out is None or (out.stride(2) != 1 and t.shape[2] > 1):
        return new_output(t.shape, t.dtype, t.device)
    return out


def gate_grad_buffer(z: Optional[Tensor]) -> Optional[Tensor]:
    """What a backward that takes dz's strides writes dz into: rows_like(z) (the Mamba block's z is a channel
    slice of in_proj's (2 d_inner, B, L)-ordered output, whose backward then reads dz in place)."""
    return None if z is None else rows_like(z)


def gradients(du, ddelta, dz, dA, dD, dbias, dB, dC, dh0, A, B, C, D, z, delta_bias, initial_state, dfinal,
              empty):
    """The 9 gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state; None for absent inputs)
    from a backward kernel's outputs: dA (B, D, N) and dD / dbias (B, D) per batch row; dB / dC (B, D, N) per
    batch row for fixed B / C, else (B, channel blocks, N, L) per channel block; complex values as fp32
    (.., 2); dh0 (rows, D, N) as written (the kernel skips empty sequences and L == 0). dfinal: the final
    state's gradient (complex64 / fp32) or None; empty: the empty packed sequences (S,) or None."""
    batch, dim, N = dA.shape[:3]
    L = du.shape[2]
    cplx = A.is_complex()
    pair = (2,) if cplx else ()

    def as_state(t):  # fp32 (.., 2) -> complex64 for complex A
        return torch.view_as_complex(t) if cplx else t

    dinit = None
    if initial_state is not None:
        passed = dfinal if dfinal is not None else torch.zeros(
            dh0.shape[:3], dtype=torch.complex64 if cplx else torch.float32, device=du.device)
        if L == 0:
            dinit = passed.clone()
        else:
            dinit = as_state(dh0)
            if empty is not None:  # an empty sequence passes dfinal straight to its initial state
                dinit = torch.where(empty[:, None, None], passed, dinit)
        dinit = in_dtype(dinit, initial_state.dtype)

    def reduce_bc(part, X):
        if X.dim() == 2:  # fixed: per batch row
            g = sum_over(part, 0)
        elif X.dim() == 3 and part.shape[1] == 1:  # one block: the atomics' sum (or one block's partial)
            g = part.select(1, 0)
        else:  # per block of channels (one block per group when the kernel added them with atomics)
            groups = 1 if X.dim() == 3 else X.shape[1]
            g = sum_over(part.view(batch, groups, part.shape[1] // groups, N, L, *pair), 2)
            if X.dim() == 3:
                g = g[:, 0]
        if cplx:
            g = torch.view_as_complex(g.contiguous())
            if not X.is_complex():  # interleaved (re, im) along 2L
                g = torch.view_as_real(g).flatten(-2)
        return in_dtype(g, X.dtype)

    return (du, ddelta, in_dtype(as_state(sum_over(dA, 0).contiguous()), A.dtype), reduce_bc(dB, B),
            reduce_bc(dC, C), in_dtype(sum_over(dD, 0), D.dtype) if D is not None else None,
            dz if z is not None else None,
            in_dtype(sum_over(dbias, 0), delta_bias.dtype) if delta_bias is not None else None, dinit)
