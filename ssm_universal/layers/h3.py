"""H3: the "Hungry Hungry Hippos" layer (Fu, Dao et al., arXiv 2212.14052), after HazyResearch/H3
(src/models/ssm/h3.py).

    q, k, v = Linear(u)                                       (B, L, d_model) each
    k = shift_ssm(k)        causal FIR filter of d_state taps per channel, plus a D skip
    kv[d1, d2, h] = k[h, d1] * v[h, d2]                       per head h of head_dim channels
    y[d2, h] = sum_d1 q[h, d1] * diag_ssm(kv)[d1, d2, h]      diagonal SSM (S4D-Lin) shared by a head
    out = Linear(y)

Channel c of q, k, v belongs to head c // head_dim (einops 'b (h d) l'); the output of diag-SSM gating is
flattened head-minor, channel d2 * H + h ('b (d h) l'), as in the reference.
The shift SSM is SSKernel(mode="shift") of the reference: A the shift matrix, B = e_0, so its kernel is its
C (d_model, d_state) and its state is the last d_state - 1 inputs. Both convolutions run through
ssm_kernels.fftconv, so they pick up the fast backends.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ssm_kernels import fftconv
from ssm_kernels.validation import ArgCheck
from ._args import dropout_rate, flags, modal_sizes
from ._modal_state import modal_prefill
from .s4d import S4D

State = Tuple[torch.Tensor, torch.Tensor]


class _DiagSSM(S4D):
    """S4D's parameters, discretisation and kernel (diag-lin init, ZOH), without its activation and output
    transform: H3 gates and mixes the SSM output itself. Its D is H3's D skip of the diagonal SSM."""

    def __init__(self, H: int, N: int, l_max: Optional[int]):
        super().__init__(H, N, l_max, init="diag-lin")
        del self.activation, self.dropout, self.output_linear

    def forward(self, u: torch.Tensor, pregate=None, postgate=None) -> torch.Tensor:
        """u, pregate, postgate: (B', H, L) -> (B', H, L): (K * (u pregate) + D u pregate) postgate."""
        length = u.shape[-1]
        k = self.kernel(length if self.l_max is None else min(length, self.l_max))
        return fftconv(u, k, D=self.D, pregate=pregate, postgate=postgate)


class H3(nn.Module):
    """H3 layer: (B, L, d_model) -> (B, L, d_model).

    Args:
        d_model: model width; H = d_model / head_dim heads.
        d_state: N, the diagonal SSM's state size (N/2 complex modes, so N is even) and the shift SSM's
            number of taps.
        l_max: longest convolution kernel (both SSMs); a longer input is convolved with the first l_max
            taps. None: as long as the input.
        head_dim: channels per head; > 1 takes the outer product k v^T per head (the paper's multi-head H3),
            so the diagonal SSM runs over (B, head_dim, head_dim, H) sequences that share a head's kernel.
        use_fast_fftconv: accepted for the reference's signature; ssm_kernels.fftconv picks the fastest
            backend itself, so it changes nothing.
        dropout: accepted and validated for the reference's signature, which takes it only "to absorb the
            kwarg" and applies no dropout; neither does this layer.
        layer_idx: the layer's index in a model (for state caches), stored.

    Parameters: q_proj, k_proj, v_proj, output_linear (Linear(d_model, d_model)); shift_kernel
    (d_model, d_state) and shift_D (d_model,) of the shift SSM; diag_ssm (S4D's log_dt, A_real_log, A_imag,
    B, C, D over H channels).
    Recurrent state: (shift_state (B, H[, head_dim], d_state - 1) float32, the last d_state - 1 k inputs,
    oldest first; diag_state (B, H[, head_dim, head_dim], d_state / 2) complex64), the head_dim axes only
    when head_dim > 1; float64 / complex128 in a float64 layer (diag_ssm's math_dtype / state_dtype).
    """

    context_parallel = False  # FFT convolutions: no cp_group form (ssm_universal.context_parallel)

    def __init__(self, d_model: int, d_state: int = 64, l_max: Optional[int] = None, head_dim: int = 1,
                 use_fast_fftconv: bool = False, dropout: float = 0.0, layer_idx: Optional[int] = None):
        super().__init__()
        check = ArgCheck("H3")
        modal_sizes(check, d_model, d_state, l_max)
        check.integer("head_dim", head_dim, 1)
        if d_model % head_dim:
            check.fail(f"head_dim ({head_dim}) must divide d_model ({d_model})")
        flags(check, use_fast_fftconv=use_fast_fftconv)
        dropout_rate(check, dropout)
        if layer_idx is not None:
            check.integer("layer_idx", layer_idx, 0)

        self.d_model, self.d_state, self.l_max, self.head_dim = d_model, d_state, l_max, head_dim
        self.H = d_model // head_dim
        self.use_fast_fftconv, self.dropout, self.layer_idx = use_fast_fftconv, dropout, layer_idx

        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.shift_kernel = nn.Parameter(torch.randn(d_model, d_state))
        self.shift_D = nn.Parameter(torch.randn(d_model))
        self.diag_ssm = _DiagSSM(self.H, d_state, l_max)
        self.output_linear = nn.Linear(d_model, d_model)

    def shift(self, k: torch.Tensor) -> torch.Tensor:
        """The shift SSM: k (B, d_model, L) -> y_t = sum_{j < d_state} shift_kernel[:, j] k_{t-j} + shift_D k_t."""
        taps = min(self.d_state, k.shape[-1], self.l_max or self.d_state)
        return fftconv(k, self.shift_kernel[:, :taps], D=self.shift_D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, d_model) -> (B, L, d_model), x's dtype (the autocast dtype under autocast)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"H3: x must have shape (B, L, d_model) with d_model = {self.d_model}, "
                             f"got {tuple(x.shape)}")
        batch, length, _ = x.shape
        if length == 0:
            return self.output_linear(x)
        q, k, v = (proj(x).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))  # (B, D, L)
        k = self.shift(k)
        if self.head_dim == 1:
            y = self.diag_ssm(k, pregate=v, postgate=q)
        else:
            H, P = self.H, self.head_dim
            kv = k.reshape(batch, H, P, 1, length) * v.reshape(batch, H, 1, P, length)  # (B, H, d1, d2, L)
            kv = kv.permute(0, 2, 3, 1, 4).reshape(batch * P * P, H, length)
            y = self.diag_ssm(kv).reshape(batch, P, P, H, length)
            y = (y * q.reshape(batch, H, P, length).transpose(1, 2).unsqueeze(2)).sum(1)  # (B, d2, H, L)
            y = y.reshape(batch, self.d_model, length)
        return self.output_linear(y.transpose(1, 2))

    def default_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zero (shift_state, diag_state); see the class docstring for shapes (`dtype` is accepted for the
        common interface and ignored: the states are in diag_ssm's math_dtype and state_dtype)."""
        device = self.shift_kernel.device if device is None else device
        heads = (self.H,) if self.head_dim == 1 else (self.H, self.head_dim)
        shift_state = torch.zeros(batch_size, *heads, self.d_state - 1, dtype=self.diag_ssm.math_dtype,
                                  device=device)
        heads = (self.H,) if self.head_dim == 1 else (self.H, self.head_dim, self.head_dim)
        diag_state = torch.zeros(batch_size, *heads, self.d_state // 2, dtype=self.diag_ssm.state_dtype,
                                 device=device)
        return shift_state, diag_state

    def prefill(self, x: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """A prompt x (B, L, d_model) from `state` -> (y (B, L, d_model) as `step` gives it token by token, the
        state after the last token), without stepping: the shift SSM as one convolution over the cached inputs
        and the prompt, the diagonal SSM in closed form (layers._modal_state). The given state is not modified;
        neither recurrence is truncated at l_max (as in `step`)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"H3.prefill: x must have shape (B, L, d_model) with d_model = {self.d_model}, "
                             f"got {tuple(x.shape)}")
        self._check_state(state, x.shape[0], "prefill")
        batch, length, _ = x.shape
        H, P, N2 = self.H, self.head_dim, self.d_state // 2
        q, k, v = (proj(x).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))  # (B, D, L)
        with torch.autocast(device_type=x.device.type, enabled=False):
            real = self.diag_ssm.math_dtype
            q, k, v = q.to(real), k.to(real), v.to(real)
            cached = torch.cat([state[0].reshape(batch, self.d_model, -1), k], -1)  # oldest first
            taps = min(self.d_state, cached.shape[-1])
            k = fftconv(cached, self.shift_kernel.to(real)[:, :taps], D=self.shift_D.to(real))[..., -length:]
            kv = k.reshape(batch, H, P, 1, length) * v.reshape(batch, H, 1, P, length)  # (B, H, d1, d2, L)
            kv = kv.permute(0, 2, 3, 1, 4).reshape(batch * P * P, H, length)
            diag_state = state[1].reshape(batch, H, P, P, N2).permute(0, 2, 3, 1, 4).reshape(batch * P * P, H, N2)
            log_dA, dB, C = self.diag_ssm.modal_recurrence()
            y, diag_state = modal_prefill(kv, log_dA, dB, C, self.diag_ssm.D.to(real), diag_state)
            y = (y.reshape(batch, P, P, H, length) * q.reshape(batch, H, P, length).transpose(1, 2).unsqueeze(2)).sum(1)
            y = y.reshape(batch, self.d_model, length)
        diag_state = diag_state.reshape(batch, P, P, H, N2).permute(0, 3, 1, 2, 4).reshape(state[1].shape)
        new_state = (cached[..., cached.shape[-1] - state[0].shape[-1]:].reshape(state[0].shape), diag_state)
        return self.output_linear(y.transpose(1, 2).to(x.dtype)), new_state

    def _check_state(self, state, batch: int, method: str) -> None:
        expected = tuple(s.shape for s in self.default_state(batch, device="meta"))
        if (not isinstance(state, (tuple, list)) or len(state) != 2
                or tuple(s.shape for s in state) != expected or state[1].dtype != self.diag_ssm.state_dtype):
            raise ValueError(f"H3.{method}: state must be (shift_state, diag_state {self.diag_ssm.state_dtype}) of "
                             f"shapes {expected}, as default_state gives")

    def step(self, x_t: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """One token: x_t (B, d_model), state from default_state -> (y_t (B, d_model), new state).

        The given state is not modified. Equals forward token by token while the position is < l_max
        (forward truncates both kernels there, the recurrences do not).
        """
        if x_t.dim() != 2 or x_t.shape[1] != self.d_model:
            raise ValueError(f"H3.step: x_t must have shape (B, d_model) = (B, {self.d_model}), "
                             f"got {tuple(x_t.shape)}")
        self._check_state(state, x_t.shape[0], "step")
        batch, H, P, N2 = x_t.shape[0], self.H, self.head_dim, self.d_state // 2
        q, k, v = (proj(x_t) for proj in (self.q_proj, self.k_proj, self.v_proj))
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            real = self.diag_ssm.math_dtype
            q, k, v = q.to(real), k.to(real), v.to(real)
            window = torch.cat([state[0].reshape(batch, self.d_model, -1), k.unsqueeze(-1)], -1)  # oldest first
            k = (window * self.shift_kernel.to(real).flip(-1)).sum(-1) + self.shift_D.to(real) * k
            kv = k.reshape(batch, H, P, 1) * v.reshape(batch, H, 1, P)  # (B, H, d1, d2)
            dA, dB, C, D = self.diag_ssm.constants_for_step()  # (H, N/2) each (C: 2 C), D (H,)
            expand = lambda t: t.reshape(H, 1, 1, N2)  # noqa: E731
            diag_state = expand(dA) * state[1].reshape(batch, H, P, P, N2) + expand(dB) * kv[..., None]
            y = (expand(C) * diag_state).sum(-1).real + D[:, None, None] * kv
            y = (y * q.reshape(batch, H, P, 1)).sum(2)  # (B, H, d2)
            y = y.transpose(1, 2).reshape(batch, self.d_model)
        new_state = (window[..., 1:].reshape(state[0].shape), diag_state.reshape(state[1].shape))
        return self.output_linear(y.to(x_t.dtype)), new_state


__all__ = ["H3"]
