"""Pure-PyTorch linear scan: the sequential ground truth and the fast torch backend (a custom op).

    forward  (reverse=False): x_t = a_t * x_{t-1} + b_t, x_{-1} = initial_state (zeros without it)
    backward (reverse=True):  x_t = a_t * x_{t+1} + b_t, x_L  = initial_state

Shapes: tokens b (B, D, L); gates a (B, D, L), (D, L) or (D,), broadcast over the missing dims;
initial_state (B, D). Dtypes follow `result_dtypes`.

Gradients (torch's conjugate Wirtinger convention; the map is holomorphic in a, b, x_0), forward direction:
    g_t = dy_t + conj(a_{t+1}) g_{t+1}          (the same scan, reversed, on dy: no big tensor is stored
    dtokens_t = g_t                               besides the output x)
    dgates_t = conj(x_{t-1}) g_t                  (summed over broadcast dims)
    dinitial = conj(a_0) g_0
A real input of a complex scan gets the real part of its complex gradient.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .._utils import compute_dtype, contiguous_outputs, new_output
from .chunked import scan_into


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


def _expanded_gates(gates: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """gates (B, D, L), (D, L) or (D,) -> a (B, D, L) view."""
    if gates.dim() == 1:
        gates = gates[:, None]
    return gates.expand(shape)


def _final_state(x: torch.Tensor, initial_state: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    """(B, D): the state after the last step (x_{L-1}, or x_0 with reverse; the initial state if L == 0)."""
    if x.shape[-1] > 0:
        return x[..., 0] if reverse else x[..., -1]
    if initial_state is not None:
        return initial_state.to(x.dtype)
    return x.new_zeros(x.shape[:-1])


def linear_scan_ref(gates, tokens, initial_state=None, reverse=False, return_final_state=False):
    """Sequential ground truth: one step at a time in the compute dtype. Returns x (B, D, L) [, final]."""
    compute, out_dtype = result_dtypes(gates, tokens, initial_state)
    # unbind: one backward node for all steps (indexing a[..., t] would back-propagate O(L^2) zeros)
    a = _expanded_gates(gates, tokens.shape).to(compute).unbind(-1)
    b = tokens.to(compute).unbind(-1)
    state = tokens.new_zeros(tokens.shape[:-1], dtype=compute) if initial_state is None \
        else initial_state.to(compute)
    steps = range(len(b) - 1, -1, -1) if reverse else range(len(b))
    xs = [None] * len(b)
    for t in steps:
        state = a[t] * state + b[t]
        xs[t] = state
    x = torch.stack(xs, dim=-1) if xs else tokens.to(compute).clone()
    x = x.to(out_dtype)
    if return_final_state:
        final = state.to(out_dtype) if xs or initial_state is not None else x.new_zeros(x.shape[:-1])
        return x, final
    return x


# --- fast path: the chunked engine behind a custom op with a scan-based backward -------------------------
def _scan(gates, tokens, initial_state, reverse, compute, out_dtype):
    out = new_output(tokens.shape, compute, tokens.device)
    h0 = None if initial_state is None else initial_state.to(compute)
    scan_into(out, _expanded_gates(gates, tokens.shape), tokens, h0, reverse)
    return out.to(out_dtype)


@torch.library.custom_op("ssm_kernels::linear_scan", mutates_args=())
def _linear_scan_op(gates: torch.Tensor, tokens: torch.Tensor, initial_state: Optional[torch.Tensor],
                    reverse: bool) -> torch.Tensor:
    compute, out_dtype = result_dtypes(gates, tokens, initial_state)
    return contiguous_outputs(_scan(gates, tokens, initial_state, reverse, compute, out_dtype))


@_linear_scan_op.register_fake
def _(gates, tokens, initial_state, reverse):
    _, out_dtype = result_dtypes(gates, tokens, initial_state)
    return tokens.new_empty(tokens.shape, dtype=out_dtype)


@torch.library.custom_op("ssm_kernels::linear_scan_backward", mutates_args=())
def _linear_scan_backward_op(grad: torch.Tensor, x: torch.Tensor, gates: torch.Tensor, tokens: torch.Tensor,
                             initial_state: Optional[torch.Tensor], reverse: bool) -> List[torch.Tensor]:
    """[dgates, dtokens, dinitial_state] (dinitial_state is zeros of shape (B, D) without initial_state)."""
    compute, _ = result_dtypes(gates, tokens, initial_state)
    a = _expanded_gates(gates, tokens.shape)
    dy = grad.to(compute)
    # g: the adjoint state. Position `first` (the last one the forward visited) gets dy alone; the rest is
    # the opposite-direction scan of dy under conj of the neighbouring gates, entered with g[first].
    g = new_output(dy.shape, compute, dy.device)
    here, there = (slice(1, None), slice(None, -1)) if reverse else (slice(None, -1), slice(1, None))
    first = 0 if reverse else -1
    g[..., first] = dy[..., first]
    scan_into(g[..., here], a[..., there].conj(), dy[..., here], g[..., first], not reverse)

    # dgates_t = conj(x_prev) g_t, with x_prev the state entering step t (the initial state at the start)
    dgates = new_output(g.shape, compute, g.device)
    entry = -1 if reverse else 0
    torch.mul(g[..., there], x[..., here].conj(), out=dgates[..., there])
    if initial_state is None:
        dgates[..., entry] = 0
    else:
        torch.mul(g[..., entry], initial_state.conj(), out=dgates[..., entry])
    dinitial = a[..., entry].conj() * g[..., entry]
    return contiguous_outputs([_as_input(dgates, gates), _as_input(g, tokens),
                               _as_input(dinitial, initial_state) if initial_state is not None
                               else tokens.new_zeros(tokens.shape[:-1])])


def _as_input(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reduce a (B, D, L) gradient to the input's broadcast shape, take the real part for a real input."""
    if grad.dim() > like.dim():
        grad = grad.sum(0) if like.dim() == 2 else grad.sum((0, 2))
    if grad.is_complex() and not like.is_complex():
        grad = grad.real
    return grad.to(like.dtype)


@_linear_scan_backward_op.register_fake
def _(grad, x, gates, tokens, initial_state, reverse):
    return [gates.new_empty(gates.shape), tokens.new_empty(tokens.shape),
            initial_state.new_empty(initial_state.shape) if initial_state is not None
            else tokens.new_empty(tokens.shape[:-1])]


def _setup_context(ctx, inputs, output):
    gates, tokens, initial_state, reverse = inputs
    ctx.reverse = reverse
    ctx.has_initial = initial_state is not None
    ctx.save_for_backward(output, gates, tokens, initial_state)


def _backward(ctx, grad):
    x, gates, tokens, initial_state = ctx.saved_tensors
    dgates, dtokens, dinitial = _linear_scan_backward_op(grad, x, gates, tokens, initial_state, ctx.reverse)
    return dgates, dtokens, dinitial if ctx.has_initial else None, None


_linear_scan_op.register_autograd(_backward, setup_context=_setup_context)


def linear_scan_torch(gates, tokens, initial_state=None, reverse=False):
    """Fast torch backend: the chunked scan (chunked.py) as a custom op. Returns x (B, D, L)."""
    return _linear_scan_op(gates, tokens, initial_state, bool(reverse))
