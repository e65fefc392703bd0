"""S4D: the diagonal structured state space layer (Gu et al., "On the Parameterization and Initialization of
Diagonal State Space Models", arXiv 2206.11893), after state-spaces/s4 (models/s4/s4d.py and the
SSMKernelDiag kernel of src/models/sequence/kernels/ssm.py).

Per channel h (H = d_model channels, each an independent single-input single-output SSM) the state has N/2
complex modes; their conjugates are implicit, which is why the kernel is 2 Re(...):
    A = -exp(A_real_log) + i A_imag,  dt = exp(log_dt),  x' = A x + B u,  y = 2 Re(C x) + D u.
The layer convolves with the discretised impulse response (ssm_kernels.vandermonde_kernel + fftconv), then
applies GELU, dropout and a position-wise Conv1d(H, 2H, 1) + GLU, as s4d.py's S4D module does.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn

from ssm_kernels import vandermonde_kernel
from ssm_kernels.validation import ArgCheck

from ._init import log_uniform
from ._args import dropout_rate, flags, learning_rate, modal_sizes, timescale
from ._kernel_conv import ModalKernelConvLayer
from ._modal_context_parallel import modal_conv_context_parallel

INITS = ("diag-inv", "diag-lin", "diag-legs", "diag-real")
DISCRETIZATIONS = ("zoh", "bilinear")


def hippo_legs_normal_eigenvalues(N: int) -> torch.Tensor:
    """The N/2 eigenvalues with positive imaginary part of the normal part S = A + P P^T of HiPPO-LegS.

    A[n, k] = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k), 0 (n < k); P[n] = sqrt(n + 1/2). S is
    -1/2 I plus a skew-symmetric matrix, so its eigenvalues are -1/2 + i w with w the (real) eigenvalues
    of the Hermitian matrix -i (S + I/2); computed that way (eigvalsh, float64) they are exact pairs +-w.
    Returns (N/2,) complex128, sorted by increasing imaginary part.
    """
    q = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * q + 1)
    skew = 0.5 * r[:, None] * r[None, :] * (torch.tril(torch.ones(N, N, dtype=torch.float64), -1) * -1
                                            + torch.triu(torch.ones(N, N, dtype=torch.float64), 1))
    w = torch.linalg.eigvalsh(-1j * skew.to(torch.complex128))  # ascending, real
    return -0.5 + 1j * w[N - N // 2:].to(torch.complex128)


def s4d_init(init: str, H: int, N: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(A_real (H, N/2) > 0, A_imag (H, N/2) >= 0) of A = -A_real + i A_imag for a state of size N.

    diag-inv: A_imag = N/pi (N/(2n+1) - 1); diag-lin: A_imag = pi n; diag-legs: the spectrum of HiPPO-LegS's
    normal part; diag-real: A = -(n+1). Real part 1/2 except for diag-real (the inits of dplr.py).
    """
    n = torch.arange(N // 2, dtype=torch.float64)
    real = torch.full((N // 2,), 0.5, dtype=torch.float64)
    if init == "diag-inv":
        imag = N / math.pi * (N / (2 * n + 1) - 1)
    elif init == "diag-lin":
        imag = math.pi * n
    elif init == "diag-legs":
        eig = hippo_legs_normal_eigenvalues(N)
        real, imag = -eig.real, eig.imag
    elif init == "diag-real":
        real, imag = n + 1, torch.zeros_like(n)
    else:
        raise ValueError(f"S4D: init must be one of {INITS}, got {init!r}")
    expand = lambda t: t.to(torch.float32).expand(H, N // 2).clone()  # noqa: E731
    return expand(real), expand(imag)


class TiedDropout(nn.Module):
    """Dropout of s4's DropoutNd (tie=True): one mask per (batch, channel), shared over the sequence.
    x: (B, H, L) -> (B, H, L)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[:2] + (1,) * (x.dim() - 2), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


class S4D(ModalKernelConvLayer):
    """Diagonal S4 layer: (B, L, d_model) -> (B, L, d_model), or (B, d_model, L) both ways if transposed.

    Args:
        d_model: H, the number of channels (independent SSMs).
        d_state: N, the state size; N/2 complex modes are kept (conjugate symmetry), so N must be even.
        l_max: longest convolution kernel; a sequence longer than l_max is convolved with the first l_max
            taps of the impulse response (as s4's FFTConv does). None: the kernel is as long as the input.
        init: "diag-inv", "diag-lin", "diag-legs" or "diag-real" (see s4d_init).
        discretization: "zoh" (dA = exp(dt A), dB = (exp(dt A) - 1) / A B) or "bilinear"
            (dA = (1 + dt A/2) / (1 - dt A/2), dB = dt B / (1 - dt A/2)).
        dt_min, dt_max: dt is initialised log-uniformly in [dt_min, dt_max] per channel.
        bidirectional: add an anti-causal kernel from a second C (C is then (2, H, N/2)); A, B, dt shared.
        dropout: dropout after the activation, one mask per (batch, channel) tied over the sequence.
        transposed: inputs and outputs are (B, d_model, L) instead of (B, L, d_model).
        lr: learning rate for the SSM parameters log_dt, A_real_log, A_imag, B, stored on them as
            `_optim = {"weight_decay": 0.0, "lr": lr}` (state-spaces/s4's convention); lr == 0.0 freezes
            them as buffers; None keeps the optimizer's rate (weight decay still 0).

    Parameters (complex ones stored as real views (..., 2)): log_dt (H,), A_real_log (H, N/2),
    A_imag (H, N/2), B (H, N/2, 2), C (H, N/2, 2) or (2, H, N/2, 2), D (H,), output_linear (Conv1d + GLU).
    Recurrent state (causal layers only): (B, H, N/2) complex64 (complex128 in a float64 layer).
    """

    def __init__(self, d_model: int, d_state: int = 64, l_max: Optional[int] = None, init: str = "diag-lin",
                 discretization: str = "zoh", dt_min: float = 0.001, dt_max: float = 0.1,
                 bidirectional: bool = False, dropout: float = 0.0, transposed: bool = False,
                 lr: Optional[float] = None):
        super().__init__()
        check = ArgCheck("S4D")
        modal_sizes(check, d_model, d_state, l_max)
        check.choice("init", init, INITS)
        check.choice("discretization", discretization, DISCRETIZATIONS)
        timescale(check, dt_min, dt_max)
        flags(check, bidirectional=bidirectional, transposed=transposed)
        dropout_rate(check, dropout)
        learning_rate(check, lr)

        self.d_model = self.H = d_model
        self.d_state = d_state
        self.l_max = l_max
        self.init = init
        self.discretization = discretization
        self.bidirectional = bidirectional
        self.transposed = transposed
        H, N2 = d_model, d_state // 2

        log_dt = log_uniform(H, dt_min, dt_max)
        A_real, A_imag = s4d_init(init, H, d_state)
        B = torch.ones(H, N2, dtype=torch.cfloat)
        self._register_ssm("log_dt", log_dt, lr)
        self._register_ssm("A_real_log", torch.log(A_real), lr)
        self._register_ssm("A_imag", A_imag, lr)
        self._register_ssm("B", torch.view_as_real(B), lr)
        C = torch.randn((2, H, N2) if bidirectional else (H, N2), dtype=torch.cfloat)
        self.C = nn.Parameter(torch.view_as_real(C))
        self.D = nn.Parameter(torch.randn(H))

        self.activation = nn.GELU()
        self.dropout = TiedDropout(dropout) if dropout > 0 else nn.Identity()
        self.output_linear = nn.Sequential(nn.Conv1d(H, 2 * H, kernel_size=1), nn.GLU(dim=-2))

    @property
    def context_parallel(self) -> bool:
        """Causal layers without l_max split the sequence across ranks (ssm_universal.context_parallel)."""
        return not self.bidirectional and self.l_max is None

    def conv_context_parallel(self, u: torch.Tensor) -> torch.Tensor:
        """fftconv of this rank's shard u (B, H, L_r) plus the response to the modal state entering it."""
        with torch.autocast(device_type=u.device.type, enabled=False):
            log_dA, dB = self.discretize()
            C = torch.view_as_complex(self.C.to(self.math_dtype))
            return modal_conv_context_parallel(u, log_dA, dB, C, self.D, self.cp_group, "S4D").to(u.dtype)

    def discretize(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(log dA, dB), each (H, N/2) of state_dtype: the recurrence h_t = dA h_{t-1} + dB u_t."""
        real = self.math_dtype
        dt = torch.exp(self.log_dt.to(real)).unsqueeze(-1)  # (H, 1)
        A = torch.complex(-torch.exp(self.A_real_log.to(real)), self.A_imag.to(real))
        B = torch.view_as_complex(self.B.to(real))
        dtA = dt * A
        if self.discretization == "zoh":
            return dtA, B * torch.expm1(dtA) / A
        # bilinear: log of (1 + dtA/2) / (1 - dtA/2); the modulus is < 1 since Re A < 0
        return torch.log1p(dtA / 2) - torch.log1p(-dtA / 2), B * dt / (1 - dtA / 2)

    def kernel(self, length: int) -> torch.Tensor:
        """Convolution kernel K[h, l] = 2 Re sum_n C[h, n] dB[h, n] dA[h, n]^l, l < length:
        (H, length) of math_dtype, or (2, H, length) (causal, anti-causal) when bidirectional."""
        with torch.autocast(device_type=self.C.device.type, enabled=False):
            log_dA, dB = self.discretize()
            C = torch.view_as_complex(self.C.to(self.math_dtype))
            if not self.bidirectional:
                return vandermonde_kernel(C * dB, log_dA, length)
            K = vandermonde_kernel((C * dB).reshape(2 * self.H, -1), log_dA.repeat(2, 1), length)
            return K.reshape(2, self.H, length)

    def default_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zero state (batch_size, d_model, d_state/2) of state_dtype (`dtype` is accepted for the common
        interface and ignored: the recurrence runs in complex64, complex128 in a float64 layer)."""
        self._check_causal()
        device = self.C.device if device is None else device
        return torch.zeros(batch_size, self.H, self.d_state // 2, dtype=self.state_dtype, device=device)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One token: x_t (B, d_model), state (B, d_model, d_state/2) -> (y_t (B, d_model), new state).

        h = dA h + dB u, y = 2 Re(C h) + D u, then the activation and output transform of forward. The new
        state is returned (the given one is not modified), so stepping stays differentiable. Equals forward
        token by token while the position is < l_max (forward truncates the kernel there, the recurrence
        does not). In training mode the dropout mask is drawn per step, not tied over the sequence.
        """
        self._check_causal()
        if x_t.dim() != 2 or x_t.shape[1] != self.H:
            raise ValueError(f"S4D.step: x_t must have shape (B, d_model) = (B, {self.H}), got {tuple(x_t.shape)}")
        if state.shape != (x_t.shape[0], self.H, self.d_state // 2) or state.dtype != self.state_dtype:
            raise ValueError(f"S4D.step: state must be {self.state_dtype} of shape (B, d_model, d_state/2) = "
                             f"({x_t.shape[0]}, {self.H}, {self.d_state // 2}), got {state.dtype} "
                             f"{tuple(state.shape)}")
        return self._modal_step(x_t, state)

    def modal_recurrence(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log dA, dB, 2 C), each (H, N/2) of state_dtype: h = dA h + dB u, y = Re(sum_n 2 C_n h_n) + D u (the
        conjugate modes' half of the sum is the factor 2)."""
        self._check_causal()
        log_dA, dB = self.discretize()
        return log_dA, dB, 2 * torch.view_as_complex(self.C.to(self.math_dtype))



__all__ = ["S4D", "s4d_init", "hippo_legs_normal_eigenvalues"]
