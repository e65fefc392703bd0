"""DSS: the Diagonal State Space layer (Gupta et al., "Diagonal State Spaces are as Effective as Structured
State Spaces", arXiv 2203.14343), after ag1988/dss (src/models/sequence/ss/standalone/dss.py, DSSKernel).

Per channel h the state has N complex modes with no implicit conjugates (K is the real part of a sum over N
modes, not 2 Re over N/2 as in S4D). Lambda (N,) is shared by all channels, Delta is per channel; with
P = Delta Lambda (H, N) the kernel is K[h, l] = Re sum_n W[h, n] c[h, n] exp(P[h, n] l), l < L, where
  version="exp":      Lambda = -exp(Lambda_log_neg_re) + i Lambda_im (Re < 0 by construction) and
                      c = (exp(P) - 1) / Lambda: the ZOH discretisation, independent of L;
  version="softmax":  Lambda unconstrained and c = (exp(P) - 1) / (Lambda (exp(P L) - 1)), i.e. W / Lambda
                      times the softmax of P[h, n, :] over l: the kernel depends on its length L.
Divisions use the reference's bounded reciprocal: 1/x = conj(x) / max(|x|^2, epsilon) for "exp" and
conj(x) / (|x|^2 + epsilon) for "softmax". The reference's other versions ("exp-re-im", "exp-no-scale",
"clip", "clip-no-scale") are experimental variants not described in the paper and are not implemented.

Deviations from the reference, on purpose: modes with Re P > 0 of the softmax version are computed from the
end of the kernel (exp(-P (L-1-l)), as the reference's max-shift does) but their shift is differentiated
(the reference detaches it, which gives those modes a wrong gradient); the output transform is S4D's
Conv1d(H, 2H, 1) + GLU and dropout is tied over the sequence (the reference's default is a plain linear);
channels > 1 and hyper_act are not offered.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ssm_kernels import vandermonde_kernel
from ssm_kernels.validation import ArgCheck

from ._init import log_uniform
from ._args import dropout_rate, flags, modal_sizes, positive, timescale
from ._kernel_conv import ModalKernelConvLayer
from .s4d import TiedDropout, hippo_legs_normal_eigenvalues

VERSIONS = ("exp", "softmax")
LAMBDA_INITS = ("hippo", "randn")


def dss_lambda_init(lambda_init: str, N: int) -> torch.Tensor:
    """Lambda (N,) complex64. "hippo": the N eigenvalues with positive imaginary part of the skew-symmetric
    part of HiPPO-LegS of size 2N, shifted by -1/2 (the reference's hippo_skew_pos_imag), largest imaginary
    part first; "randn": standard complex normal (real and imaginary parts N(0, 1))."""
    if lambda_init == "hippo":
        return hippo_legs_normal_eigenvalues(2 * N).flip(0).to(torch.complex64)
    if lambda_init == "randn":
        return torch.complex(torch.randn(N), torch.randn(N))
    raise ValueError(f"DSS: lambda_init must be one of {LAMBDA_INITS}, got {lambda_init!r}")


def _reciprocal(x: torch.Tensor, epsilon: float, clamp: bool) -> torch.Tensor:
    norm_sq = (x * x.conj()).real
    return x.conj() / (norm_sq.clamp(min=epsilon) if clamp else norm_sq + epsilon)


class DSS(ModalKernelConvLayer):
    """Diagonal state space layer: (B, L, d_model) -> (B, L, d_model), or (B, d_model, L) if transposed.

    Args:
        d_model: H, the number of channels (independent SSMs).
        d_state: N, the number of complex modes per channel.
        l_max: longest convolution kernel; a longer input is convolved with the first l_max taps (the
            reference's max_kernel_length). The softmax kernel is normalised at the length it is computed
            for, min(L, l_max), so the softmax version steps only with l_max set (see step).
        version: "exp" or "softmax" (module docstring).
        lambda_init: "hippo" or "randn" ("randn" only with version="softmax": "exp" needs Re Lambda < 0).
        dt_min, dt_max: Delta is initialised log-uniformly in [dt_min, dt_max] per channel.
        bidirectional: add an anti-causal kernel from a second W (W is then (2, H, N)); Lambda, Delta shared.
        dropout: dropout after the activation, one mask per (batch, channel) tied over the sequence.
        transposed: inputs and outputs are (B, d_model, L) instead of (B, L, d_model).
        sep_dt_re_im: separate step sizes for the real and imaginary parts of Lambda (log_dt is (H, 2) and
            P = Delta_0 Re Lambda + i Delta_1 Im Lambda), the reference kernel's default; False: the
            paper's single Delta (log_dt (H,)).
        epsilon: bound of the reciprocals (the reference's 1e-7).

    Parameters (complex ones stored as real views (..., 2)): log_dt (H,) or (H, 2); Lambda_log_neg_re (N,) and
    Lambda_im (N,) for "exp", Lambda (N, 2) for "softmax"; W (H, N, 2) or (2, H, N, 2); D (H,);
    output_linear (Conv1d + GLU). Recurrent state (causal layers only): (B, H, N) complex64 (complex128 in a
    float64 layer).
    """

    def __init__(self, d_model: int, d_state: int = 64, l_max: Optional[int] = None, version: str = "exp",
                 lambda_init: str = "hippo", dt_min: float = 0.001, dt_max: float = 0.1,
                 bidirectional: bool = False, dropout: float = 0.0, transposed: bool = False,
                 sep_dt_re_im: bool = False, epsilon: float = 1e-7):
        super().__init__()
        check = ArgCheck("DSS")
        modal_sizes(check, d_model, d_state, l_max, conjugate_pairs=False)
        check.choice("version", version, VERSIONS)
        check.choice("lambda_init", lambda_init, LAMBDA_INITS)
        if version == "exp" and lambda_init == "randn":
            raise ValueError("DSS: version='exp' needs Re Lambda < 0 at init; lambda_init='randn' is only "
                             "available with version='softmax'")
        timescale(check, dt_min, dt_max)
        positive(check, "epsilon", epsilon)
        flags(check, bidirectional=bidirectional, transposed=transposed, sep_dt_re_im=sep_dt_re_im)
        dropout_rate(check, dropout)

        self.d_model = self.H = d_model
        self.d_state = self.N = d_state
        self.l_max = l_max
        self.version = version
        self.bidirectional = bidirectional
        self.transposed = transposed
        self.epsilon = epsilon
        H, N = d_model, d_state

        log_dt = log_uniform(H, dt_min, dt_max)
        self.log_dt = nn.Parameter(log_dt[:, None].repeat(1, 2) if sep_dt_re_im else log_dt)
        Lambda = dss_lambda_init(lambda_init, N)
        if version == "exp":
            self.Lambda_log_neg_re = nn.Parameter(torch.log(-Lambda.real))
            self.Lambda_im = nn.Parameter(Lambda.imag.clone())
        else:
            self.Lambda = nn.Parameter(torch.view_as_real(Lambda).clone())
        self.W = nn.Parameter(torch.randn((2, H, N, 2) if bidirectional else (H, N, 2)))
        self.D = nn.Parameter(torch.randn(H))
        for p in self.ssm_parameters():
            p._optim = {"weight_decay": 0.0}

        self.activation = nn.GELU()
        self.dropout = TiedDropout(dropout) if dropout > 0 else nn.Identity()
        self.output_linear = nn.Sequential(nn.Conv1d(H, 2 * H, kernel_size=1), nn.GLU(dim=-2))

    def ssm_parameters(self):
        names = ("log_dt", "Lambda_log_neg_re", "Lambda_im", "W") if self.version == "exp" else \
            ("log_dt", "Lambda", "W")
        return [getattr(self, n) for n in names]

    def lambda_(self) -> torch.Tensor:
        """Lambda (N,) of state_dtype."""
        real = self.math_dtype
        if self.version == "exp":
            return torch.complex(-torch.exp(self.Lambda_log_neg_re.to(real)), self.Lambda_im.to(real))
        return torch.view_as_complex(self.Lambda.to(real))

    def dt_lambda(self) -> torch.Tensor:
        """P = Delta Lambda (H, N) of state_dtype."""
        Lambda, dt = self.lambda_(), torch.exp(self.log_dt.to(self.math_dtype))
        if dt.dim() == 1:
            return dt[:, None] * Lambda
        return torch.complex(dt[:, :1] * Lambda.real, dt[:, 1:] * Lambda.imag)

    def _modes(self, length: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(coef (H, N), log_z (H, N), flipped (N,) bool, W (H, N) or (2, H, N)) with
        K[l] = Re sum_n W coef exp(log_z l) for unflipped modes and Re sum_n W coef exp(log_z (length-1-l))
        for flipped ones (softmax modes with Re Lambda > 0, for which Re log_z = -Re P <= 0)."""
        W = torch.view_as_complex(self.W.to(self.math_dtype))
        P = self.dt_lambda()
        Lambda = self.lambda_()
        if self.version == "exp":
            flipped = torch.zeros(self.N, dtype=torch.bool, device=P.device)
            return torch.expm1(P) * _reciprocal(Lambda, self.epsilon, clamp=True), P, flipped, W
        flipped = Lambda.real > 0
        log_z = torch.where(flipped, -P, P)
        coef = torch.expm1(log_z) * _reciprocal(torch.expm1(log_z * length) * Lambda, self.epsilon, clamp=False)
        return coef, log_z, flipped, W

    def kernel(self, length: int) -> torch.Tensor:
        """K (H, length) of math_dtype, or (2, H, length) (causal, anti-causal) when bidirectional."""
        with torch.autocast(device_type=self.W.device.type, enabled=False):
            coef, log_z, flipped, W = self._modes(length)
            C = (W * coef).reshape(-1, self.N) / 2  # vandermonde_kernel returns 2 Re sum
            log_z = log_z.repeat(2, 1) if self.bidirectional else log_z
            K = vandermonde_kernel(torch.where(flipped, 0, C), log_z, length)
            # "exp" has no flipped modes; under torch.compile both halves are computed (no data-dependent branch)
            if self.version != "exp" and (torch.compiler.is_compiling() or bool(flipped.any())):
                K = K + vandermonde_kernel(torch.where(flipped, C, 0), log_z, length).flip(-1)
            return K.reshape(2, self.H, length) if self.bidirectional else K

    def default_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zero state (batch_size, d_model, d_state) of state_dtype (`dtype` is accepted for the common interface
        and ignored: the recurrence runs in complex64, complex128 in a float64 layer)."""
        self._check_steppable()
        device = self.W.device if device is None else device
        return torch.zeros(batch_size, self.H, self.N, dtype=self.state_dtype, device=device)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One token: x_t (B, d_model), state (B, d_model, d_state) -> (y_t (B, d_model), new state).

        h = exp(P) h + u, y = Re(W coef h) + D u, then the activation and output transform of forward; the
        new state is returned (the given one is not modified). "exp" equals forward token by token while the
        position is < l_max (forward truncates the kernel there). "softmax" is normalised for the kernel of
        length l_max, so it equals forward on inputs of length l_max (a shorter input's forward uses a kernel
        normalised at its own length); its modes with Re Lambda > 0 grow as |exp(P)|^t within those l_max
        steps. In training mode the dropout mask is drawn per step, not tied over the sequence.
        """
        self._check_steppable()
        if x_t.dim() != 2 or x_t.shape[1] != self.H:
            raise ValueError(f"DSS.step: x_t must have shape (B, d_model) = (B, {self.H}), got {tuple(x_t.shape)}")
        if state.shape != (x_t.shape[0], self.H, self.N) or state.dtype != self.state_dtype:
            raise ValueError(f"DSS.step: state must be {self.state_dtype} of shape (B, d_model, d_state) = "
                             f"({x_t.shape[0]}, {self.H}, {self.N}), got {state.dtype} {tuple(state.shape)}")
        return self._modal_step(x_t, state)

    def modal_recurrence(self) -> Tuple[torch.Tensor, float, torch.Tensor]:
        """(P, dB = 1, C = W coef), (H, N) of state_dtype: h = exp(P) h + u, y = Re(sum_n C_n h_n) + D u."""
        self._check_steppable()
        coef, log_z, flipped, W = self._modes(self.l_max)
        if self.version != "exp":  # only softmax kernels flip modes
            # a flipped mode's term coef exp(-P (l_max-1-l)) is coef exp(-P (l_max-1)) exp(P l); no host
            # branch on `flipped` (steps are captured in CUDA graphs), and exp(0) = 1 for the other modes
            coef = coef * torch.exp(torch.where(flipped, log_z * (self.l_max - 1), torch.zeros_like(log_z)))
        return self.dt_lambda(), 1.0, W * coef

    def _check_steppable(self):
        if self.bidirectional:
            raise RuntimeError("DSS: a bidirectional layer has no recurrent step (its output depends on future "
                               "inputs); build it with bidirectional=False for step-by-step inference")
        if self.version == "softmax" and self.l_max is None:
            raise RuntimeError("DSS: version='softmax' normalises its kernel over the sequence length, so the "
                               "recurrent step needs a fixed length: build the layer with l_max set")


__all__ = ["DSS", "dss_lambda_init"]
