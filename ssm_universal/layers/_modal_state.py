"""The state algebra of a diagonal (modal) SSM, h_t = dA h_{t-1} + dB u_t, y_t = Re(sum_n C_n h_t,n) + D u_t,
in closed form over a whole sequence: the state it leaves and the response to the state it starts from.
Prefill (a prompt's outputs and final state without stepping through it) and context parallelism (a shard's
summary and the state entering it) are both made of these. Shapes: u (B, H, L) real; log_dA, dB, C (H, N)
complex (dB may be a scalar); states (B, H, N) complex.
"""
from __future__ import annotations

import math

import torch

from ssm_kernels import fftconv, vandermonde_kernel


def modal_final_state(u: torch.Tensor, log_dA: torch.Tensor) -> torch.Tensor:
    """sum_tau dA^(L - 1 - tau) u_tau: (B, H, N) complex, in chunks of about sqrt(L) positions (memory
    O(B H N sqrt(L)) with the chunk states, not O(B H N L))."""
    batch, heads, length = u.shape
    chunk = max(1, math.isqrt(length))
    n_chunks = -(-length // chunk)
    u = torch.nn.functional.pad(u.to(log_dA.real.dtype), (n_chunks * chunk - length, 0))  # zeros first
    within = torch.exp(log_dA[:, None, :] * torch.arange(chunk - 1, -1, -1, device=u.device)[None, :, None])
    states = torch.einsum("bhct,htn->bhcn", u.reshape(batch, heads, n_chunks, chunk).to(within.dtype), within)
    across = torch.exp(log_dA[:, None, :] * chunk * torch.arange(n_chunks - 1, -1, -1, device=u.device)[None, :, None])
    return torch.einsum("bhcn,hcn->bhn", states, across)


def state_response(C: torch.Tensor, log_dA: torch.Tensor, state: torch.Tensor, length: int) -> torch.Tensor:
    """The outputs Re sum_n C_n dA_n^(tau + 1) h_n, tau < length, of the state h (B, H, N) entering a sequence
    with zero inputs: (B, H, length) float."""
    batch, heads, _ = state.shape
    response = vandermonde_kernel((C * torch.exp(log_dA) * state / 2).reshape(batch * heads, -1),
                                  log_dA.repeat(batch, 1), length)  # (vandermonde_kernel: 2 Re sum)
    return response.reshape(batch, heads, length)


def modal_prefill(u: torch.Tensor, log_dA: torch.Tensor, dB, C: torch.Tensor, D: torch.Tensor,
                  state: torch.Tensor):
    """The recurrence run over u (B, H, L) from `state`, as one convolution: (y (B, H, L), the state
    after the last position (B, H, N) complex; y in log_dA's real dtype). Equals stepping token by token up to rounding, at any L (the
    kernel is as long as u: no l_max truncation, as the recurrence has none)."""
    length = u.shape[-1]
    u = u.to(log_dA.real.dtype)
    y = fftconv(u, vandermonde_kernel(C * dB / 2, log_dA, length), D=D)
    y = y + state_response(C, log_dA, state, length).to(y.dtype)
    final = torch.exp(log_dA * length) * state + dB * modal_final_state(u, log_dA)
    return y, final.to(state.dtype)
