"""Context parallelism for the convolution of a diagonal SSM (S4D): the sequence split across ranks.

The kernel k_l = 2 Re sum_n C_n dB_n dA_n^l is the impulse response of the modal recurrence
h_t = dA h_{t-1} + dB u_t, y_t = 2 Re(C h_t), so a shard's output is its own convolution (the first L_r taps)
plus the response to the state h entering it: y_tau += 2 Re sum_n C_n dA_n^(tau + 1) h_n, one
vandermonde_kernel call. The shard's summary is (dA^L_r, its final modal state from zero); the states entering
the shards come from ssm_kernels' exchange, as for the scans (ssm_kernels._context_parallel).
Shapes: u (B, H, L_r) real; log_dA, dB, C (H, N) complex.
"""
from __future__ import annotations

import torch

from ssm_kernels import fftconv, vandermonde_kernel
from ssm_kernels._context_parallel import check_shard_lengths, compose_states, exchange, group_position

from ._modal_state import modal_final_state, state_response


def modal_conv_context_parallel(u, log_dA, dB, C, D, group, layer: str):
    """fftconv(u, kernel, D) of this rank's shard of a sequence split across `group`: (B, H, L_r) float32."""
    group_position(group, layer)
    batch, heads, length = u.shape
    kernel = vandermonde_kernel(C * dB, log_dA, length)
    y = fftconv(u, kernel, D=D)
    final = dB * modal_final_state(u, log_dA)
    decay = torch.exp(log_dA * length)
    check_shard_lengths(group, layer, [decay, final], ["decay", "state"], length)
    entering, _ = exchange(group, compose_states(False), None, decay, final)
    return y + state_response(2 * C, log_dA, entering, length).to(y.dtype)
