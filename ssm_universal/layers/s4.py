"""S4: the structured state space layer with a diagonal plus low-rank (DPLR) state matrix (Gu et al.,
"Efficiently Modeling Long Sequences with Structured State Spaces", arXiv 2111.00396), after state-spaces/s4
(models/s4/s4.py and SSMKernelDPLR of src/models/sequence/kernels/ssm.py).

Per channel h (H = d_model independent single-input single-output SSMs) the continuous system of size N is
    x' = A x + B u,  y = C^T x + D u,  A = diag(Lambda) - P P^*  (rank 1),
written in the eigenbasis of HiPPO-LegS's normal part (see _hippo.py). A is real in the original basis, so
its modes come in conjugate pairs: N/2 of them are stored and the kernel is 2 Re(...) of the kept half, as
for S4D. The step dt = exp(log_dt) is per channel and the discretisation is bilinear:
    dA = (I - dt/2 A)^{-1} (I + dt/2 A),  dB = (I - dt/2 A)^{-1} dt B,  K[l] = C^T dA^l dB.
The kernel of length L comes from the generating function at the L-th roots of unity w^k (S4 paper, Lemma
C.2-C.4): sum_{l<L} K[l] w^{kl} = 2/(1+w^k) Ct^T (z_k - dt A)^{-1} dt B with z_k = 2 (1-w^k)/(1+w^k) and
Ct = (I - dA^L)^T C, the resolvent of the diagonal part through ssm_kernels.cauchy_kernel, the rank-1 term
through the Woodbury identity, then an inverse FFT. The layer convolves with it (fftconv, D skip) and applies
GELU, tied dropout and Conv1d(H, 2H, 1) + GLU, exactly as S4D does.

The parameter C: with l_max set it holds Ct for the kernel length l_max (state-spaces/s4's "C~": the kernel
needs no matrix power; a random C is converted at init as s4's _setup_C does). With l_max None the kernel is
as long as each input, so C holds C itself and the kernel forms Ct = (I - dA^L)^T C with a dense N x N
matrix power (O(H N^3 log L) per call: set l_max for long sequences). The recurrent step converts Ct back
(a dense solve, cached while gradients are off) and runs the O(N) Woodbury form of the bilinear step on the
kept half of the state.

Not offered: channels > 1, rank > 1, n_ssm (parameter tying), measures other than LegS, the state-passing
forward.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn

from ssm_kernels import cauchy_kernel, fftconv
from ssm_kernels.validation import ArgCheck

from ._init import log_uniform
from ._args import dropout_rate, flags, learning_rate, modal_sizes, timescale
from ._hippo import nplr_legs
from ._kernel_conv import KernelConvLayer
from .s4d import TiedDropout

B_CLIP = 2.0  # state-spaces/s4 clips Im(V^* B) to [-2, 2] at init, for stability


def bilinear_fft_nodes(length: int, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(z, scale), each (length // 2 + 1,) complex64: z_k = 2 (1 - w^k) / (1 + w^k) and 2 / (1 + w^k) for
    w = exp(-2 pi i / length), k = 0 .. length // 2 (the rfft bins). Computed in float64 so that the Nyquist
    bin (w^k = -1, where both are 1e16-large but their ratio is exact) stays finite."""
    theta = torch.arange(length // 2 + 1, dtype=torch.float64, device=device) * (-2 * math.pi / length)
    omega = torch.polar(torch.ones_like(theta), theta)
    return (2 * (1 - omega) / (1 + omega)).to(torch.complex64), (2 / (1 + omega)).to(torch.complex64)


def dplr_kernel(dt: torch.Tensor, Lambda: torch.Tensor, P: torch.Tensor, B: torch.Tensor, Ct: torch.Tensor,
                length: int) -> torch.Tensor:
    """K[c, h, l] = sum over all N modes of Ct^T (I - dA^length)^{-1} dA^l dB, l < length, for the bilinear
    discretisation of A = diag(Lambda) - P P^*: the S4 kernel from its truncated generating function.

    dt: (H,) real; Lambda, P, B: (H, N/2) complex64 (kept halves); Ct: (c, H, N/2) complex64 (kept half of
    C~). Returns (c, H, length) float32.
    """
    c, H, half = Ct.shape
    outs = torch.cat([Ct, P.conj().unsqueeze(0)])  # (c+1, H, N/2): the C's and Q = conj(P)
    ins = torch.stack([B, P])  # (2, H, N/2)
    v = (outs.unsqueeze(1) * ins * dt[:, None]).reshape(-1, half)  # ((c+1) 2 H, N/2)
    w = (dt[:, None] * Lambda).repeat(2 * (c + 1), 1)
    z, scale = bilinear_fft_nodes(length, Lambda.device)
    # the conjugate modes, which the sums over all N modes need, enter as explicit conjugate columns
    r = cauchy_kernel(torch.cat([v, v.conj()], -1), z, torch.cat([w, w.conj()], -1)).view(c + 1, 2, H, -1)
    # Woodbury: Ct^T R B - (Ct^T R P)(Q^T R B) / (1 + Q^T R P), R = (z - dt Lambda)^{-1}
    k_f = r[:c, 0] - r[:c, 1] * r[c, 0] / (1 + r[c, 1])
    return torch.fft.irfft(k_f * scale, n=length)


class S4(KernelConvLayer):
    """S4 (DPLR) layer: (B, L, d_model) -> (B, L, d_model), or (B, d_model, L) both ways if transposed.

    Args:
        d_model: H, the number of channels (independent SSMs).
        d_state: N, the state size; N/2 complex modes are kept (conjugate symmetry), so N must be even.
        l_max: kernel length; a longer input is convolved with the first l_max taps of the impulse response,
            a shorter one with the first L. C is then C~ for length l_max (module docstring). None: the
            kernel is as long as the input (and C is the output matrix itself).
        dt_min, dt_max: dt is initialised log-uniformly in [dt_min, dt_max] per channel.
        bidirectional: add an anti-causal kernel from a second C (C is then (2, H, N/2)); A, B, P, dt shared.
        dropout: dropout after the activation, one mask per (batch, channel) tied over the sequence.
        transposed: inputs and outputs are (B, d_model, L) instead of (B, L, d_model).
        lr: learning rate for the SSM parameters log_dt, A_real_log, A_imag, B, P, stored on them as
            `_optim = {"weight_decay": 0.0, "lr": lr}` (state-spaces/s4's convention); lr == 0.0 freezes
            them as buffers; None keeps the optimizer's rate (weight decay still 0).

    Parameters (complex ones stored as real views (..., 2)): log_dt (H,), A_real_log (H, N/2) and
    A_imag (H, N/2) with Lambda = -exp(A_real_log) + i A_imag, P (H, N/2, 2), B (H, N/2, 2),
    C (H, N/2, 2) or (2, H, N/2, 2), D (H,), output_linear (Conv1d + GLU). Init: the NPLR form of
    HiPPO-LegS (_hippo.nplr_legs) in every channel, C standard complex normal.
    Recurrent state (causal layers only): (B, H, N/2) complex64.
    """

    def __init__(self, d_model: int, d_state: int = 64, l_max: Optional[int] = None, dt_min: float = 0.001,
                 dt_max: float = 0.1, bidirectional: bool = False, dropout: float = 0.0, transposed: bool = False,
                 lr: Optional[float] = None):
        super().__init__()
        check = ArgCheck("S4")
        modal_sizes(check, d_model, d_state, l_max)
        timescale(check, dt_min, dt_max)
        flags(check, bidirectional=bidirectional, transposed=transposed)
        dropout_rate(check, dropout)
        learning_rate(check, lr)

        self.d_model = self.H = d_model
        self.d_state = d_state
        self.l_max = l_max
        self.bidirectional = bidirectional
        self.transposed = transposed
        H, N2 = d_model, d_state // 2

        Lambda, P, B, _ = nplr_legs(d_state)
        B = torch.complex(B.real, B.imag.clamp(-B_CLIP, B_CLIP))
        expand = lambda t: torch.view_as_real(t.to(torch.complex64).expand(H, N2).clone())  # noqa: E731
        log_dt = log_uniform(H, dt_min, dt_max)
        self._register_ssm("log_dt", log_dt, lr)
        self._register_ssm("A_real_log", torch.log(-Lambda.real).float().expand(H, N2).clone(), lr)
        self._register_ssm("A_imag", Lambda.imag.float().expand(H, N2).clone(), lr)
        self._register_ssm("P", expand(P), lr)
        self._register_ssm("B", expand(B), lr)
        C = torch.randn((2, H, N2) if bidirectional else (H, N2), dtype=torch.cfloat)
        self.C = nn.Parameter(torch.view_as_real(C))
        if l_max is not None:
            with torch.no_grad():
                self.C.copy_(torch.view_as_real(self._convert_C(C.to(torch.complex128), l_max, inverse=False)))
        self.D = nn.Parameter(torch.randn(H))

        self.activation = nn.GELU()
        self.dropout = TiedDropout(dropout) if dropout > 0 else nn.Identity()
        self.output_linear = nn.Sequential(nn.Conv1d(H, 2 * H, kernel_size=1), nn.GLU(dim=-2))
        self._step_C_cache = None

    def continuous(self, dtype: torch.dtype = torch.float32):
        """(dt (H,), Lambda (H, N/2), P (H, N/2), B (H, N/2)): the continuous system A = diag(Lambda) - P P^*,
        in `dtype` (float32 or float64) and its complex counterpart."""
        dt = torch.exp(self.log_dt.to(dtype))
        Lambda = torch.complex(-torch.exp(self.A_real_log.to(dtype)), self.A_imag.to(dtype))
        return dt, Lambda, torch.view_as_complex(self.P.to(dtype)), torch.view_as_complex(self.B.to(dtype))

    def _bilinear_factors(self, dtype: torch.dtype = torch.float32):
        """(I - dt A / 2, I + dt A / 2) over all N modes (kept half first, conjugates second): (H, N, N) complex
        each; dA = (I - dt A / 2)^-1 (I + dt A / 2) and dB = (I - dt A / 2)^-1 dt B."""
        dt, Lambda, P, _ = self.continuous(dtype)
        Lambda, P = torch.cat([Lambda, Lambda.conj()], -1), torch.cat([P, P.conj()], -1)
        half_dtA = (dt / 2)[:, None, None] * (torch.diag_embed(Lambda) - P[:, :, None] * P.conj()[:, None, :])
        eye = torch.eye(self.d_state, dtype=Lambda.dtype, device=Lambda.device)
        return eye - half_dtA, eye + half_dtA

    def dense_transition(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """dA: (H, N, N) complex, the bilinear transition over all N modes (kept half first, conjugates second)."""
        implicit, explicit = self._bilinear_factors(dtype)
        return torch.linalg.solve(implicit, explicit)

    def _convert_C(self, C: torch.Tensor, length: int, inverse: bool) -> torch.Tensor:
        """Kept half of Ct = (I - dA^length)^T C (inverse=False) or of C = (I - dA^length)^{-T} Ct (inverse=True),
        in C's complex dtype. C: (..., H, N/2)."""
        dtype = torch.float64 if C.dtype == torch.complex128 else torch.float32
        dA = self.dense_transition(dtype)
        factor = torch.eye(self.d_state, dtype=dA.dtype, device=dA.device) - torch.linalg.matrix_power(dA, length)
        C = torch.cat([C, C.conj()], -1).unsqueeze(-2)  # (..., H, 1, N): row vectors
        C = torch.linalg.solve(factor, C, left=False) if inverse else C @ factor
        return C.squeeze(-2)[..., : self.d_state // 2]

    # Excluded from torch.compile (a graph break; fullgraph=True refuses it): torch 2.13's Inductor gets the
    # gradients of this complex kernel wrong on CPU (log_dt's off by O(1) relative), reproduced without this
    # package's ops by tests/test_inductor_complex_grad.py (torch 2.14.1 computes it right).
    @torch.compiler.disable
    def kernel(self, length: int) -> torch.Tensor:
        """Convolution kernel K[h, l] = C^T dA^l dB (sum over all N modes), l < length <= l_max: (H, length)
        float32, or (2, H, length) (causal, anti-causal) when bidirectional."""
        with torch.autocast(device_type=self.C.device.type, enabled=False):
            dt, Lambda, P, B = self.continuous()
            C = torch.view_as_complex(self.C.float())
            C = C if self.bidirectional else C.unsqueeze(0)
            if self.l_max is None:
                n_fft, Ct = length, self._convert_C(C, length, inverse=False)
            else:
                n_fft, Ct = self.l_max, C
            K = dplr_kernel(dt, Lambda, P, B, Ct, n_fft)[..., :length]
            return K if self.bidirectional else K[0]

    def recurrent_C(self) -> torch.Tensor:
        """C of the recurrence: (H, N/2) complex64 (kept half). With l_max set, converted from C~ in float64;
        reused while gradients are off and no parameter it depends on has changed."""
        C = torch.view_as_complex(self.C.float())
        if self.l_max is None:
            return C
        params = (self.log_dt, self.A_real_log, self.A_imag, self.P, self.C)
        key = tuple((p.data_ptr(), p._version, p.device) for p in params)
        cached = not torch.is_grad_enabled()
        if cached and self._step_C_cache is not None and self._step_C_cache[0] == key:
            return self._step_C_cache[1]
        C = self._convert_C(torch.view_as_complex(self.C.double()), self.l_max, inverse=True).to(torch.complex64)
        if cached:
            self._step_C_cache = (key, C)
        return C

    def default_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zero state (batch_size, d_model, d_state/2) complex64 (`dtype` is accepted for the common
        interface and ignored: the recurrence runs in complex64)."""
        self._check_causal()
        device = self.C.device if device is None else device
        return torch.zeros(batch_size, self.H, self.d_state // 2, dtype=torch.complex64, device=device)

    def prefill(self, x: torch.Tensor, state: torch.Tensor, chunk: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
        """A prompt x (B, L, d_model) (or (B, d_model, L) if transposed) from `state` -> (y as `step` gives it
        token by token, the state after the last token), without stepping: per chunk of `chunk` positions, a
        convolution with the recurrence's impulse response C^T dA^j dB, the response C^T dA^(t+1) h of the
        entering state, and the state the chunk leaves, all over the N modes with the dense bilinear dA
        (dense_transition); dA's powers applied to dB and C by repeated squaring (log2(chunk) batched
        matmuls, memory O(H N chunk)). Not truncated at l_max (as `step`); the given state is not modified."""
        self._check_causal()
        u = self._channels_first(x)
        if state.shape != (u.shape[0], self.H, self.d_state // 2) or state.dtype != torch.complex64:
            raise ValueError(f"S4.prefill: state must be complex64 of shape (B, d_model, d_state/2) = "
                             f"({u.shape[0]}, {self.H}, {self.d_state // 2}), got {state.dtype} {tuple(state.shape)}")
        length = u.shape[-1]
        chunk = max(1, min(chunk, length))
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.float()
            implicit, explicit = self._bilinear_factors()  # (H, N, N): kept half first, conjugates second
            dA = torch.linalg.solve(implicit, explicit)
            dt, _, _, B = self.continuous()
            both = lambda v: torch.cat([v, v.conj()], -1)  # noqa: E731  (kept half -> all N modes)
            dB = torch.linalg.solve(implicit, dt[:, None] * both(B))  # (H, N)
            impulse = _powers_applied(dA, dB, chunk)  # (H, N, chunk): dA^j dB
            readout = _powers_applied(dA.transpose(-1, -2), both(self.recurrent_C()), chunk + 1)  # C^T dA^j
            kernel = torch.einsum("hnj,hn->hj", readout[..., :chunk], dB).real
            h = both(state)
            outputs, decay = [], {}  # span -> dA^span (two spans at most: chunk and the remainder)
            for start in range(0, length, chunk):
                piece = u[..., start:start + chunk]
                span = piece.shape[-1]
                if span not in decay:
                    decay[span] = torch.linalg.matrix_power(dA, span)
                y = fftconv(piece, kernel[:, :span], D=self.D.float())
                outputs.append(y + torch.einsum("hnj,bhn->bhj", readout[..., 1:span + 1], h).real)
                h = torch.einsum("hnm,bhm->bhn", decay[span], h) + \
                    torch.einsum("hnj,bhj->bhn", impulse[..., :span], piece.flip(-1).to(h.dtype))
        return self.prefill_output(torch.cat(outputs, -1), x), h[..., :self.d_state // 2].contiguous()

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One token: x_t (B, d_model), state (B, d_model, d_state/2) -> (y_t (B, d_model), new state).

        x = dA x + dB u in O(N): with a = dt/2, (I + aA) x by its DPLR form, then (I - aA)^{-1} by the
        Woodbury identity; P^* x over all N modes is 2 Re(P^* x) over the kept half because the state stays
        conjugate-symmetric. y = 2 Re(C^T x) + D u, then the activation and output transform of forward. The
        new state is returned (the given one is not modified). Equals forward token by token while the
        position is < l_max (forward truncates the kernel there). In training mode the dropout mask is drawn
        per step, not tied over the sequence.
        """
        self._check_causal()
        if x_t.dim() != 2 or x_t.shape[1] != self.H:
            raise ValueError(f"S4.step: x_t must have shape (B, d_model) = (B, {self.H}), got {tuple(x_t.shape)}")
        if state.shape != (x_t.shape[0], self.H, self.d_state // 2) or state.dtype != torch.complex64:
            raise ValueError(f"S4.step: state must be complex64 of shape (B, d_model, d_state/2) = "
                             f"({x_t.shape[0]}, {self.H}, {self.d_state // 2}), got {state.dtype} "
                             f"{tuple(state.shape)}")
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            dt, Lambda, P, B = self.continuous()
            u = x_t.float()
            a = (dt / 2)[:, None]  # (H, 1)
            inv_diag = 1 / (1 - a * Lambda)  # (H, N/2)
            lowrank = 2 * (P.conj() * state).sum(-1).real  # (B, H): P^* x
            v = (1 + a * Lambda) * state - a * P * lowrank[..., None] + dt[:, None] * B * u[..., None]
            gain = 2 * (P.abs().square() * inv_diag).sum(-1).real  # (H,): P^* D^{-1} P
            proj = 2 * (P.conj() * inv_diag * v).sum(-1).real  # (B, H): P^* D^{-1} v
            state = inv_diag * (v - a * P * (proj / (1 + a[:, 0] * gain))[..., None])
            y = 2 * (self.recurrent_C() * state).sum(-1).real + self.D.float() * u
        return self.output_step(y.to(x_t.dtype)), state


def _powers_applied(matrix: torch.Tensor, vector: torch.Tensor, count: int) -> torch.Tensor:
    """matrix^j vector for j < count: matrix (H, N, N), vector (H, N) -> (H, N, count), by repeated squaring
    (the columns double each round: log2(count) batched matmuls)."""
    columns, power = vector.unsqueeze(-1), matrix
    while columns.shape[-1] < count:
        columns = torch.cat([columns, power @ columns], -1)
        power = power @ power
    return columns[..., :count]


__all__ = ["S4", "dplr_kernel", "bilinear_fft_nodes"]
