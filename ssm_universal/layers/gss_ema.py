"""Multi-head exponential smoothing (MHESA, from ETSFormer, arXiv 2202.01381) and GSS with it in place of the
DSS (GatedMHESA): drop-ins for gated-state-spaces-pytorch 0.1.0's mhesa.py, with the same arguments,
parameter names, state_dict keys, initialisation and outputs. The convolution runs through
ssm_kernels.fftconv; the recurrent step is the smoothing recurrence itself.

Change from the package: GatedMHESA takes reverse_seq (default False, so the package's calls and outputs
are unchanged); the package's MHESA has it but its GatedMHESA does not pass it on, unlike GSS and
GatedDsConv.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_kernels import fftconv
from ssm_kernels.validation import ArgCheck

from ._args import flags
from .gss import GatedBlock, check_input


class MHESA(nn.Module):
    """Multi-head exponential smoothing: x (B, L, dim) -> (B, L, dim), heads groups of dim / heads channels.

        u = norm(x);  alpha = sigmoid(alphas), g = (1 - alpha) sigmoid(dampen_factors)  (heads,)
        y[t, c] = sum_{m <= t} alpha g^m u[t - m, c] + param_D[c] u[t, c]     (c in head h: alpha_h, g_h)

    i.e. s_t = g s_{t-1} + alpha u_t, y_t = s_t + D u_t. reverse_seq runs it on the time-reversed sequence
    (anti-causal; no step). Parameters (N(0, 1) at init, as the package): norm, alphas (heads,),
    dampen_factors (heads,), param_D (dim,). Recurrent state: s (B, dim) float32.
    """

    context_parallel = False  # no cp_group form (ssm_universal.context_parallel)

    def __init__(self, dim: int, heads: int, reverse_seq: bool = False):
        super().__init__()
        check = ArgCheck("MHESA")
        check.integer("dim", dim, 1)
        check.integer("heads", heads, 1)
        if dim % heads:
            raise ValueError(f"MHESA: dim ({dim}) must be divisible by heads ({heads})")
        flags(check, reverse_seq=reverse_seq)
        self.dim, self.heads, self.reverse_seq = dim, heads, reverse_seq
        self.norm = nn.LayerNorm(dim)
        self.alphas = nn.Parameter(torch.randn(heads))
        self.dampen_factors = nn.Parameter(torch.randn(heads))
        self.param_D = nn.Parameter(torch.randn(dim))

    def decay(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(alpha, log g), each (dim,) float32 (per head, repeated over the head's channels)."""
        alphas, dampen = self.alphas.float(), self.dampen_factors.float()
        # log g = log(1 - sigmoid(a)) + log sigmoid(d): no 0 ** 0 and finite gradients where g underflows
        log_g = F.logsigmoid(-alphas) + F.logsigmoid(dampen)
        per_channel = lambda t: t.repeat_interleave(self.dim // self.heads)  # noqa: E731
        return per_channel(alphas.sigmoid()), per_channel(log_g)

    def kernel(self, length: int) -> torch.Tensor:
        """K[c, l] = alpha g^l: (dim, length) float32."""
        with torch.autocast(device_type=self.alphas.device.type, enabled=False):
            alpha, log_g = self.decay()
            lags = torch.arange(length, device=alpha.device, dtype=torch.float32)
            return alpha[:, None] * torch.exp(log_g[:, None] * lags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, dim) -> (B, L, dim) in the dtype of norm(x)."""
        check_input("MHESA", x, self.dim)
        u = self.norm(x.flip(1) if self.reverse_seq else x).transpose(1, 2)  # (B, dim, L)
        if u.shape[-1] == 0:
            return u.transpose(1, 2).clone()
        y = fftconv(u, self.kernel(u.shape[-1]), D=self.param_D).transpose(1, 2)
        return y.flip(1) if self.reverse_seq else y

    def default_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zero smoothing state (batch_size, dim) float32 (`dtype` is accepted for the common interface and
        ignored)."""
        self._check_causal()
        device = self.alphas.device if device is None else device
        return torch.zeros(batch_size, self.dim, device=device)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One token: x_t (B, dim), state (B, dim) float32 -> (y_t (B, dim), new state)."""
        self._check_causal()
        check_input("MHESA.step", x_t, self.dim, "x_t", step=True)
        if state.shape != (x_t.shape[0], self.dim) or state.dtype != torch.float32:
            raise ValueError(f"MHESA.step: state must be float32 of shape (B, dim) = ({x_t.shape[0]}, "
                             f"{self.dim}), got {state.dtype} {tuple(state.shape)}")
        u = self.norm(x_t)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            alpha, log_g = self.decay()
            uf = u.float()
            state = torch.exp(log_g) * state + alpha * uf
            y = state + self.param_D.float() * uf
        return y.to(u.dtype), state

    def _check_causal(self) -> None:
        if self.reverse_seq:
            raise RuntimeError("MHESA: a reverse_seq layer has no recurrent step (its output depends on future "
                               "inputs); build it with reverse_seq=False")


class GatedMHESA(GatedBlock):
    """GSS with the DSS replaced by MHESA: x (B, L, dim) -> (B, L, dim); see GatedBlock.

    Args:
        dim: model width.
        heads: smoothing heads (dim_mhesa / heads channels share alpha and the damping).
        dim_mhesa: width of the smoothing branch.
        dim_expansion_factor: the gated width is int(dim_expansion_factor * dim).
        reverse_seq: run on the time-reversed sequence (anti-causal; no step). Not in the package.
    Recurrent state: MHESA's (B, dim_mhesa) float32.
    """

    def __init__(self, dim: int, heads: int = 8, dim_mhesa: int = 512, dim_expansion_factor=4,
                 reverse_seq: bool = False):
        super().__init__()
        self.check_headed_branch("GatedMHESA", dim, heads, "dim_mhesa", dim_mhesa)
        self.build("GatedMHESA", dim, dim_mhesa, dim_expansion_factor, reverse_seq, "mhesa",
                   MHESA(dim_mhesa, heads))


__all__ = ["MHESA", "GatedMHESA"]
