"""The torch backend of linear_scan: a chunked pure-PyTorch engine, x_t = a_t * x_{t-1} + b_t along the last
axis, behind the custom ops ssm_kernels::linear_scan_torch_{fwd,bwd} (_common.define_scan_ops).

Every op here is a plain multiply-add, so zero gates (resets) and |a| > 1 are exact: nothing divides by a
gate or takes its log. For one block of rows (a slice of B x D that stays in cache) the chunked region of
length L0 = nc * T is viewed as (rows, nc, T) and copied transposed to (rows, T, nc), so that position t of
every chunk is one plane with the nc chunks contiguous. Then:
  1. local scan inside the chunks: T vectorised steps X[t] = A[t] * X[t-1] + Bt[t] over all chunks at once,
     and the chunk-local gate products P[t] = A[t] * P[t-1] (work-optimal: one multiply-add per element);
  2. carries across chunks: nc small steps C[j] = P[T-1, j-1] * C[j-1] + X[T-1, j-1], C[0] = initial state;
  3. fix-up x = X + P * C, then one transposing copy into the output;
  4. the L - L0 positions past the last whole chunk continue sequentially from the last state.
reverse=True runs the same steps mirrored (chunks from the end, the remainder at the start).
Temporaries are block-sized and reused between blocks, so no (B, D, L) intermediate is allocated.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._common import define_scan_ops, engine_functions

# Rows x length elements per block: big enough for multithreaded, vectorised steps, small enough that the
# transposed temporaries stay in cache.
BLOCK_ELEMENTS = 1 << 19


def chunk_length(length: int) -> int:
    """T ~ sqrt(L) balances the T in-chunk steps against the L / T carry steps."""
    return max(8, int(math.isqrt(max(length, 1))))


def scan_into(out: torch.Tensor, gates: torch.Tensor, tokens: torch.Tensor,
              initial_state: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    """Write the scan of tokens under gates into out and return it (the engine of _common.ScanInto).

    out: (B, D, L) in the compute dtype; gates, tokens: (B, D, L) views of any strides (expanded gates are
    fine; their values are converted to out's dtype on the fly, conjugate views are resolved);
    initial_state: (B, D) or None (zeros). With reverse the state runs from t = L-1 down to 0.
    """
    batch, dim, length = out.shape
    if length == 0 or out.numel() == 0:
        return out
    rows = max(1, BLOCK_ELEMENTS // length)
    per_batch = max(1, rows // dim)  # whole batches per block when D is small
    d_step = dim if per_batch > 1 else min(dim, rows)
    for b0 in range(0, batch, per_batch):
        bs = slice(b0, min(batch, b0 + per_batch))
        for d0 in range(0, dim, d_step):
            ds = slice(d0, min(dim, d0 + d_step))
            h0 = None if initial_state is None else initial_state[bs, ds]
            _scan_block(out[bs, ds], gates[bs, ds], tokens[bs, ds], h0, reverse)
    return out


def _scan_block(out, gates, tokens, h0, reverse):
    """scan_into for one (nb, nd, L) block."""
    length = out.shape[-1]
    chunk = chunk_length(length)
    n_chunks = length // chunk
    whole = n_chunks * chunk
    # the chunked region and the leftover positions, in the order the scan visits them
    region = slice(length - whole, length) if reverse else slice(0, whole)
    rest = range(length - whole - 1, -1, -1) if reverse else range(whole, length)

    state = h0
    if n_chunks > 0:
        state = _scan_chunks(out[..., region], gates[..., region], tokens[..., region], h0, chunk, reverse)
    for t in rest:
        if state is None:
            out[..., t].copy_(tokens[..., t])
        else:
            torch.addcmul(tokens[..., t].to(out.dtype), gates[..., t].to(out.dtype), state, out=out[..., t])
        state = out[..., t]


def _transposed(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """(..., nc * T) view -> (..., nc, T) view with the chunk position as the middle axis: (..., T, nc)."""
    return x.unflatten(-1, (-1, chunk)).transpose(-1, -2)


def _scan_chunks(out, gates, tokens, h0, chunk, reverse):
    """Steps 1-3 on a region that is a whole number of chunks; returns the state leaving the region."""
    n_chunks = out.shape[-1] // chunk
    dtype = out.dtype
    # (..., T, nc) contiguous copies: X starts as the tokens and becomes the chunk-local scan in place,
    # P starts as the gates and becomes the chunk-local cumulative products in place
    X = torch.empty(out.shape[:-1] + (chunk, n_chunks), dtype=dtype, device=out.device)
    P = torch.empty_like(X)
    X.copy_(_transposed(tokens, chunk))
    P.copy_(_transposed(gates, chunk))
    planes_x, planes_p = X.unbind(-2), P.unbind(-2)  # one view per chunk position, made once
    steps = range(chunk - 2, -1, -1) if reverse else range(1, chunk)
    for t in steps:
        prev = t + 1 if reverse else t - 1
        planes_x[t].addcmul_(planes_p[t], planes_x[prev])
        planes_p[t].mul_(planes_p[prev])

    # carries: C[..., j] is the state entering chunk j (in scan order)
    last = 0 if reverse else chunk - 1
    ends, decays = planes_x[last].unbind(-1), planes_p[last].unbind(-1)
    C = torch.empty(out.shape[:-1] + (n_chunks,), dtype=dtype, device=out.device)
    carries = C.unbind(-1)
    order = list(range(n_chunks - 1, -1, -1) if reverse else range(n_chunks))
    if h0 is None:
        carries[order[0]].zero_()
    else:
        carries[order[0]].copy_(h0)
    for prev, j in zip(order[:-1], order[1:]):
        torch.addcmul(ends[prev], decays[prev], carries[prev], out=carries[j])
    state = torch.addcmul(ends[order[-1]], decays[order[-1]], carries[order[-1]])
    # fix-up in place (contiguous), then one transposing copy into the output
    X.addcmul_(P, C.unsqueeze(-2))
    _transposed(out, chunk).copy_(X)
    return state


linear_scan_torch = define_scan_ops("torch", *engine_functions(scan_into))
linear_scan_torch.__doc__ = "Fast torch backend: (gates, tokens, initial_state, reverse) -> x (B, D, L)."
