"""S4ND: multidimensional state space layer (Nguyen et al., "S4ND: Modeling Images and Videos as
Multidimensional Signals Using State Spaces", arXiv 2210.06583), after state-spaces/s4
(src/models/sequence/modules/s4nd.py with the diagonal kernel SSMKernelDiag of kernels/ssm.py).

Input (B, *spatial, d_model) with dim = 1, 2 or 3 spatial axes. Each axis a has its own S4D SSM per channel
(diagonal complex A, per-channel dt, complex C, ZOH), whose impulse response k_a (H, L_a) comes from
ssm_kernels.vandermonde_kernel. The N-D kernel of channel h is the outer product
    K[h, l_1, ..., l_d] = k_1[h, l_1] * ... * k_d[h, l_d],
and the layer computes y = u ⊛ K + D u (a linear N-D convolution over all spatial axes), then GELU, dropout
tied over the spatial positions and S4D's position-wise Conv1d(H, 2H, 1) + GLU.

Per axis, bidirectional adds an anti-causal kernel from a second C, with fftconv's convention: k[1][j]
weighs the input j + 1 positions ahead along that axis. Bandlimiting (as in the paper and s4's
`bandlimit`): the modes of an axis whose frequency dt |Im A| / (2 pi) (cycles per sample) is not below
bandlimit / 2 are zeroed (their C is masked). The mask uses dt at the training resolution, so a model run at
another rate keeps the same modes, as in s4. Resolution change: forward(x, rate) scales every dt by rate
(rate 2: each sample spans twice the continuous time, e.g. an image at half the training resolution), and an
axis with l_max uses round(l_max / rate) taps.

Deviations from the reference, on purpose: the output transform is S4D's (the reference's default is no
activation and no output linear); the reference's experimental options (channels, out_channels, trank,
hyper_act, ln, DPLR kernels) are not offered; `lr` per SSM parameter is not offered (weight decay is 0 on the
SSM parameters as in S4D).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_kernels import fftconv, vandermonde_kernel
from ssm_kernels.validation import ArgCheck, compute_dtype

from ._init import log_uniform
from ._args import dropout_rate, flags, modal_sizes, timescale
from ._kernel_conv import KernelConvLayer
from .s4d import INITS, TiedDropout, s4d_init


class AxisKernel(nn.Module):
    """The S4D SSM of one spatial axis, with S4D's parameter names and shapes: log_dt (H,), A_real_log (H, N/2),
    A_imag (H, N/2), B (H, N/2, 2), C (H, N/2, 2) or (2, H, N/2, 2) when bidirectional (complex as real views).
    A = -exp(A_real_log) + i A_imag, dt = exp(log_dt)."""

    def __init__(self, H: int, N: int, init: str, dt_min: float, dt_max: float, bidirectional: bool,
                 bandlimit: Optional[float]):
        super().__init__()
        self.H, self.bidirectional, self.bandlimit = H, bidirectional, bandlimit
        A_real, A_imag = s4d_init(init, H, N)
        self.log_dt = nn.Parameter(log_uniform(H, dt_min, dt_max))
        self.A_real_log = nn.Parameter(torch.log(A_real))
        self.A_imag = nn.Parameter(A_imag)
        self.B = nn.Parameter(torch.view_as_real(torch.ones(H, N // 2, dtype=torch.cfloat)))
        for p in (self.log_dt, self.A_real_log, self.A_imag, self.B):
            p._optim = {"weight_decay": 0.0}
        C = torch.randn((2, H, N // 2) if bidirectional else (H, N // 2), dtype=torch.cfloat)
        self.C = nn.Parameter(torch.view_as_real(C))

    def mode_mask(self) -> torch.Tensor:
        """(H, N/2) bool: the modes below the band limit (all True without bandlimit)."""
        dt = torch.exp(self.log_dt.detach().float()).unsqueeze(-1)
        if self.bandlimit is None:
            return torch.ones_like(self.A_imag, dtype=torch.bool)
        return dt * self.A_imag.detach().float().abs() / (2 * math.pi) < self.bandlimit / 2

    def discretize(self, rate: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log dA, dB, C) for h_t = dA h_{t-1} + dB u_t, y_t = 2 Re(C h_t): (H, N/2) complex64 each, C
        (2, H, N/2) when bidirectional, with the modes above the band limit zeroed in C. ZOH with dt * rate."""
        dt = torch.exp(self.log_dt.float()).unsqueeze(-1) * rate
        A = torch.complex(-torch.exp(self.A_real_log.float()), self.A_imag.float())
        dtA = dt * A
        dB = torch.view_as_complex(self.B.float()) * torch.expm1(dtA) / A
        C = torch.view_as_complex(self.C.float())
        if self.bandlimit is not None:
            C = C * self.mode_mask()
        return dtA, dB, C

    def kernel(self, length: int, rate: float = 1.0) -> torch.Tensor:
        """K[h, l] = 2 Re sum_n C[h, n] dB[h, n] dA[h, n]^l, l < length: (H, length) float32, or
        (2, H, length) (causal, anti-causal) when bidirectional."""
        log_dA, dB, C = self.discretize(rate)
        if not self.bidirectional:
            return vandermonde_kernel(C * dB, log_dA, length)
        K = vandermonde_kernel((C * dB).reshape(2 * self.H, -1), log_dA.repeat(2, 1), length)
        return K.reshape(2, self.H, length)


def fft_conv_nd(u: torch.Tensor, kernels: Sequence[torch.Tensor], D: torch.Tensor,
                bidirectional: Sequence[bool]) -> torch.Tensor:
    """y = u ⊛ (k_1 ⊗ ... ⊗ k_d) + D u over the last d axes of u, per channel, linear (inputs outside the
    array are zero).

    Args:
        u: (B, H, L_1, ..., L_d).
        kernels: d tensors; kernels[a] is (H, Lk_a) with Lk_a <= L_a, or (2, H, Lk_a) (causal, anti-causal;
            fftconv's convention) where bidirectional[a].
        D: (H,) skip.
    Math in fp32 (fp64 for fp64 u). Returns y: (B, H, L_1, ..., L_d) in u's dtype.
    """
    d = len(kernels)
    dtype = compute_dtype(u.dtype)
    lengths = u.shape[2:]
    # L + Lk per axis (<= 2L): the causal taps that wrap around and the anti-causal taps stored at the end of
    # the period only ever meet the zero padding, so the circular FFT convolution is the linear one
    sizes = [n + k.shape[-1] for n, k in zip(lengths, kernels)]
    axes = tuple(range(-d, 0))
    v = u.to(dtype)
    y_f = torch.fft.rfftn(v, s=sizes, dim=axes)
    for a, (k, n, two_sided) in enumerate(zip(kernels, sizes, bidirectional)):
        k = k.to(dtype)
        if two_sided:
            taps = k.shape[-1]
            k = F.pad(k[0], (0, n - taps)) + F.pad(k[1].flip(-1), (n - taps, 0))
        k_f = torch.fft.rfft(k, n=n) if a == d - 1 else torch.fft.fft(k, n=n)
        # multiplying by each axis' spectrum in turn is multiplying by the outer product's spectrum, without
        # materialising the (H, n_1, ..., n_d) kernel
        shape = [k_f.shape[0]] + [1] * d
        shape[1 + a] = k_f.shape[-1]
        y_f = y_f * k_f.reshape(shape)
    y = torch.fft.irfftn(y_f, s=sizes, dim=axes)[(Ellipsis, *(slice(0, n) for n in lengths))]
    y = y + D.to(dtype).reshape(-1, *[1] * d) * v
    return y.to(u.dtype)


LMax = Union[None, int, Sequence[Optional[int]]]


class S4ND(KernelConvLayer):
    """S4ND layer: (B, *spatial, d_model) -> same shape, or (B, d_model, *spatial) both ways if transposed.

    Args:
        d_model: H, the number of channels.
        d_state: N, the state size of each axis' SSM; N/2 complex modes are kept (conjugate symmetry): even.
        dim: the number of spatial axes, 1, 2 or 3; None infers it from l_max or bidirectional given as
            sequences (as the reference requires l_max when dim is None).
        l_max: longest kernel per axis: None (as long as the input along every axis), an int (every axis) or
            a sequence of dim ints / None. An axis longer than its l_max is convolved with l_max taps (at
            rate r: round(l_max / r) taps).
        bidirectional: bool for every axis or a sequence of dim bools; True adds an anti-causal kernel along
            that axis (the non-causal image setting of S4ND, the reference's default).
        bandlimit: None, or a number > 0: zero each axis' modes with dt |Im A| / (2 pi) >= bandlimit / 2.
        init: the S4D init of A per axis: "diag-lin" (S4D-Lin), "diag-inv" (S4D-Inv), "diag-legs", "diag-real".
        dt_min, dt_max: each axis' dt is initialised log-uniformly in [dt_min, dt_max] per channel.
        dropout: dropout after the activation, one mask per (batch, channel) tied over all spatial positions.
        transposed: inputs and outputs are (B, d_model, *spatial) instead of (B, *spatial, d_model).

    Parameters: kernels.{a}.log_dt / A_real_log / A_imag / B / C for each axis a (AxisKernel, S4D's names and
    shapes), D (H,), output_linear (Conv1d(H, 2H, 1) + GLU).
    Recurrent state (dim = 1, causal only): (B, H, N/2) complex64.
    """

    def __init__(self, d_model: int, d_state: int = 64, dim: Optional[int] = 2, l_max: LMax = None,
                 bidirectional: Union[bool, Sequence[bool]] = True, bandlimit: Optional[float] = None,
                 init: str = "diag-lin", dt_min: float = 0.001, dt_max: float = 0.1, dropout: float = 0.0,
                 transposed: bool = False):
        super().__init__()
        check = ArgCheck("S4ND")
        modal_sizes(check, d_model, d_state, None)
        if dim is None:
            given = [v for v in (l_max, bidirectional) if isinstance(v, (list, tuple))]
            if not given:
                check.fail("dim is None: give dim, or l_max or bidirectional as a sequence with one entry per axis")
            dim = len(given[0])
        check.integer("dim", dim, 1, 3)
        self.l_max = self._per_axis(check, "l_max", l_max, dim)
        for a, value in enumerate(self.l_max):
            if value is not None:
                check.integer(f"l_max[{a}]", value, 1)
        self.bidirectional = self._per_axis(check, "bidirectional", bidirectional, dim)
        for a, value in enumerate(self.bidirectional):
            if not isinstance(value, bool):
                check.fail(f"bidirectional[{a}] must be a bool, got {type(value).__name__}", TypeError)
        if bandlimit is not None and check.finite("bandlimit", bandlimit) <= 0:
            check.fail(f"bandlimit must be None or > 0, got {bandlimit}")
        check.choice("init", init, INITS)
        timescale(check, dt_min, dt_max)
        dropout_rate(check, dropout)
        flags(check, transposed=transposed)

        self.d_model = self.H = d_model
        self.d_state = d_state
        self.dim = dim
        self.bandlimit = bandlimit
        self.init = init
        self.transposed = transposed
        self.kernels = nn.ModuleList(AxisKernel(d_model, d_state, init, dt_min, dt_max, two_sided, bandlimit)
                                     for two_sided in self.bidirectional)
        self.D = nn.Parameter(torch.randn(d_model))
        self.activation = nn.GELU()
        self.dropout = TiedDropout(dropout) if dropout > 0 else nn.Identity()
        self.output_linear = nn.Sequential(nn.Conv1d(d_model, 2 * d_model, kernel_size=1), nn.GLU(dim=-2))

    @staticmethod
    def _per_axis(check: ArgCheck, name: str, value, dim: int) -> tuple:
        if isinstance(value, (list, tuple)):
            if len(value) != dim:
                check.fail(f"{name} must have one entry per spatial axis (dim = {dim}), got {len(value)}")
            return tuple(value)
        return (value,) * dim

    def kernel_lengths(self, spatial: Sequence[int], rate: float = 1.0) -> List[int]:
        """Taps per axis for an input of spatial shape `spatial` at `rate`."""
        return [n if m is None else max(1, min(n, round(m / rate))) for n, m in zip(spatial, self.l_max)]

    def forward(self, x: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
        """x: (B, *spatial, d_model), or (B, d_model, *spatial) if transposed, with dim spatial axes -> y of
        the same shape and x's dtype (the autocast dtype under autocast). rate > 0 scales every dt."""
        if x.dim() != self.dim + 2 or x.shape[1 if self.transposed else -1] != self.H:
            layout = "(B, d_model, *spatial)" if self.transposed else "(B, *spatial, d_model)"
            raise ValueError(f"S4ND: x must have shape {layout} with {self.dim} spatial axes and d_model = "
                             f"{self.H}, got {tuple(x.shape)}")
        rate = self._check_rate(rate)
        u = x if self.transposed else x.movedim(-1, 1)  # (B, H, *spatial)
        if u.numel() == 0:
            return x.clone()
        with torch.autocast(device_type=x.device.type, enabled=False):
            ks = [k.kernel(n, rate) for k, n in zip(self.kernels, self.kernel_lengths(u.shape[2:], rate))]
            if self.dim == 1:
                y = fftconv(u, ks[0], D=self.D, bidirectional=self.bidirectional[0])
            else:
                y = fft_conv_nd(u, ks, self.D, self.bidirectional)
        y = self.dropout(self.activation(y))
        y = self.output_linear(y.flatten(2)).unflatten(2, y.shape[2:])
        return y if self.transposed else y.movedim(1, -1)

    def default_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zero state (batch_size, d_model, d_state/2) complex64 of a 1-D causal layer (`dtype` is accepted
        for the common interface and ignored: the recurrence runs in complex64)."""
        self._check_causal()
        device = self.D.device if device is None else device
        return torch.zeros(batch_size, self.H, self.d_state // 2, dtype=torch.complex64, device=device)

    def step(self, x_t: torch.Tensor, state: torch.Tensor, rate: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
        """One position of a 1-D causal layer: x_t (B, d_model), state (B, d_model, d_state/2) ->
        (y_t (B, d_model), new state); the given state is not modified.

        h = dA h + dB u, y = 2 Re(C h) + D u, then forward's activation and output transform: equals forward
        position by position while the position is < the kernel length (l_max truncates forward's kernel, the
        recurrence does not). Only for dim = 1 and bidirectional = False: a 2-D / 3-D layer convolves over all
        axes at once and its inputs have no causal order to step through (see _check_causal).
        """
        self._check_causal()
        rate = self._check_rate(rate)
        if x_t.dim() != 2 or x_t.shape[1] != self.H:
            raise ValueError(f"S4ND.step: x_t must have shape (B, d_model) = (B, {self.H}), got {tuple(x_t.shape)}")
        if state.shape != (x_t.shape[0], self.H, self.d_state // 2) or state.dtype != torch.complex64:
            raise ValueError(f"S4ND.step: state must be complex64 of shape (B, d_model, d_state/2) = "
                             f"({x_t.shape[0]}, {self.H}, {self.d_state // 2}), got {state.dtype} "
                             f"{tuple(state.shape)}")
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            log_dA, dB, C = self.kernels[0].discretize(rate)
            u = x_t.float()
            state = torch.exp(log_dA) * state + dB * u.unsqueeze(-1)
            y = 2 * (C * state).sum(-1).real + self.D.float() * u
        return self.output_step(y.to(x_t.dtype)), state

    def _check_causal(self):
        if self.dim > 1:
            raise RuntimeError(
                f"S4ND: a {self.dim}-D layer has no recurrent step: it convolves over all {self.dim} spatial axes "
                "at once, so its positions have no causal order to step through (each output depends on inputs "
                "along every axis); use forward on the whole array, or a dim = 1 causal layer for step-by-step "
                "inference")
        if self.bidirectional[0]:
            raise RuntimeError("S4ND: a bidirectional layer has no recurrent step (its output depends on future "
                               "inputs); build it with dim=1, bidirectional=False for step-by-step inference")

    @staticmethod
    def _check_rate(rate) -> float:
        rate = ArgCheck("S4ND").finite("rate", rate)
        if rate <= 0:
            raise ValueError(f"S4ND: rate must be > 0, got {rate}")
        return rate


__all__ = ["S4ND", "AxisKernel", "fft_conv_nd"]
