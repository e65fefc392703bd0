"""The "sequential" Mamba-2 block (Dao & Gu, arXiv 2405.21060, Section 7.1 and Figure 6 left).

Mamba-1's block structure with Mamba-2's SSD layer: the SSM parameters dt, B, C are a projection of the SSM
input X after the convolution (data-dependent on X, as in Mamba-1), whereas the "parallel" block
(layers/mamba2.py, mamba_ssm's Mamba2) produces them together with X from the block input. A is a scalar per
head (times the identity), and the scan is SSD (ssm_kernels.ssd_chunk_scan), so the forward runs the chunked
matmul algorithm and the decoding step runs selective_state_update in its (H, P, N) form.

mamba_ssm has no sequential block; the constructor takes the arguments of ssm_universal.layers.Mamba2 that
apply (d_ssm does not: there are no MLP channels), with the same defaults and initialisation of dt_bias,
A_log, D and the gated RMSNorm.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_kernels import causal_conv1d, causal_conv1d_update, selective_state_update
from ssm_kernels.validation import ArgCheck

from ._inference_cache import InferenceCacheMixin
from ._mamba_args import A_init_range_of, dt_init_range, dt_limit_of, inner_width
from ._args import positive
from ._mamba_init import depthwise_conv1d, dt_bias_init, no_weight_decay, ones_D, uniform_A_log
from ._split_linear import is_plain_linear, split_linear
from ._step_constants import MambaStepConstants
from .mamba2 import NO_DT_LIMIT, Mamba2, RMSNormGated

State = Tuple[torch.Tensor, torch.Tensor]


def _check_arguments(check: ArgCheck, d_model, d_state, d_conv, conv_init, expand, headdim, ngroups,
                     A_init_range, dt_min, dt_max, dt_init_floor, dt_limit, chunk_size):
    for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("headdim", headdim),
                        ("ngroups", ngroups), ("chunk_size", chunk_size)):
        check.integer(name, value, minimum=1)
    if conv_init is not None:
        positive(check, "conv_init", conv_init)
    d_inner = inner_width(check, d_model, expand)
    if d_inner % headdim:
        check.fail(f"headdim = {headdim} must divide d_inner = expand * d_model = {d_inner}")
    if (d_inner // headdim) % ngroups:
        check.fail(f"ngroups = {ngroups} must divide nheads = d_inner / headdim = {d_inner // headdim}")
    dt_init_range(check, dt_min, dt_max, dt_init_floor)
    A_init_range_of(check, A_init_range)
    dt_limit_of(check, dt_limit)


class Mamba2Sequential(MambaStepConstants, InferenceCacheMixin, nn.Module):
    """Sequential Mamba-2 block: u (B, L, d_model) -> (B, L, d_model).

    in_proj -> x, z (d_inner = expand * d_model each); x = silu(causal depthwise conv(x)) (the SSM input X);
    x_proj(X) -> dt (nheads), B, C (ngroups * d_state each);
    y = SSD(X as (nheads, headdim), dt + dt_bias (softplus, clamped to dt_limit), A = -exp(A_log), B, C, D);
    y = gated_rmsnorm(y, z) if rmsnorm else y * silu(z); out_proj(y).

    Args (as ssm_universal.layers.Mamba2): d_state N; d_conv conv width; conv_init: conv weights uniform in
    [-conv_init, conv_init] (None: nn.Conv1d's init); expand; headdim P (divides d_inner); ngroups G of B/C
    (divides nheads = d_inner / P); A_init_range: A = -exp(A_log) with exp(A_log) ~ U(A_init_range) per head;
    D_has_hdim: D per channel (d_inner,) instead of per head; rmsnorm / norm_before_gate: the output norm
    (group size d_inner / ngroups) and where z gates; dt_min, dt_max, dt_init_floor: dt_bias = softplus^-1 of
    a log-uniform dt; dt_limit: clamp of dt after softplus; bias: of in_proj / out_proj; conv_bias;
    chunk_size: the SSD chunk length (speed only); layer_idx: key of this layer's state in inference_params.

    Parameters: in_proj (2 d_inner, d_model), conv1d (d_inner, 1, d_conv), x_proj (nheads + 2 G N, d_inner),
    dt_bias (nheads,), A_log (nheads,), D (nheads,) or (d_inner,), norm.weight (d_inner,) with rmsnorm,
    out_proj (d_model, d_inner). A_log, D and dt_bias are marked _no_weight_decay.
    Recurrent state: (conv_state (B, d_inner, d_conv), the last d_conv conv inputs; ssm_state
    (B, nheads, headdim, d_state) fp32).
    """

    context_parallel = False  # no cp_group form (ssm_universal.context_parallel)

    def __init__(self, d_model, d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, ngroups=1,
                 A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False, dt_min=0.001,
                 dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), bias=False, conv_bias=True,
                 chunk_size=256, layer_idx=None, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        check = ArgCheck("Mamba2Sequential")
        _check_arguments(check, d_model, d_state, d_conv, conv_init, expand, headdim, ngroups, A_init_range,
                         dt_min, dt_max, dt_init_floor, dt_limit, chunk_size)
        if layer_idx is not None:
            check.integer("layer_idx", layer_idx, minimum=0)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.conv_init = conv_init
        self.d_inner = int(expand * d_model)
        self.headdim, self.ngroups = headdim, ngroups
        self.nheads = self.d_inner // headdim
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = bool(D_has_hdim), bool(rmsnorm), bool(norm_before_gate)
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx
        self.activation = "silu"

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory_kwargs)
        self.conv1d = depthwise_conv1d(self.d_inner, d_conv, conv_bias, conv_init, **factory_kwargs)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.nheads + 2 * ngroups * d_state, bias=False, **factory_kwargs)

        self.dt_bias = no_weight_decay(dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor, **factory_kwargs))
        self.A_log = no_weight_decay(uniform_A_log(self.nheads, A_init_range, **factory_kwargs))
        self.D = no_weight_decay(ones_D(self.d_inner if self.D_has_hdim else self.nheads, device=device))

        if self.rmsnorm:
            self.norm = RMSNormGated(self.d_inner, eps=1e-5, norm_before_gate=self.norm_before_gate,
                                     group_size=self.d_inner // ngroups, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    # ------------------------------------------------------------------ helpers
    _conv_tail = Mamba2._conv_tail  # the last d_conv conv inputs, masked to the last sequence of seq_idx
    _D = Mamba2._D
    _scan = Mamba2._scan

    def _ssm_params(self, x):
        """The SSM input X (..., d_inner) -> dt (..., nheads), B, C (..., ngroups * d_state)."""
        N = self.ngroups * self.d_state
        return torch.split(self.x_proj(x), [self.nheads, N, N], dim=-1)

    def _output(self, y, z):
        """y, z (..., d_inner) -> (..., d_model): the gated norm (the gate is already in y without it)."""
        return self.out_proj(self.norm(y, z) if self.rmsnorm else y)

    # ------------------------------------------------------------------ forward
    def forward(self, u: torch.Tensor, seq_idx: Optional[torch.Tensor] = None, inference_params=None,
                state: Optional[State] = None) -> torch.Tensor:
        """u: (B, L, d_model) -> (B, L, d_model).

        seq_idx: (B, L) int32/int64: the conv and the scan restart wherever it changes (packed sequences).
        state: optional (conv_state, ssm_state) from default_state: the sequence continues from it, and it is
            overwritten in place with the state after the last token (detached), ready for `step`.
        inference_params: mamba_ssm's InferenceParams: layer `layer_idx`'s states live in its
            key_value_memory_dict; seqlen_offset == 0 starts from zero states (prefill), > 0 continues from
            the cached ones (one token at a time through `step`, or several).
        """
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"Mamba2Sequential: u must have shape (B, L, d_model) with d_model = {self.d_model}, "
                             f"got {tuple(u.shape)}")
        batch, seqlen, _ = u.shape
        state, continuing = self._continued_state(inference_params, state, batch)
        if continuing and seqlen == 1:
            return self.step(u[:, 0], state)[0].unsqueeze(1)

        if is_plain_linear(self.in_proj):  # one GEMM whose backward reads both halves' gradients in place
            x, z = split_linear(u, self.in_proj.weight, self.in_proj.bias, (self.d_inner, self.d_inner))
        else:
            x, z = self.in_proj(u).chunk(2, dim=-1)
        x = x.transpose(1, 2)  # (B, d_inner, L)
        conv_init = None
        if state is not None:
            conv_state, ssm_state = state
            conv_init = conv_state[..., conv_state.shape[-1] - (self.d_conv - 1):].to(x.dtype)
            with torch.no_grad():
                new_conv = self._conv_tail(conv_state, x, seq_idx)
        x = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation=self.activation,
                          seq_idx=seq_idx, initial_states=conv_init).transpose(1, 2)  # (B, L, d_inner)
        dt, B, C = self._ssm_params(x)
        y = self._scan(x, dt, B, C, z, seq_idx=seq_idx, initial_states=None if state is None else ssm_state.float(),
                       return_final_states=state is not None)
        if state is not None:
            y, last_state = y
            conv_state.copy_(new_conv)
            ssm_state.copy_(last_state.detach())
        return self._output(y.reshape(batch, seqlen, self.d_inner), z)

    # ------------------------------------------------------------------ recurrent
    def prefill(self, x: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """A prompt x (B, L, d_model) from `state` -> (y (B, L, d_model), state): the parallel forward, which
        leaves the state after the last token in the state tensors (updated in place, as by `step`)."""
        return self(x, state=state), state

    def step(self, x_t: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """One token: x_t (B, d_model) -> (y_t (B, d_model), state). The state tensors are updated in place
        (the returned state is the same pair of tensors); no autograd through the state update."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(f"Mamba2Sequential.step: x_t must have shape (B, d_model) = (B, {self.d_model}), "
                             f"got {tuple(x_t.shape)}")
        conv_state, ssm_state = state
        x, z = self.in_proj(x_t).chunk(2, dim=-1)
        # causal_conv1d_update needs x in the cache's dtype (they differ under autocast)
        x = causal_conv1d_update(x.to(conv_state.dtype), conv_state, self.conv1d.weight.squeeze(1),
                                 self.conv1d.bias, activation=self.activation)
        dt, B, C = self._ssm_params(x)
        H, P, N = self.nheads, self.headdim, self.d_state
        A = self.constants_for_step()[0][:, None, None].expand(H, P, N)
        dt_bias = self.dt_bias  # D and dt_bias as they are: the update reads them in fp32
        if self.dt_limit == NO_DT_LIMIT:
            dt_bias, dt_softplus = dt_bias[:, None].expand(H, P), True
        else:  # the update has no clamp: apply softplus and dt_limit here, as the forward does
            dt = F.softplus(dt.float() + dt_bias).clamp(*self.dt_limit).to(x.dtype)
            dt_bias, dt_softplus = None, False
        D = self._D()
        D = D if self.D_has_hdim else D[:, None].expand(H, P)
        y = selective_state_update(
            ssm_state, x.reshape(-1, H, P), dt.to(x.dtype)[:, :, None].expand(-1, H, P), A,
            B.reshape(-1, self.ngroups, N).to(x.dtype), C.reshape(-1, self.ngroups, N).to(x.dtype), D=D,
            z=None if self.rmsnorm else z.reshape(-1, H, P).to(x.dtype), dt_bias=dt_bias, dt_softplus=dt_softplus)
        return self._output(y.reshape(-1, self.d_inner), z), state

    def default_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zero state: conv_state (B, d_inner, d_conv) in `dtype` (default: the conv weight's);
        ssm_state (B, nheads, headdim, d_state) fp32."""
        device = self.conv1d.weight.device if device is None else device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                                dtype=torch.float32)
        return conv_state, ssm_state


__all__ = ["Mamba2Sequential"]
