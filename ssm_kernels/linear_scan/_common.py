"""Helpers shared by linear_scan's reference and backends: dtypes, broadcast gates, the final state, and the
custom-op wiring every scan engine plugs into (define_scan_ops).

    forward  (reverse=False): x_t = a_t * x_{t-1} + b_t, x_{-1} = initial_state (zeros without it)
    backward (reverse=True):  x_t = a_t * x_{t+1} + b_t, x_L  = initial_state

Shapes: tokens b (B, D, L); gates a (B, D, L), (D, L) or (D,), broadcast over the missing dims;
initial_state (B, D). Packed sequences (cu_seqlens (S + 1,)): B = 1, every sequence its own scan, initial and
final states (S, D). Dtypes follow `result_dtypes`.

Gradients (torch's conjugate Wirtinger convention; the map is holomorphic in a, b, x_0), forward direction:
    g_t = dy_t + conj(a_{t+1}) g_{t+1}          (the same scan, reversed, on dy: no big tensor is stored
    dtokens_t = g_t                               besides the output x)
    dgates_t = conj(x_{t-1}) g_t                  (summed over broadcast dims)
    dinitial = conj(a_0) g_0
A real input of a complex scan gets the real part of its complex gradient.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .._autograd import define_custom_op
from .._utils import cdiv, compute_dtype, contiguous_outputs, new_output

# scan_into(out, gates, tokens, initial_state, reverse) -> out: an engine writing the scan into `out` (B, D, L,
# compute dtype) from (B, D, L) views of any strides (expanded gates; conjugate views); initial_state (B, D) or
# None. What the torch and cpp backends provide (engine_functions adds packed sequences and the backward).
ScanInto = Callable[[Tensor, Tensor, Tensor, Optional[Tensor], bool], Tensor]


def result_dtypes(gates: torch.Tensor, tokens: torch.Tensor,
                  initial_state: Optional[torch.Tensor] = None) -> Tuple[torch.dtype, torch.dtype]:
    """(compute dtype, output dtype) of a scan.

    The scan is complex when any of gates, tokens, initial_state is complex. The output keeps the tokens'
    precision: tokens' dtype for a real scan, else complex64 (complex128 for fp64/complex128 tokens).
    Math runs in fp32/complex64, or fp64/complex128 when any input is 64-bit.
    """
    promoted = torch.promote_types(gates.dtype, tokens.dtype)
    if initial_state is not None:
        promoted = torch.promote_types(promoted, initial_state.dtype)
    compute = compute_dtype(promoted)
    if not promoted.is_complex:
        return compute, tokens.dtype
    wide = tokens.dtype in (torch.float64, torch.complex128)
    return compute, torch.complex128 if wide else torch.complex64


def expanded_gates(gates: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """gates (B, D, L), (D, L) or (D,) -> a (B, D, L) view."""
    if gates.dim() == 1:
        gates = gates[:, None]
    return gates.expand(shape)


def final_state(x: torch.Tensor, initial_state: Optional[torch.Tensor], reverse: bool,
                cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, D), or (S, D) per packed sequence: the state after the last step (x_{L-1}, or x_0 with reverse;
    the initial state, or zeros, for an empty sequence)."""
    if cu_seqlens is not None:
        starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
        last = (starts if reverse else ends - 1).clamp(0, max(x.shape[-1] - 1, 0))
        states = x[0][:, last].T if x.shape[-1] > 0 else x.new_zeros(len(starts), x.shape[1])
        empty = (ends == starts)[:, None]
        entering = x.new_zeros(()) if initial_state is None else initial_state.to(x.dtype)
        return torch.where(empty, entering, states)
    if x.shape[-1] > 0:
        return x[..., 0] if reverse else x[..., -1]
    if initial_state is not None:
        return initial_state.to(x.dtype)
    return x.new_zeros(x.shape[:-1])


def pieces(cu_seqlens: Optional[Tensor], length: int):
    """(positions, state rows) of every non-empty sequence: the whole (B, D, L) once without cu_seqlens, else
    each packed sequence's slice of L with its row of the (S, D) states (a host sync: engines that loop)."""
    if cu_seqlens is None:
        yield slice(None), slice(None)
        return
    bounds = cu_seqlens.tolist()
    for n, (start, end) in enumerate(zip(bounds, bounds[1:])):
        if end > start:
            yield slice(start, end), slice(n, n + 1)


def as_input(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reduce a (B, D, L) gradient to the input's broadcast shape, take the real part for a real input."""
    if grad.dim() > like.dim():
        grad = grad.sum(0) if like.dim() == 2 else grad.sum((0, 2))
    if grad.is_complex() and not like.is_complex():
        grad = grad.real
    return grad.to(like.dtype)


def engine_functions(scan_into: ScanInto) -> Tuple[Callable, Callable]:
    """(forward, backward) for define_scan_ops from a scan engine: the backward is the same scan, reversed, on
    dy (no tensor besides the output x is stored), then dgates and dinitial_state by elementwise products."""

    def forward(gates: Tensor, tokens: Tensor, initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor],
                reverse: bool) -> Tensor:
        compute, out_dtype = result_dtypes(gates, tokens, initial_state)
        out = new_output(tokens.shape, compute, tokens.device)
        h0 = None if initial_state is None else initial_state.to(compute)
        a = expanded_gates(gates, tokens.shape)
        for seq, rows in pieces(cu_seqlens, tokens.shape[-1]):
            scan_into(out[..., seq], a[..., seq], tokens[..., seq], None if h0 is None else h0[rows], reverse)
        return contiguous_outputs(out.to(out_dtype))

    def backward(grad: Tensor, x: Tensor, gates: Tensor, tokens: Tensor, initial_state: Optional[Tensor],
                 cu_seqlens: Optional[Tensor], reverse: bool) -> List[Tensor]:
        """[dgates, dtokens, dinitial_state] (dinitial_state is zeros of shape (B, D) without initial_state)."""
        compute, _ = result_dtypes(gates, tokens, initial_state)
        a = expanded_gates(gates, tokens.shape)
        dy = grad.to(compute)
        g = new_output(dy.shape, compute, dy.device)
        dgates = new_output(g.shape, compute, g.device)
        h0 = None if initial_state is None else initial_state.to(compute)
        dinitial = None if h0 is None else torch.zeros_like(h0)  # empty sequences keep zeros
        for seq, rows in pieces(cu_seqlens, tokens.shape[-1]):
            entered = _adjoint_into(g[..., seq], dgates[..., seq], dy[..., seq], x[..., seq], a[..., seq],
                                    None if h0 is None else h0[rows], reverse)
            if dinitial is not None:
                dinitial[rows] = entered
        return contiguous_outputs([as_input(dgates, gates), as_input(g, tokens),
                                   as_input(dinitial, initial_state) if initial_state is not None
                                   else tokens.new_zeros(tokens.shape[:-1])])

    def _adjoint_into(g, dgates, dy, x, a, h0, reverse) -> Tensor:
        """g (the adjoint state, dtokens) and dgates of one scan into the given views; returns dinitial_state.
        Position `first` (the last one the forward visited) gets dy alone; the rest is the opposite-direction
        scan of dy under conj of the neighbouring gates, entered with g[first]."""
        here, there = (slice(1, None), slice(None, -1)) if reverse else (slice(None, -1), slice(1, None))
        first = 0 if reverse else -1
        g[..., first] = dy[..., first]
        scan_into(g[..., here], a[..., there].conj(), dy[..., here], g[..., first], not reverse)
        # dgates_t = conj(x_prev) g_t, with x_prev the state entering step t (the initial state at the start)
        entry = -1 if reverse else 0
        torch.mul(g[..., there], x[..., here].conj(), out=dgates[..., there])
        if h0 is None:
            dgates[..., entry] = 0
        else:
            torch.mul(g[..., entry], h0.conj(), out=dgates[..., entry])
        return a[..., entry].conj() * g[..., entry]

    return forward, backward


# launch(gates, inputs, outputs, h0, cu_seqlens, reverse, scan_complex, *, states=None, dgates=None, dh0=None):
# one pass of a fused kernel over (B, D, L) views of any strides (complex tensors as they are), writing outputs in
# their own dtypes. Forward: inputs = tokens, outputs = x. Backward (states given): the adjoint scan of
# inputs = dy in the opposite direction, outputs = dtokens (the real part for real tokens), dgates (B, D, L)
# = conj(x_prev) g, dh0 = dinitial_state in the compute dtype. What the triton and cuda backends provide.
KernelLaunch = Callable[..., None]


def kernel_view(t: Optional[Tensor], complex_strides: bool = False):
    """(tensor the kernel reads, its (B, D, L) or (B, D) strides, complex?): a complex tensor is passed as its
    real view, the imaginary part at +1; its strides in that view's elements (doubled), or with complex_strides
    in complex elements (a kernel doubling them itself knows a unit stride)."""
    if t is None:
        return None, (0, 0, 0), False
    if t.is_complex():
        t = t.resolve_conj()
        return torch.view_as_real(t), tuple(s if complex_strides else 2 * s for s in t.stride()), True
    return t, tuple(t.stride()), False


def segments(row_tiles: int, length: int, tile: int, packed: bool, wanted: int, max_segments: int
             ) -> Tuple[int, int]:
    """(segments per row, tiles per segment) of a GPU scan: rows of `length` in tiles of `tile` positions are cut
    into segments of whole tiles (scanned apart, then joined) when fewer than `wanted` row tiles would leave SMs
    idle; packed sequences (at any offset) may touch one tile more than their length needs."""
    tiles = cdiv(length, tile) + (1 if packed and length > 1 else 0)
    n_segments = 1 if row_tiles >= wanted else min(tiles, cdiv(wanted, row_tiles), max_segments)
    seg_tiles = cdiv(tiles, n_segments)
    return cdiv(tiles, seg_tiles), seg_tiles


def packed_rows(cu_seqlens: Tensor) -> Tuple[int, int]:
    """(sequences, longest length) of packed sequences: the row batch and length a fused kernel plans for."""
    return cu_seqlens.shape[0] - 1, int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def kernel_functions(launch: KernelLaunch) -> Tuple[Callable, Callable]:
    """(forward, backward) for define_scan_ops from a fused kernel (KernelLaunch): outputs allocated in their
    final dtypes; dgates of broadcast gates summed after the kernel."""

    def forward(gates: Tensor, tokens: Tensor, initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor],
                reverse: bool) -> Tensor:
        compute, out_dtype = result_dtypes(gates, tokens, initial_state)
        out = new_output(tokens.shape, out_dtype, tokens.device)
        h0 = None if initial_state is None else initial_state.to(compute)
        if out.numel():
            launch(expanded_gates(gates, tokens.shape), tokens, out, h0, cu_seqlens, reverse, compute.is_complex)
        return out

    def backward(grad: Tensor, x: Tensor, gates: Tensor, tokens: Tensor, initial_state: Optional[Tensor],
                 cu_seqlens: Optional[Tensor], reverse: bool) -> List[Tensor]:
        compute, _ = result_dtypes(gates, tokens, initial_state)
        device = tokens.device
        dtokens = new_output(tokens.shape, tokens.dtype, device)  # written as the real part for real tokens
        # dgates straight into the gates' dtype when they are not broadcast, else a full buffer summed after
        dgates_dtype = gates.dtype if gates.dim() == 3 else (compute if gates.is_complex() else compute.to_real())
        dgates = new_output(tokens.shape, dgates_dtype, device)
        h0 = None if initial_state is None else initial_state.to(compute)
        # an empty packed sequence has no position to write its dinitial_state: zeros there
        dh0 = None if initial_state is None else (
            torch.zeros(h0.shape, dtype=compute, device=device) if cu_seqlens is not None
            else new_output(h0.shape, compute, device))
        if tokens.numel():
            launch(expanded_gates(gates, tokens.shape), grad, dtokens, h0, cu_seqlens, not reverse,
                   compute.is_complex, states=x, dgates=dgates, dh0=dh0)
        dinitial = tokens.new_zeros(tokens.shape[:-1]) if dh0 is None else as_input(dh0, initial_state)
        return contiguous_outputs([as_input(dgates, gates), dtokens, dinitial])

    return forward, backward


def define_scan_ops(backend: str, forward: Callable, backward: Callable) -> Callable:
    """The custom ops ssm_kernels::linear_scan_<backend>_{fwd,bwd} and the function
    (gates, tokens, initial_state, reverse) -> x (B, D, L) that calls them.
    forward(gates, tokens, initial_state, cu_seqlens, reverse) -> x in result_dtypes' output dtype, contiguous;
    backward(grad, x, gates, tokens, initial_state, cu_seqlens, reverse) -> [dgates, dtokens, dinitial_state] in
    the inputs' shapes and dtypes (dinitial_state zeros of shape (B, D) without initial_state), contiguous."""

    def forward_fake(gates, tokens, initial_state, cu_seqlens, reverse):
        return tokens.new_empty(tokens.shape, dtype=result_dtypes(gates, tokens, initial_state)[1])

    def backward_fake(grad, x, gates, tokens, initial_state, cu_seqlens, reverse):
        return [gates.new_empty(gates.shape), tokens.new_empty(tokens.shape),
                initial_state.new_empty(initial_state.shape) if initial_state is not None
                else tokens.new_empty(tokens.shape[:-1])]

    def save(ctx, inputs, output):
        gates, tokens, initial_state, cu_seqlens, reverse = inputs
        ctx.reverse = reverse
        ctx.has_initial = initial_state is not None
        ctx.save_for_backward(output, gates, tokens, initial_state, cu_seqlens)

    def gradients(backward_op, ctx, grad):
        x, gates, tokens, initial_state, cu_seqlens = ctx.saved_tensors
        dgates, dtokens, dinitial = backward_op(grad, x, gates, tokens, initial_state, cu_seqlens, ctx.reverse)
        return dgates, dtokens, dinitial if ctx.has_initial else None, None, None

    return define_custom_op(f"linear_scan_{backend}", forward, forward_fake, backward, backward_fake, save,
                            gradients)
