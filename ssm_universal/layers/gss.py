"""GSS: the Gated State Space layer (Mehta et al., "Long Range Language Modeling via Gated State Spaces",
arXiv 2206.13947, Pseudocode 3.2), a drop-in for gated-state-spaces-pytorch 0.1.0 (lucidrains): `GSS`, its
simplified DSS (`GSSDSS`, the package's `DSS`), and `GatedDsConv` with its `EfficientDsConv` (the DSS replaced
by a data-dependent convolution). The exponential-smoothing variant (`GatedMHESA`) is in gss_ema.py.

Same constructor arguments, defaults, parameter names, state_dict keys and initialisation as the package, and
the same outputs for the same parameters; the long convolutions go through ssm_kernels.fftconv (and the DSS
kernel through ssm_kernels.vandermonde_kernel), so they pick up the fast backends. Additions: a recurrent
`default_state` / `step` (for causal layers), argument validation, and positional use of the arguments
(the package's are keyword-only; every keyword call of the package works unchanged).

No bug of the package's layer math was found to fix: reverse_seq flips the whole block (input and output,
residual included), which equals an anti-causal inner convolution since every other op is per token; the
DSS kernel is the paper's ZOH kernel with step 1 (C (exp(Lambda) - 1) / Lambda, no length normalisation,
as in Pseudocode 3.2); shapes and the causal FFT padding are right. The package's einsum builds the DSS
kernel with O(H N L) memory, vandermonde_kernel with O(H N sqrt(L)).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn

from ssm_kernels import fftconv, vandermonde_kernel
from ssm_kernels.validation import ArgCheck

from ._args import flags
from ._modal_state import modal_prefill
from ._prefill import prefill


def check_factor(op: str, value) -> None:
    """dim_expansion_factor: a real number > 0 (the package takes int(factor * dim))."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{op}: dim_expansion_factor must be a finite number > 0, got {value!r}")


def check_input(op: str, x: torch.Tensor, width: int, name: str = "x", step: bool = False) -> None:
    layout = "(B, dim)" if step else "(B, L, dim)"
    if not isinstance(x, torch.Tensor) or x.dim() != (2 if step else 3) or x.shape[-1] != width:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{op}: {name} must have shape {layout} with dim = {width}, got {shape}")


class GatedBlock(nn.Module):
    """Pseudocode 3.2 around a sequence-mixing module `inner` of width dim_inner (x: (B, L, dim)):

        u = gelu(to_u(norm(x)))  (B, L, dim_hidden);  v = gelu(to_v(norm(x)))  (B, L, dim_inner)
        out = to_out(to_gate(inner(v)) * u) + x,  dim_hidden = int(dim_expansion_factor * dim).

    reverse_seq runs the block on the time-reversed sequence (an anti-causal layer, which has no step).
    Subclasses call build() in __init__; `inner` is registered under the package's name (dss, dsconv, mhesa),
    which fixes the state_dict keys, and has forward (B, L, dim_inner), default_state(batch_size, device,
    dtype) and step(v_t (B, dim_inner), state).
    """

    context_parallel = False  # no cp_group form (ssm_universal.context_parallel)

    @staticmethod
    def check_headed_branch(op: str, dim: int, heads: int, branch: str, width: int) -> None:
        """The checks of a gated block whose inner branch of `width` channels (argument `branch`) splits into
        `heads` groups."""
        check = ArgCheck(op)
        check.integer("dim", dim, 1)
        check.integer("heads", heads, 1)
        check.integer(branch, width, 1)
        if width % heads:
            raise ValueError(f"{op}: {branch} ({width}) must be divisible by heads ({heads})")

    def build(self, op: str, dim: int, dim_inner: int, dim_expansion_factor, reverse_seq: bool,
              inner_name: str, inner: nn.Module, residual: bool = True) -> None:
        check_factor(op, dim_expansion_factor)
        flags(ArgCheck(op), reverse_seq=reverse_seq, residual=residual)
        dim_hidden = int(dim_expansion_factor * dim)
        if dim_hidden < 1:
            raise ValueError(f"{op}: int(dim_expansion_factor * dim) must be >= 1, got {dim_hidden}")
        self.dim, self.dim_hidden, self.reverse_seq, self._inner_name = dim, dim_hidden, reverse_seq, inner_name
        self.residual = residual
        # residual=False: the bare mixer (no norm, no skip) for a surrounding pre-norm residual block
        self.norm = nn.LayerNorm(dim) if residual else nn.Identity()
        self.to_u = nn.Sequential(nn.Linear(dim, dim_hidden, bias=False), nn.GELU())
        self.to_v = nn.Sequential(nn.Linear(dim, dim_inner, bias=False), nn.GELU())
        setattr(self, inner_name, inner)
        self.to_gate = nn.Linear(dim_inner, dim_hidden, bias=False)
        self.to_out = nn.Linear(dim_hidden, dim)

    @property
    def inner(self) -> nn.Module:
        return getattr(self, self._inner_name)

    def _mix(self, x: torch.Tensor, inner_call) -> Tuple[torch.Tensor, object]:
        h = self.norm(x)
        v, extra = inner_call(self.to_v(h))
        out = self.to_out(self.to_gate(v) * self.to_u(h))
        return (out + x if self.residual else out), extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, dim) -> (B, L, dim), x's dtype (the residual keeps it under autocast)."""
        check_input(type(self).__name__, x, self.dim)
        if self.reverse_seq:
            x = x.flip(1)
        out, _ = self._mix(x, lambda v: (self.inner(v), None))
        return out.flip(1) if self.reverse_seq else out

    def default_state(self, batch_size: int, device=None, dtype=None):
        """The inner module's zero state (see its default_state)."""
        self._check_causal()
        return self.inner.default_state(batch_size, device=device, dtype=dtype)

    def prefill(self, x: torch.Tensor, state) -> Tuple[torch.Tensor, object]:
        """A prompt x (B, L, dim) from `state` -> (y (B, L, dim), the state after the last token), as `step`
        gives them: the inner module's prefill where it has one (layers._prefill), else its steps."""
        self._check_causal()
        check_input(f"{type(self).__name__}.prefill", x, self.dim)
        return self._mix(x, lambda v: prefill(self.inner, v, state))

    def step(self, x_t: torch.Tensor, state) -> Tuple[torch.Tensor, object]:
        """One token: x_t (B, dim), state -> (y_t (B, dim), new state); equals forward token by token. The
        given state is not modified."""
        self._check_causal()
        check_input(f"{type(self).__name__}.step", x_t, self.dim, "x_t", step=True)
        return self._mix(x_t, lambda v: self.inner.step(v, state))

    def _check_causal(self) -> None:
        if self.reverse_seq:
            raise RuntimeError(f"{type(self).__name__}: a reverse_seq layer has no recurrent step (its output "
                               "depends on future inputs); build it with reverse_seq=False")


class GSSDSS(nn.Module):
    """The simplified DSS inside GSS (gated-state-spaces-pytorch's DSS): x (B, L, dim) -> y (B, L, dim).

        u = norm(x);  Lambda = -exp(Lambda_real) + i exp(Lambda_imag) (i Lambda_imag without
        dss_kernel_lambda_imag_exp);  C = C_real + i C_imag (dim, kernel_N)
        K[h, l] = Re sum_n C[h, n] (exp(Lambda_n) - 1) / Lambda_n exp(Lambda_n l)
        y = causal_conv(u, K) + param_D u

    Parameters (all N(0, 1) at init, as the package): norm, Lambda_real (N,), Lambda_imag (N,),
    C_real (dim, N), C_imag (dim, N), param_D (dim,). Recurrent state: (B, dim, N) complex64,
    h_t = exp(Lambda) h_{t-1} + u_t, y_t = Re sum_n C' h_t + D u_t.
    """

    context_parallel = False  # no cp_group form (ssm_universal.context_parallel)

    def __init__(self, dim: int, kernel_N: int = 512, dss_kernel_lambda_imag_exp: bool = True):
        super().__init__()
        check = ArgCheck("GSSDSS")
        check.integer("dim", dim, 1)
        check.integer("kernel_N", kernel_N, 1)
        flags(check, dss_kernel_lambda_imag_exp=dss_kernel_lambda_imag_exp)
        self.dim, self.kernel_N = dim, kernel_N
        self.norm = nn.LayerNorm(dim)
        self.Lambda_real = nn.Parameter(torch.randn(kernel_N))
        self.Lambda_imag = nn.Parameter(torch.randn(kernel_N))
        self.C_real = nn.Parameter(torch.randn(dim, kernel_N))
        self.C_imag = nn.Parameter(torch.randn(dim, kernel_N))
        self.param_D = nn.Parameter(torch.randn(dim))
        self.dss_kernel_lambda_imag_exp = dss_kernel_lambda_imag_exp

    def modes(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(C' = C (exp(Lambda) - 1) / Lambda (dim, N), Lambda (N,)), complex64."""
        imag = self.Lambda_imag.float()
        Lambda = torch.complex(-self.Lambda_real.float().exp(), imag.exp() if self.dss_kernel_lambda_imag_exp
                               else imag)
        C = torch.complex(self.C_real.float(), self.C_imag.float())
        return C * torch.expm1(Lambda) / Lambda, Lambda

    def kernel(self, length: int) -> torch.Tensor:
        """K (dim, length) float32."""
        with torch.autocast(device_type=self.C_real.device.type, enabled=False):
            C, Lambda = self.modes()
            # vandermonde_kernel returns 2 Re sum (S4D's implicit conjugates); this kernel is Re sum
            return vandermonde_kernel(C / 2, Lambda.expand_as(C), length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, dim) -> (B, L, dim) in the dtype of norm(x)."""
        check_input("GSSDSS", x, self.dim)
        u = self.norm(x).transpose(1, 2)  # (B, dim, L)
        if u.shape[-1] == 0:
            return u.transpose(1, 2).clone()
        return fftconv(u, self.kernel(u.shape[-1]), D=self.param_D).transpose(1, 2)

    def default_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zero state (batch_size, dim, kernel_N) complex64 (`dtype` is accepted for the common interface and
        ignored: the recurrence runs in complex64)."""
        device = self.C_real.device if device is None else device
        return torch.zeros(batch_size, self.dim, self.kernel_N, dtype=torch.complex64, device=device)

    def prefill(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """A prompt x (B, L, dim) from `state` -> (y (B, L, dim), the state after the last token), as `step`
        gives them, in closed form (layers._modal_state); the given state is not modified."""
        check_input("GSSDSS.prefill", x, self.dim)
        self._check_state(state, x.shape[0], "prefill")
        u = self.norm(x).transpose(1, 2)  # (B, dim, L)
        with torch.autocast(device_type=x.device.type, enabled=False):
            C, Lambda = self.modes()
            y, state = modal_prefill(u, Lambda.expand_as(C), 1.0, C, self.param_D.float(), state)
        return y.to(u.dtype).transpose(1, 2), state

    def _check_state(self, state: torch.Tensor, batch: int, method: str) -> None:
        if state.shape != (batch, self.dim, self.kernel_N) or state.dtype != torch.complex64:
            raise ValueError(f"GSSDSS.{method}: state must be complex64 of shape (B, dim, kernel_N) = "
                             f"({batch}, {self.dim}, {self.kernel_N}), got {state.dtype} {tuple(state.shape)}")

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One token: x_t (B, dim), state (B, dim, kernel_N) complex64 -> (y_t (B, dim), new state)."""
        check_input("GSSDSS.step", x_t, self.dim, "x_t", step=True)
        self._check_state(state, x_t.shape[0], "step")
        u = self.norm(x_t)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            C, Lambda = self.modes()
            uf = u.float()
            state = torch.exp(Lambda) * state + uf.unsqueeze(-1)
            y = (C * state).sum(-1).real + self.param_D.float() * uf
        return y.to(u.dtype), state


class GSS(GatedBlock):
    """Gated State Space layer (Pseudocode 3.2): x (B, L, dim) -> (B, L, dim); see GatedBlock and GSSDSS.

    Args:
        dim: model width (E).
        dim_expansion_factor: the gated width is int(dim_expansion_factor * dim) (F).
        dss_kernel_N: N, the DSS modes per channel.
        dss_kernel_H: H, the width of the DSS branch.
        reverse_seq: run on the time-reversed sequence (anti-causal; no step).
        dss_kernel_lambda_imag_exp: Im Lambda = exp(Lambda_imag) (the paper's pseudocode) or Lambda_imag.
        residual: (not in the package) False drops the layer's own LayerNorm and skip connection, for use as
            the mixer of create_model's pre-norm residual blocks.
    Recurrent state: the DSS's (B, dss_kernel_H, dss_kernel_N) complex64.
    """

    def __init__(self, dim: int, dim_expansion_factor=4, dss_kernel_N: int = 512, dss_kernel_H: int = 256,
                 reverse_seq: bool = False, dss_kernel_lambda_imag_exp: bool = True, *, residual: bool = True):
        super().__init__()
        check = ArgCheck("GSS")
        check.integer("dim", dim, 1)
        check.integer("dss_kernel_N", dss_kernel_N, 1)
        check.integer("dss_kernel_H", dss_kernel_H, 1)
        flags(check, dss_kernel_lambda_imag_exp=dss_kernel_lambda_imag_exp)
        self.build("GSS", dim, dss_kernel_H, dim_expansion_factor, reverse_seq, "dss",
                   GSSDSS(dss_kernel_H, kernel_N=dss_kernel_N,
                          dss_kernel_lambda_imag_exp=dss_kernel_lambda_imag_exp),
                   residual=residual)


class EfficientDsConv(nn.Module):
    """The package's data-dependent convolution: v (B, L, dim) -> (B, L, dim), heads groups of dim / heads
    channels.

        u = norm(v);  k[b, m, g] = to_weight(v)[b, m, g]  (tap m comes from the input at position m)
        y[b, t, c] = sum_{m <= t} k[b, m, head(c)] u[b, t - m, c] + param_D[c] u[b, t, c]

    k is computed from v, not norm(v), as in the package. The kernel depends on the input, so there is no
    fixed-size recurrence: the state is the history of u and k (grows by one row per step, like a KV cache),
    and a step costs O(t).
    """

    context_parallel = False  # no cp_group form (ssm_universal.context_parallel)

    def __init__(self, dim: int, heads: int):
        super().__init__()
        check = ArgCheck("EfficientDsConv")
        check.integer("dim", dim, 1)
        check.integer("heads", heads, 1)
        if dim % heads:
            raise ValueError(f"EfficientDsConv: dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads = dim, heads
        self.norm = nn.LayerNorm(dim)
        self.to_weight = nn.Linear(dim, heads, bias=False)
        self.param_D = nn.Parameter(torch.randn(dim))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """v: (B, L, dim) -> (B, L, dim)."""
        check_input("EfficientDsConv", v, self.dim, "v")
        batch, length, _ = v.shape
        u = self.norm(v).transpose(1, 2)  # (B, dim, L)
        if length == 0:
            return u.transpose(1, 2).clone()
        k = self.to_weight(v).transpose(1, 2).repeat_interleave(self.dim // self.heads, dim=1)  # (B, dim, L)
        # one kernel per (batch, channel): fold the batch into fftconv's channels
        y = fftconv(u.reshape(1, batch * self.dim, length), k.reshape(batch * self.dim, length),
                    D=self.param_D.repeat(batch))
        return y.reshape(batch, self.dim, length).transpose(1, 2)

    def default_state(self, batch_size: int, device=None, dtype=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Empty history (u (batch_size, 0, dim), k (batch_size, 0, heads)) in `dtype` (default: the
        parameters' dtype)."""
        device = self.param_D.device if device is None else device
        dtype = self.param_D.dtype if dtype is None else dtype
        return (torch.zeros(batch_size, 0, self.dim, device=device, dtype=dtype),
                torch.zeros(batch_size, 0, self.heads, device=device, dtype=dtype))

    def step(self, v_t: torch.Tensor, state) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """One token: v_t (B, dim), state (u (B, t, dim), k (B, t, heads)) -> (y_t (B, dim), state with t+1
        rows)."""
        check_input("EfficientDsConv.step", v_t, self.dim, "v_t", step=True)
        if (not isinstance(state, (tuple, list)) or len(state) != 2 or state[0].dim() != 3
                or state[0].shape[0::2] != (v_t.shape[0], self.dim)
                or state[1].shape != (v_t.shape[0], state[0].shape[1], self.heads)):
            raise ValueError(f"EfficientDsConv.step: state must be (u (B, t, dim), k (B, t, heads)) with "
                             f"B = {v_t.shape[0]}, dim = {self.dim}, heads = {self.heads}")
        u_t = self.norm(v_t)
        u_hist = torch.cat([state[0], u_t.unsqueeze(1).to(state[0].dtype)], 1)
        k_hist = torch.cat([state[1], self.to_weight(v_t).unsqueeze(1).to(state[1].dtype)], 1)
        k = k_hist.float().repeat_interleave(self.dim // self.heads, dim=-1)  # (B, t+1, dim)
        y = (u_hist.float().flip(1) * k).sum(1) + self.param_D.float() * u_t.float()
        return y.to(u_t.dtype), (u_hist, k_hist)


class GatedDsConv(GatedBlock):
    """GSS with the DSS replaced by EfficientDsConv: x (B, L, dim) -> (B, L, dim); see GatedBlock.

    Args:
        dim: model width.
        heads: kernel groups of the convolution (dim_dsconv / heads channels share a kernel).
        dim_dsconv: width of the convolution branch.
        dim_expansion_factor: the gated width is int(dim_expansion_factor * dim).
        reverse_seq: run on the time-reversed sequence (anti-causal; no step).
    Recurrent state: EfficientDsConv's growing history.
    """

    def __init__(self, dim: int, heads: int = 8, dim_dsconv: int = 512, dim_expansion_factor=4,
                 reverse_seq: bool = False):
        super().__init__()
        self.check_headed_branch("GatedDsConv", dim, heads, "dim_dsconv", dim_dsconv)
        self.build("GatedDsConv", dim, dim_dsconv, dim_expansion_factor, reverse_seq, "dsconv",
                   EfficientDsConv(dim_dsconv, heads))


__all__: List[str] = ["GSSDSS", "GSS", "EfficientDsConv", "GatedDsConv", "GatedBlock"]
