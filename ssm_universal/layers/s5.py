"""S5: the simplified state space layer of Smith, Warrington & Linderman (arXiv 2208.04933).

A MIMO linear SSM with a complex diagonal state, initialised with HiPPO-N (the eigendecomposition of the
normal part of HiPPO-LegS, optionally block-diagonal), discretised per state with a learnable step and
run with the public ssm_kernels.linear_scan. Follows the reference code (github.com/lindermanlab/S5,
s5/ssm.py and s5/ssm_init.py): same parameter names, layouts and initialisations.

Complex parameters are stored as real pairs in a trailing axis of size 2 (real, imaginary), as S5 does:
B (N, H, 2), C (H, N, 2) (C1 and C2 when bidirectional), so optimizers, weight decay, `.to(dtype)`,
`.half()` and DDP treat them like any real tensor. N = d_state // 2 stored modes with conj_sym, else
d_state.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_kernels import linear_scan

from ._init import log_uniform

StepScale = Union[float, torch.Tensor]

DISCRETIZATIONS = ("zoh", "bilinear")
C_INITS = ("lecun_normal", "trunc_standard_normal", "complex_normal")
ACTIVATIONS = ("gelu", "gelu_tanh", "none")


def hippo_legs_normal(n: int) -> torch.Tensor:
    """The normal part S = A + p p^T of HiPPO-LegS A (with the sign of S5's make_HiPPO): (n, n) fp64.
    Its diagonal is -1/2 everywhere and S + I/2 is skew-symmetric."""
    k = torch.arange(n, dtype=torch.float64)
    p = torch.sqrt(1 + 2 * k)
    hippo = -(torch.tril(p[:, None] * p[None, :]) - torch.diag(k))
    low_rank = torch.sqrt(k + 0.5)
    return hippo + low_rank[:, None] * low_rank[None, :]


def hippo_n(d_state: int, blocks: int = 1, conj_sym: bool = True
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HiPPO-N initialisation of S5 (its make_DPLR_HiPPO and the block setup of its train.py), in fp64.

    Each of the `blocks` diagonal blocks of size n = d_state // blocks is S = V diag(Lambda) V^H for the normal
    part S of HiPPO-LegS(n): Lambda = -1/2 + i w, with (w, V) = eigh(-i (S + I/2)), w ascending. With conj_sym
    only the first n/2 eigenpairs of each block are kept (w < 0; the others are their complex conjugates).
    Returns Lambda (N,) complex128, V (d_state, N) and Vinv = V^H (N, d_state), block-diagonal.
    """
    n = d_state // blocks
    S = hippo_legs_normal(n)
    skew = (S - S.T) / 2
    w, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    lam = S.diagonal().mean() + 1j * w
    if conj_sym:
        lam, V = lam[: n // 2], V[:, : n // 2]
    Lambda = lam.repeat(blocks)
    V_full = torch.block_diag(*([V] * blocks))
    Vinv = torch.block_diag(*([V.conj().T] * blocks))
    return Lambda, V_full, Vinv


def _lecun_normal(shape, fan_in: int) -> torch.Tensor:
    """jax.nn.initializers.lecun_normal: a normal truncated at +-2 std, rescaled to variance 1 / fan_in."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    out = torch.empty(shape, dtype=torch.float64)
    return nn.init.trunc_normal_(out, std=std, a=-2 * std, b=2 * std)


class S5(nn.Module):
    """S5 layer: (B, L, d_model) -> (B, L, d_model).

    x_k = Lambda_bar x_{k-1} + B_bar u_k (complex diagonal, N modes), y_k = 2 Re(C x_k) with conj_sym else
    Re(C x_k), plus D u_k, then `activation`. Discretisation with dt = exp(log_step) * step_scale per mode:
    zoh: Lambda_bar = exp(Lambda dt), B_bar = (Lambda_bar - 1) / Lambda * B;
    bilinear: Lambda_bar = (1 + dt/2 Lambda) / (1 - dt/2 Lambda), B_bar = dt / (1 - dt/2 Lambda) * B.

    Args:
        d_model: H, the input and output width.
        d_state: P, the state size of S5 (d_state // 2 complex modes are stored with conj_sym).
        blocks: number of HiPPO-N blocks on the diagonal of the initial state matrix; divides d_state (and
            d_state // blocks must be even with conj_sym).
        discretization: "zoh" or "bilinear".
        dt_min, dt_max: log-uniform range of the initial steps.
        conj_sym: keep one mode of each conjugate pair and output 2 Re(C x).
        clip_eigs: clip the real part of Lambda to <= -1e-4 (stable for unbounded lengths).
        bidirectional: add a second output matrix applied to a reversed scan (non-causal: no `step`).
        C_init: "lecun_normal" or "trunc_standard_normal" (C sampled then C V) or "complex_normal".
        activation: after the SSM: "gelu" (exact), "gelu_tanh" (the tanh approximation, flax's nn.gelu that
            S5 uses) or "none".

    Parameters: Lambda_re, Lambda_im, log_step (N,) fp32; B (N, H, 2); C (H, N, 2), or C1, C2 (H, N, 2)
    when bidirectional (C (H, 2N, 2) for complex_normal); D (H,). Lambda, B and log_step carry
    `_no_weight_decay` (S5 trains them in its "ssm" group without weight decay).
    The scan runs in complex64; the B and C projections are real matmuls, so autocast applies to them and
    the output dtype is the one nn.Linear would give (the autocast dtype under autocast).
    """

    context_parallel = True  # ssm_universal.context_parallel

    def __init__(self, d_model: int, d_state: int = 64, blocks: int = 1, discretization: str = "zoh",
                 dt_min: float = 0.001, dt_max: float = 0.1, conj_sym: bool = True, clip_eigs: bool = False,
                 bidirectional: bool = False, C_init: str = "lecun_normal", activation: str = "gelu",
                 cp_group=None, device=None, dtype=None):
        super().__init__()
        self.cp_group = cp_group  # the sequence split across this group's ranks (ssm_universal.context_parallel)
        for name, value in (("d_model", d_model), ("d_state", d_state), ("blocks", blocks)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"S5: {name} must be a positive int, got {value!r}")
        for name, value in (("conj_sym", conj_sym), ("clip_eigs", clip_eigs), ("bidirectional", bidirectional)):
            if not isinstance(value, bool):
                raise TypeError(f"S5: {name} must be a bool, got {value!r}")
        if d_state % blocks:
            raise ValueError(f"S5: blocks={blocks} must divide d_state={d_state}")
        if conj_sym and (d_state // blocks) % 2:
            raise ValueError(f"S5: with conj_sym the block size d_state // blocks = {d_state // blocks} must be "
                             "even (modes come in conjugate pairs)")
        if discretization not in DISCRETIZATIONS:
            raise ValueError(f"S5: discretization must be one of {DISCRETIZATIONS}, got {discretization!r}")
        if C_init not in C_INITS:
            raise ValueError(f"S5: C_init must be one of {C_INITS}, got {C_init!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"S5: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not (isinstance(dt_min, (int, float)) and isinstance(dt_max, (int, float))
                and 0 < dt_min <= dt_max < math.inf):
            raise ValueError(f"S5: need 0 < dt_min <= dt_max < inf, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        self.d_model, self.d_state, self.blocks = d_model, d_state, blocks
        self.discretization, self.conj_sym, self.clip_eigs = discretization, conj_sym, clip_eigs
        self.bidirectional, self.C_init, self.activation = bidirectional, C_init, activation
        self.n_modes = d_state // 2 if conj_sym else d_state
        H, N, P = d_model, self.n_modes, d_state

        dtype = torch.get_default_dtype() if dtype is None else dtype  # B, C, D are built in fp64 first
        Lambda, V, Vinv = hippo_n(P, blocks, conj_sym)
        f32 = dict(device=device, dtype=torch.float32)
        self.Lambda_re = nn.Parameter(Lambda.real.to(**f32))
        self.Lambda_im = nn.Parameter(Lambda.imag.to(**f32))
        # B and C are sampled real/complex for the full state size P and projected with V (S5's init_VinvB and
        # init_CV), which is what makes the half-size conj_sym B_tilde and C_tilde the right ones
        B_tilde = Vinv @ _lecun_normal((P, H), fan_in=P).to(torch.complex128)
        self.B = nn.Parameter(torch.view_as_real(B_tilde).to(device=device, dtype=dtype))
        if C_init == "complex_normal":
            C = torch.randn(H, 2 * N if bidirectional else N, 2, dtype=torch.float64) * math.sqrt(0.5)
            self.C = nn.Parameter(C.to(device=device, dtype=dtype))
        else:
            names = ("C1", "C2") if bidirectional else ("C",)
            for name in names:
                if C_init == "lecun_normal":  # flax fan_in of an (H, P, 2) shape: P * H
                    C = _lecun_normal((H, P, 2), fan_in=P * H)
                else:  # S5's trunc_standard_normal: lecun_normal row by row, fan_in P
                    C = _lecun_normal((H, P, 2), fan_in=P)
                C_tilde = torch.view_as_complex(C) @ V
                setattr(self, name, nn.Parameter(torch.view_as_real(C_tilde).to(device=device, dtype=dtype)))
        self.D = nn.Parameter(torch.randn(H, device=device, dtype=dtype))
        log_step = log_uniform(N, dt_min, dt_max, **f32)
        self.log_step = nn.Parameter(log_step)
        for p in (self.Lambda_re, self.Lambda_im, self.B, self.log_step):
            p._no_weight_decay = True

    # ---- pieces shared by forward and step ----

    def _lambda(self) -> torch.Tensor:
        re = self.Lambda_re.float()
        if self.clip_eigs:
            re = re.clamp(max=-1e-4)
        return torch.complex(re, self.Lambda_im.float())

    def _discretize(self, step: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """step (N,), (B, N) or (B, N, L') real -> (Lambda_bar, B_bar / B_tilde), both step's shape, complex."""
        lam = self._lambda()
        if step.dim() == 3:
            lam = lam[:, None]
        if self.discretization == "zoh":
            lambda_bar = torch.exp(lam * step)
            return lambda_bar, (lambda_bar - 1) / lam
        half = lam * (step / 2)
        bl = 1 / (1 - half)
        return bl * (1 + half), bl * step

    def _steps(self, step_scale: StepScale, batch: int, length: Optional[int]) -> torch.Tensor:
        """dt per mode: (N,) for a float, (B, N, 1) / (B, N, L) for a (B,) / (B, L) tensor (step: (B, N))."""
        step = torch.exp(self.log_step.float())
        if isinstance(step_scale, torch.Tensor):
            if step_scale.is_complex() or step_scale.dtype == torch.bool:
                raise TypeError(f"S5: step_scale must be a real tensor, got {step_scale.dtype}")
            s = step_scale.to(device=step.device, dtype=torch.float32)
            if s.dim() == 0:
                return step * s
            if length is None:  # step(): (B,)
                if s.shape != (batch,):
                    raise ValueError(f"S5.step: step_scale must be a float or a (B,) = ({batch},) tensor, "
                                     f"got {tuple(s.shape)}")
                return s[:, None] * step
            if s.shape == (batch,):
                return s[:, None, None] * step[:, None]
            if s.shape == (batch, length):
                return s[:, None, :] * step[:, None]
            raise ValueError(f"S5: step_scale must be a float, a (B,) = ({batch},) or a (B, L) = "
                             f"({batch}, {length}) tensor, got {tuple(s.shape)}")
        if isinstance(step_scale, bool) or not isinstance(step_scale, (int, float)):
            raise TypeError(f"S5: step_scale must be a float or a tensor, got {type(step_scale).__name__}")
        if not (0 <= step_scale < math.inf):
            raise ValueError(f"S5: step_scale must be finite and >= 0, got {step_scale}")
        return step * float(step_scale)

    def _project_in(self, u: torch.Tensor) -> torch.Tensor:
        """B_tilde u: (..., H) real -> (..., N) complex64, as one real matmul (autocast applies)."""
        w = self.B.permute(2, 0, 1).reshape(2 * self.n_modes, self.d_model)  # [Re B; Im B]
        bu = F.linear(u.to(w.dtype), w).float()
        return torch.complex(bu[..., : self.n_modes], bu[..., self.n_modes:])

    def _c_tilde(self) -> torch.Tensor:
        """(H, N) or (H, 2N) real pairs: the output matrix, the reversed scan's half last when bidirectional."""
        if self.bidirectional and self.C_init != "complex_normal":
            return torch.cat([self.C1, self.C2], dim=1)
        return self.C

    def _project_out(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """(2) Re(C x) + D u, activation: x (..., N or 2N) complex, u (..., H) -> (..., H)."""
        c = self._c_tilde()
        w = torch.cat([c[..., 0], -c[..., 1]], dim=1)  # Re(C x) = Re C Re x - Im C Im x
        if self.conj_sym:
            w = 2 * w
        y = F.linear(torch.cat([x.real, x.imag], dim=-1).to(w.dtype), w)
        y = y + (u * self.D).to(y.dtype)
        if self.activation == "gelu":
            return F.gelu(y)
        if self.activation == "gelu_tanh":
            return F.gelu(y, approximate="tanh")
        return y

    # ---- public API ----

    def forward(self, x: torch.Tensor, step_scale: StepScale = 1.0, initial_state: Optional[torch.Tensor] = None,
                return_final_state: bool = False):
        """x: (B, L, d_model) -> y (B, L, d_model).

        step_scale: multiplies every step dt (irregular sampling, another resolution): a float, a (B,) tensor
            (one per sequence) or a (B, L) tensor (one per position: the gates then vary along L).
        initial_state: (B, N) complex state to continue from (causal only), e.g. from `step`.
        return_final_state: also return the (B, N) complex64 state after the last token (causal only).
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"S5: x must be (B, L, d_model={self.d_model}), got {tuple(x.shape)}")
        if self.bidirectional and (initial_state is not None or return_final_state):
            raise ValueError("S5: a bidirectional layer has no causal state (initial_state/return_final_state)")
        batch, length, _ = x.shape
        step = self._steps(step_scale, batch, length)
        lambda_bar, b_coef = self._discretize(step)
        if step.dim() == 1:
            gates, b_coef = lambda_bar, b_coef[:, None]
        else:  # (B, N, 1) or (B, N, L)
            gates = lambda_bar.expand(batch, self.n_modes, length)
        tokens = b_coef * self._project_in(x).transpose(1, 2)  # (B, N, L)
        if self.bidirectional:
            xs = torch.cat([linear_scan(gates, tokens, cp_group=self.cp_group),
                            linear_scan(gates, tokens, reverse=True, cp_group=self.cp_group)], dim=1)
            final = None
        else:
            xs, final = linear_scan(gates, tokens, initial_state=initial_state, return_final_state=True,
                                    cp_group=self.cp_group)
        y = self._project_out(xs.transpose(1, 2), x)
        return (y, final) if return_final_state else y

    def prefill(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """A prompt x (B, L, d_model) from `state` (B, N) complex -> (y (B, L, d_model), the state after the
        last token): the parallel scan with its initial and final states (the given state is not modified)."""
        return self(x, initial_state=state, return_final_state=True)

    def step(self, x_t: torch.Tensor, state: torch.Tensor, step_scale: StepScale = 1.0
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One token: x_t (B, d_model), state (B, N) complex -> (y_t (B, d_model), new state (B, N)).

        The state passed in is not modified (use the returned one), so gradients can flow through steps.
        step_scale: a float or a (B,) tensor.
        """
        if self.bidirectional:
            raise RuntimeError("S5: a bidirectional layer reads future inputs and has no causal step")
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(f"S5.step: x_t must be (B, d_model={self.d_model}), got {tuple(x_t.shape)}")
        if state.shape != (x_t.shape[0], self.n_modes) or not state.is_complex():
            raise ValueError(f"S5.step: state must be complex (B, N) = ({x_t.shape[0]}, {self.n_modes}), "
                             f"got {state.dtype} {tuple(state.shape)}")
        lambda_bar, b_coef = self._discretize(self._steps(step_scale, x_t.shape[0], None))
        state = lambda_bar * state + b_coef * self._project_in(x_t)
        return self._project_out(state, x_t), state

    def default_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zero state (B, N) complex64 (complex128 when dtype is fp64/complex128; any other dtype is accepted
        for the common signature and ignored, the recurrence being complex)."""
        device = self.log_step.device if device is None else device
        wide = dtype in (torch.float64, torch.complex128)
        return torch.zeros(batch_size, self.n_modes, device=device,
                           dtype=torch.complex128 if wide else torch.complex64)
