"""Mamba-1 block (the selective SSM block of arXiv 2312.00752), a drop-in for mamba_ssm's Mamba.

Same constructor arguments, defaults, parameter names, state_dict keys and initialisation as
mamba_ssm.modules.mamba_simple.Mamba (mamba_ssm 2.3.2), and the same math as its non-fused path, so a
mamba_ssm checkpoint loads with strict=True and gives the same outputs. The convolution and the scan go
through the public ssm_kernels ops, which pick the fastest backend for the tensors at hand.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn

from ssm_kernels import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update
from ssm_kernels._autograd import needs_grad
from ssm_kernels._recompute import recomputed_activations
from ssm_kernels.validation import ArgCheck

from ..context_parallel import check_no_state
from ._inference_cache import InferenceCacheMixin
from ._mamba_args import dt_init_range, inner_width
from ._args import positive
from ._channels_first import (batched_linear, batched_linear_and_input, channels_first_linear_halves,
                              linear_from_channels_first, split_channels)
from ._mamba_init import depthwise_conv1d, dt_bias_init, no_weight_decay, ones_D, s4d_real_A_log
from ._split_linear import is_plain_linear
from ._step_constants import MambaStepConstants

State = Tuple[torch.Tensor, torch.Tensor]


class Mamba(MambaStepConstants, InferenceCacheMixin, nn.Module):
    """Mamba-1 block: (B, L, d_model) -> (B, L, d_model).

    in_proj -> x, z (d_inner = expand * d_model each); x = silu(causal depthwise conv(x));
    x_proj(x) -> dt (dt_rank), B, C (d_state each); dt = dt_proj(dt) with its bias applied inside the scan;
    y = selective_scan(x, dt, A = -exp(A_log), B, C, D, gate z); out_proj(y).

    mixer_rms_eps: FalconMamba's variant when set: dt, B and C are each RMS-normalised without weights (in fp32,
    this eps inside the root) right after x_proj, as transformers' FalconMambaMixer does. None: Mamba.
    `use_fast_path` is accepted for compatibility and ignored: ssm_kernels chooses the kernels.
    cp_group: a torch.distributed group over which the sequence is split (ssm_universal.context_parallel): the
    forward then takes this rank's shard of the sequence; no state / inference_params with it.
    Recurrent state: (conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state) fp32).
    """

    context_parallel = True  # ssm_universal.context_parallel
    # Training recomputes the conv output and dt in the backward instead of keeping them (as mamba_ssm's
    # mamba_inner_fn with its default checkpoint_lvl=1): 2 (B, d_inner, L) activations less per block for a
    # conv and a small GEMM more. None: on GPUs only (on a CPU memory is rarely short, and the host time of
    # the extra calls is not hidden behind kernels); True / False: always / never (on an instance or the class).
    recompute_in_backward: Optional[bool] = None

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
                 dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False,
                 use_fast_path=True, layer_idx=None, mixer_rms_eps=None, cp_group=None, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.cp_group = cp_group
        check = ArgCheck("Mamba")
        self.d_model = check.integer("d_model", d_model, minimum=1)
        self.d_state = check.integer("d_state", d_state, minimum=1)
        self.d_conv = check.integer("d_conv", d_conv, minimum=1)
        self.d_inner = inner_width(check, self.d_model, expand)
        self.expand = expand
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else check.integer("dt_rank", dt_rank,
                                                                                            minimum=1)
        dt_min, dt_max, dt_init_floor = dt_init_range(check, dt_min, dt_max, dt_init_floor)
        check.choice("dt_init", dt_init, ("random", "constant"))
        dt_scale = check.finite("dt_scale", dt_scale)
        self.use_fast_path = use_fast_path
        self.layer_idx = None if layer_idx is None else check.integer("layer_idx", layer_idx, minimum=0)
        self.mixer_rms_eps = None if mixer_rms_eps is None else positive(check, "mixer_rms_eps", mixer_rms_eps)
        self.activation = "silu"

        self.in_proj = nn.Linear(self.d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = depthwise_conv1d(self.d_inner, d_conv, conv_bias, **factory_kwargs)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + self.d_state * 2, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt projection initialised to preserve variance
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, dt_min, dt_max, dt_init_floor, **factory_kwargs))
        self.dt_proj.bias._no_reinit = True  # model-level init zeroes Linear biases except this one

        # A_log and D stay fp32 whatever `dtype` is, as in mamba_ssm
        self.A_log = no_weight_decay(s4d_real_A_log(self.d_inner, self.d_state, device=device))
        self.D = no_weight_decay(ones_D(self.d_inner, device=device))

        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory_kwargs)

    def forward(self, hidden_states: torch.Tensor, inference_params=None, state: Optional[State] = None):
        """hidden_states: (B, L, d_model) -> (B, L, d_model).

        state: optional (conv_state, ssm_state) from default_state: the sequence continues from it, and it is
            overwritten in place with the state after the last token (detached), ready for `step`.
        inference_params: mamba_ssm's InferenceParams (key_value_memory_dict, seqlen_offset): the states of
            layer `layer_idx` are kept there; seqlen_offset == 0 starts from zero states (prefill), > 0
            continues from the cached ones (one token at a time like mamba_ssm, or several).
        """
        batch, seqlen, _ = hidden_states.shape
        check_no_state("Mamba", self.cp_group, inference_params=inference_params, state=state)
        state, continuing = self._continued_state(inference_params, state, batch)
        if continuing and seqlen == 1:
            return self.step(hidden_states[:, 0], state)[0].unsqueeze(1)

        # The GEMMs produce their outputs channels-first with L contiguous (weight @ activations^T, as mamba_ssm's
        # fused path does): the conv and the scan then read (and write their gradients in) rows along L, not
        # columns of (B, L, channels) tensors, which made them gather strided elements and the backward copy
        # every gradient back into that layout.
        # Plain nn.Linear projections run as those GEMMs; anything else (a subclass, a LoRA-style wrapper, hooks)
        # is called as a module on (B, L, K).
        if is_plain_linear(self.in_proj):  # (B, d_inner, L) each, halves of one (2 d_inner, B, L)-ordered GEMM output
            x, z = channels_first_linear_halves(hidden_states, self.in_proj.weight, self.in_proj.bias)
        else:
            x, z = split_channels(self.in_proj(hidden_states).transpose(1, 2))
        weight = self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)
        conv_bias = self.conv1d.bias
        conv_init = None
        if state is not None:
            conv_state, ssm_state = state
            conv_init = conv_state[..., conv_state.shape[-1] - (self.d_conv - 1):].to(x.dtype)
            with torch.no_grad():
                width = conv_state.shape[-1]  # the last `width` inputs: only x's tail is copied
                new_conv = torch.cat([conv_state.to(x.dtype), x[..., -width:]], dim=-1)[..., -width:]
        # Training keeps neither the conv output nor dt for the backward (2 x (B, d_inner, L)): they are
        # recomputed from x and x_proj's output, which stay saved anyway (mamba_ssm's checkpoint_lvl=1)
        recompute = self.recompute_in_backward
        recompute = (x.is_cuda if recompute is None else recompute) and state is None and self.cp_group is None
        recompute = recompute and needs_grad(hidden_states, weight, self.dt_proj.weight, self.A_log, self.D)
        with recomputed_activations(recompute, x.device) as keep_out:
            x = keep_out(self._conv, x, weight, conv_bias, conv_init)  # (B, d_inner, L)

            if is_plain_linear(self.x_proj) and self.x_proj.bias is None:
                # x (the scan's input: its gradient and x_proj's are summed inside the backward's GEMM) and
                # x_dbl (B, dt_rank + 2 d_state, L)
                x, x_dbl = batched_linear_and_input(self.x_proj.weight, x)
            else:
                x_dbl = self.x_proj(x.transpose(1, 2)).transpose(1, 2)
            dt_low, B, C = self._dt_b_c(x_dbl, dim=1)  # (B, dt_rank | d_state, L)
            dt = keep_out(batched_linear, self.dt_proj.weight, dt_low)  # (B, d_inner, L); bias added in the scan
            (A,) = self.constants_for_forward()  # (d_inner, d_state) fp32
            y = selective_scan(x, dt, A, B, C, D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                               delta_softplus=True, return_final_state=state is not None,
                               initial_state=None if state is None else ssm_state.float(), cp_group=self.cp_group)
        if state is not None:
            y, last_state = y
            conv_state.copy_(new_conv)
            ssm_state.copy_(last_state.detach())
        if is_plain_linear(self.out_proj):
            return linear_from_channels_first(y, self.out_proj.weight, self.out_proj.bias)  # (B, L, d_model)
        return self.out_proj(y.transpose(1, 2))

    def prefill(self, x: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """A prompt x (B, L, d_model) from `state` -> (y (B, L, d_model), state): the parallel forward, which
        leaves the state after the last token in the state tensors (updated in place, as by `step`)."""
        return self(x, state=state), state

    def step(self, x_t: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """One token: x_t (B, d_model) -> (y_t (B, d_model), state). The state tensors are updated in place
        (the returned state is the same pair of tensors)."""
        conv_state, ssm_state = state
        x, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, d_inner) each
        # causal_conv1d_update needs x in the cache's dtype (they differ under autocast)
        x = causal_conv1d_update(x.to(conv_state.dtype), conv_state, self.conv1d.weight.squeeze(1),
                                 self.conv1d.bias, activation=self.activation)
        dt_low, B, C = self._dt_b_c(self.x_proj(x), dim=-1)  # (B, dt_rank), (B, d_state) x 2
        (A,) = self.constants_for_step()
        # the update projects dt_low itself (dt_proj's GEMM fused) and reads D and dt_bias as they are, in fp32
        # (a separate GEMM or a cast would each be a kernel per layer and token)
        y = selective_state_update(ssm_state, x, dt_low, A, B, C, D=self.D, z=z, dt_bias=self.dt_proj.bias,
                                   dt_softplus=True, dt_proj_weight=self.dt_proj.weight)
        return self.out_proj(y), state

    def _conv(self, x, weight, bias, initial_states):
        """The block's causal conv and SiLU: x (B, d_inner, L) -> (B, d_inner, L)."""
        return causal_conv1d(x, weight, bias, activation=self.activation, initial_states=initial_states,
                             cp_group=self.cp_group)

    def _dt_b_c(self, x_dbl: torch.Tensor, dim: int):
        """x_proj's output -> dt (dt_rank), B, C (d_state each), split along `dim` (FalconMamba: each
        normalised along it)."""
        parts = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=dim)
        if self.mixer_rms_eps is None:
            return parts
        return [rms_normalize(part, self.mixer_rms_eps, dim) for part in parts]

    def default_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zero state: conv_state (B, d_inner, d_conv) in `dtype` (default: the conv weight's), the last
        d_conv conv inputs as mamba_ssm caches them; ssm_state (B, d_inner, d_state) fp32."""
        device = self.conv1d.weight.device if device is None else device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32)
        return conv_state, ssm_state


def rms_normalize(x: torch.Tensor, eps: float, dim: int = -1) -> torch.Tensor:
    """x / sqrt(mean(x^2 over `dim`) + eps), computed in fp32, returned in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(dim, keepdim=True) + eps)).to(x.dtype)
