"""Mamba-2 block (the parallel SSD block of arXiv 2405.21060), a drop-in for mamba_ssm's Mamba2.

Same constructor arguments, defaults, parameter names, state_dict keys and initialisation as
mamba_ssm.modules.mamba2.Mamba2 (mamba_ssm 2.3.2), and the math of its non-fused path (which its fused
path equals), so a mamba_ssm checkpoint loads with strict=True and gives the same outputs. The conv, the
SSD scan, the gated RMSNorm and the decoding updates go through the public ssm_kernels ops.

Fixed relative to mamba_ssm: the decoding step applies dt_limit (mamba_ssm's step ignores it, so its
decoding drifts from its forward), supports ngroups > 1 and D_has_hdim on every path, and cu_seqlens
alone resets the conv and the scan at sequence boundaries (mamba_ssm also needs seq_idx for that).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_kernels import (causal_conv1d, causal_conv1d_update, gated_rmsnorm, selective_state_update,
                         ssd_chunk_scan)
from ssm_kernels._autograd import needs_grad
from ssm_kernels._recompute import recomputed_activations
from ssm_kernels._side_by_side import split
from ssm_kernels.validation import ArgCheck

from ..context_parallel import check_no_state
from ._inference_cache import InferenceCacheMixin
from ._mamba_args import A_init_range_of, dt_init_range, dt_limit_of, inner_width
from ._args import positive
from ._split_linear import is_plain_linear, split_linear
from ._mamba_init import depthwise_conv1d, dt_bias_init, no_weight_decay, ones_D, uniform_A_log
from ._step_constants import MambaStepConstants

State = Tuple[torch.Tensor, torch.Tensor]
NO_DT_LIMIT = (0.0, float("inf"))


def ssd_step(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: torch.Tensor, dt_bias: torch.Tensor, dt_limit, z: Optional[torch.Tensor] = None
             ) -> torch.Tensor:
    """One SSD decoding step, state (B, H, P, N) fp32 updated in place: x (B, H, P), dt (B, H) before its bias
    and softplus, A (H,), B, C (B, G, N), D (H,) or (H, P), dt_bias (H,) (any float dtype), z (B, H, P) or None
    -> y (B, H, P). dt is clamped to dt_limit as in the full-sequence scan."""
    H, P, N = x.shape[1], x.shape[2], state.shape[-1]
    if tuple(dt_limit) == NO_DT_LIMIT:
        dt_bias, dt_softplus = dt_bias[:, None].expand(H, P), True
    else:  # the update has no clamp: apply softplus and dt_limit here, as the forward does
        dt = F.softplus(dt.float() + dt_bias).clamp(*dt_limit).to(x.dtype)
        dt_bias, dt_softplus = None, False
    D = D if D.dim() == 2 else D[:, None].expand(H, P)
    return selective_state_update(state, x, dt[:, :, None].expand(-1, H, P), A[:, None, None].expand(H, P, N),
                                  B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


class RMSNormGated(nn.Module):
    """mamba_ssm.ops.triton.layernorm_gated.RMSNorm: group-wise RMSNorm with an optional SiLU gate z.
    x, z: (..., hidden_size) -> (..., hidden_size). Parameters: weight (hidden_size,), ones at init."""

    def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=True, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        return gated_rmsnorm(x, self.weight, z, eps=self.eps, group_size=self.group_size,
                             norm_before_gate=self.norm_before_gate)


class Mamba2(MambaStepConstants, InferenceCacheMixin, nn.Module):
    """Mamba-2 block: u (B, L, d_model) -> (B, L, d_model); or (B * L, d_model) with `seqlen=L`.

    in_proj -> z0, x0 (d_mlp = d_inner - d_ssm each, a gated MLP), z (d_ssm), xBC (d_ssm + 2 ngroups d_state),
    dt (nheads); xBC = silu(causal depthwise conv(xBC)) -> x (nheads, headdim), B, C (ngroups, d_state);
    y = SSD(x, dt + dt_bias (softplus, clamped to dt_limit), A = -exp(A_log), B, C, D);
    y = gated_rmsnorm(y, z) if rmsnorm else y * silu(z); out_proj(cat(silu(z0) * x0, y)).

    use_mem_eff_path and sequence_parallel are accepted for compatibility: ssm_kernels chooses the kernels.
    Recurrent state: (conv_state (B, conv_dim, d_conv), the last d_conv conv inputs as mamba_ssm caches them,
    conv_dim = d_ssm + 2 ngroups d_state; ssm_state (B, nheads, headdim, d_state) fp32).
    """

    context_parallel = True  # ssm_universal.context_parallel
    # Training recomputes the conv output, the SSD's chunk boundary states (Triton backend) and out_proj's input
    # (the gated norm's output) in the backward instead of keeping them, as mamba_ssm's
    # mamba_split_conv1d_scan_combined does: about half the activations per block (benchmarks/results/
    # cpu_mamba2_activations_kept.txt) for a conv, a chunk-state pass and a norm more. None: on GPUs only;
    # True / False: always / never (on an instance or the class).
    recompute_in_backward: Optional[bool] = None

    def __init__(self, d_model, d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, d_ssm=None,
                 ngroups=1, A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False,
                 dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), bias=False,
                 conv_bias=True, chunk_size=256, use_mem_eff_path=True, layer_idx=None, process_group=None,
                 sequence_parallel=True, cp_group=None, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.cp_group = cp_group
        if process_group is not None:
            raise ValueError("Mamba2: process_group (tensor parallelism) is not supported; pass None")
        check = ArgCheck("Mamba2")
        self.d_model = check.integer("d_model", d_model, minimum=1)
        self.d_state = check.integer("d_state", d_state, minimum=1)
        self.d_conv = check.integer("d_conv", d_conv, minimum=1)
        self.conv_init = None if conv_init is None else positive(check, "conv_init", conv_init)
        self.d_inner = inner_width(check, self.d_model, expand)
        self.expand = expand
        self.process_group = process_group
        self.sequence_parallel = sequence_parallel
        self.world_size, self.local_rank = 1, 0
        self.headdim = check.integer("headdim", headdim, minimum=1)
        self.d_ssm = self.d_inner if d_ssm is None else check.integer("d_ssm", d_ssm, minimum=1)
        if self.d_ssm > self.d_inner:
            check.fail(f"d_ssm must be <= d_inner = expand * d_model = {self.d_inner}, got {d_ssm}")
        if self.d_ssm % self.headdim:
            check.fail(f"headdim = {headdim} must divide d_ssm = {self.d_ssm}")
        self.ngroups = check.integer("ngroups", ngroups, minimum=1)
        self.nheads = self.d_ssm // self.headdim
        if self.nheads % self.ngroups:
            check.fail(f"ngroups = {ngroups} must divide nheads = d_ssm / headdim = {self.nheads}")
        A_init_range = A_init_range_of(check, A_init_range)
        dt_min, dt_max, dt_init_floor = dt_init_range(check, dt_min, dt_max, dt_init_floor)
        dt_limit_of(check, dt_limit)
        self.D_has_hdim = bool(D_has_hdim)
        self.rmsnorm = bool(rmsnorm)
        self.norm_before_gate = bool(norm_before_gate)
        self.dt_limit = dt_limit
        self.activation = "silu"
        self.chunk_size = check.integer("chunk_size", chunk_size, minimum=1)
        self.use_mem_eff_path = use_mem_eff_path
        self.layer_idx = layer_idx

        # Order: [z0, x0, z, x, B, C, dt] (z0, x0: the d_mlp = d_inner - d_ssm gated-MLP channels)
        d_in_proj = 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads
        self.in_proj = nn.Linear(self.d_model, d_in_proj, bias=bias, **factory_kwargs)
        conv_dim = self.d_ssm + 2 * self.ngroups * self.d_state
        self.conv1d = depthwise_conv1d(conv_dim, self.d_conv, conv_bias, self.conv_init, **factory_kwargs)
        self.act = nn.SiLU()

        self.dt_bias = no_weight_decay(dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor, **factory_kwargs))
        self.A_log = no_weight_decay(uniform_A_log(self.nheads, A_init_range, **factory_kwargs))
        self.D = no_weight_decay(ones_D(self.d_ssm if self.D_has_hdim else self.nheads, device=device))

        if self.rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=self.norm_before_gate,
                                     group_size=self.d_ssm // self.ngroups, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory_kwargs)

    # ------------------------------------------------------------------ helpers
    def _in_proj_sizes(self):
        """in_proj's output channels: [z0, x0, z, xBC, dt]."""
        d_mlp = self.d_inner - self.d_ssm
        return [d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * self.ngroups * self.d_state, self.nheads]

    def _split(self, zxbcdt):
        return torch.split(zxbcdt, self._in_proj_sizes(), dim=-1)

    def _projected(self, u):
        """in_proj(u) (B, L, d_model) split into z0, x0, z, xBC, dt (B, L, channels each). A plain nn.Linear runs
        as one GEMM whose backward reads the parts' gradients where their ops wrote them (no in_proj-sized
        concatenation); anything else (a subclass, a LoRA-style wrapper, hooks) is called as a module."""
        if is_plain_linear(self.in_proj):
            return split_linear(u, self.in_proj.weight, self.in_proj.bias, self._in_proj_sizes())
        return self._split(self.in_proj(u))

    def _D(self):
        """D as ssd_chunk_scan takes it: (H,) or (H, P) with D_has_hdim."""
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _scan(self, x, dt, B, C, z, **options):
        """The SSD of x (B, L, d_ssm), dt (B, L, H), B / C (B, L, G N) with the layer's A, D, dt options and
        z (B, L, d_ssm) as the scan's gate unless the gated norm takes it; options (states, seq_idx,
        cu_seqlens, cp_group) pass on to ssd_chunk_scan."""
        batch, seqlen = x.shape[:2]
        heads = (batch, seqlen, self.nheads, self.headdim)
        groups = (batch, seqlen, self.ngroups, self.d_state)
        return ssd_chunk_scan(x.reshape(heads), dt, self.constants_for_forward()[0], B.reshape(groups),
                              C.reshape(groups), chunk_size=self.chunk_size, D=self._D(),
                              z=None if self.rmsnorm else z.reshape(heads), dt_bias=self.dt_bias, dt_softplus=True,
                              dt_limit=self.dt_limit, **options)

    def _out_proj_input(self, y, z, z0, x0):
        """y, z (..., d_ssm) -> out_proj's input: norm / gate, then the gated-MLP channels in front."""
        if self.rmsnorm:
            y = self.norm(y, z)
        if z0.shape[-1] > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return y

    def _norm_then_plain_out_proj(self, z0) -> bool:
        """Whether out_proj's input is the norm's output alone (no gated-MLP channels), both plain modules."""
        norm = getattr(self, "norm", None)
        return (z0.shape[-1] == 0 and type(norm) is RMSNormGated and is_plain_linear(self.out_proj)
                and not (norm._forward_hooks or norm._forward_pre_hooks))

    def _norm_out_proj(self, y, z):
        """out_proj(norm(y, z)) in one op that keeps no norm output for the backward (its backward writes it
        again), as mamba_ssm's fused Mamba-2 path does: the norm's forward is not recomputed."""
        norm = self.norm
        return gated_rmsnorm(y, norm.weight, z, eps=norm.eps, group_size=norm.group_size,
                             norm_before_gate=norm.norm_before_gate, linear_weight=self.out_proj.weight,
                             linear_bias=self.out_proj.bias)

    def _conv(self, xBC, weight, bias, seq_idx, initial_states):
        """The block's causal conv and SiLU: xBC (B, conv_dim, L) -> (B, conv_dim, L)."""
        return causal_conv1d(xBC, weight, bias, activation=self.activation, seq_idx=seq_idx,
                             initial_states=initial_states, cp_group=self.cp_group)

    def _conv_tail(self, prev, xBC, seq_idx):
        """The last d_conv conv inputs (B, conv_dim, d_conv) after xBC (B, conv_dim, L), preceded by prev
        (or zeros); with seq_idx, inputs of earlier sequences than the last token's are zeroed."""
        batch, dim, length = xBC.shape
        if prev is None:
            prev = xBC.new_zeros(batch, dim, self.d_conv)
        tail = torch.cat([prev.to(xBC.dtype), xBC[..., -self.d_conv:]], dim=-1)[..., -self.d_conv:]
        if seq_idx is not None:
            ids = torch.cat([seq_idx[:, :1].expand(batch, self.d_conv), seq_idx[:, -self.d_conv:]],
                            dim=-1)[:, -self.d_conv:]
            tail = tail * (ids == ids[:, -1:]).unsqueeze(1).to(tail.dtype)
        return tail

    def _varlen_conv_states(self, xBC, cu_seqlens, seq_idx):
        """Per-sequence conv states (S, conv_dim, d_conv) of packed xBC (1, conv_dim, L)."""
        ends = cu_seqlens[1:].long()
        idx = ends[:, None] - self.d_conv + torch.arange(self.d_conv, device=xBC.device)  # (S, d_conv)
        safe = idx.clamp(min=0)
        valid = (idx >= 0) & (seq_idx[0][safe] == seq_idx[0][ends - 1][:, None])
        return xBC[0][:, safe].permute(1, 0, 2) * valid.unsqueeze(1).to(xBC.dtype)

    @staticmethod
    def _seq_idx_from_cu_seqlens(cu_seqlens, seq_idx, length):
        """One index per token that changes wherever seq_idx changes or a cu_seqlens sequence starts."""
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"Mamba2: cu_seqlens must have shape (S + 1,), got {tuple(cu_seqlens.shape)}")
        pos = torch.arange(length, device=cu_seqlens.device)
        ids = torch.searchsorted(cu_seqlens[1:-1].to(pos.dtype).contiguous(), pos, right=True)[None]
        if seq_idx is None:
            return ids.to(torch.int32)
        change = torch.zeros_like(ids, dtype=torch.bool)
        change[:, 1:] = (ids[:, 1:] != ids[:, :-1]) | (seq_idx[:, 1:] != seq_idx[:, :-1])
        return change.cumsum(-1).to(torch.int32)

    # ------------------------------------------------------------------ forward
    def forward(self, u: torch.Tensor, seqlen: Optional[int] = None, seq_idx: Optional[torch.Tensor] = None,
                cu_seqlens: Optional[torch.Tensor] = None, inference_params=None,
                state: Optional[State] = None) -> torch.Tensor:
        """u: (B, L, d_model), or (B * L, d_model) with seqlen = L -> the same shape.

        seq_idx: (B, L) int32/int64: the conv and the scan restart wherever it changes (packed sequences).
        cu_seqlens: (S + 1,) int, B = 1: packed sequences [cu_seqlens[s], cu_seqlens[s + 1]); the conv and
            the scan restart at each; with inference_params, the cache holds the S per-sequence states.
        state: optional (conv_state, ssm_state) from default_state: the sequence continues from it, and it is
            overwritten in place with the state after the last token (detached), ready for `step`.
        inference_params: mamba_ssm's InferenceParams: layer `layer_idx`'s states live in its
            key_value_memory_dict; seqlen_offset == 0 starts from zero states (prefill), > 0 continues from
            the cached ones (one token at a time like mamba_ssm, or several).
        """
        check_no_state("Mamba2", self.cp_group, seq_idx=seq_idx, cu_seqlens=cu_seqlens,
                       inference_params=inference_params, state=state)
        seqlen_og = seqlen
        if seqlen is None:
            if u.dim() != 3:
                raise ValueError(f"Mamba2: u must have shape (B, L, d_model), got {tuple(u.shape)}")
            batch, seqlen, _ = u.shape
        else:
            if u.dim() != 2 or seqlen < 1 or u.shape[0] % seqlen:
                raise ValueError(f"Mamba2: with seqlen = {seqlen}, u must have shape (B * seqlen, d_model), "
                                 f"got {tuple(u.shape)}")
            batch = u.shape[0] // seqlen
            u = u.reshape(batch, seqlen, u.shape[-1])
        if cu_seqlens is not None:
            if batch != 1:
                raise ValueError(f"Mamba2: cu_seqlens needs batch size 1 (packed sequences), got {batch}")
            if state is not None:
                raise ValueError("Mamba2: state= with cu_seqlens is not supported; use inference_params")
            seq_idx = self._seq_idx_from_cu_seqlens(cu_seqlens, seq_idx, seqlen)

        state, continuing = self._continued_state(
            inference_params, state, cu_seqlens.shape[0] - 1 if cu_seqlens is not None else batch)
        varlen_cache = inference_params is not None and not continuing and cu_seqlens is not None
        if continuing and cu_seqlens is not None:
            raise ValueError("Mamba2: cu_seqlens is supported with inference_params only for the prefill "
                             "(seqlen_offset == 0)")
        if continuing and seqlen == 1:
            out = self.step(u[:, 0], state)[0].unsqueeze(1)
            return out.reshape(batch, -1) if seqlen_og is not None else out

        z0, x0, z, xBC, dt = self._projected(u)
        xBC = xBC.transpose(1, 2)  # (B, conv_dim, L)
        conv_init = None
        if state is not None and not varlen_cache:
            conv_state, ssm_state = state
            conv_init = conv_state[..., conv_state.shape[-1] - (self.d_conv - 1):].to(xBC.dtype)
            with torch.no_grad():
                new_conv = self._conv_tail(conv_state, xBC, seq_idx)
        elif varlen_cache:
            with torch.no_grad():
                new_conv = self._varlen_conv_states(xBC, cu_seqlens, seq_idx)
        # Training keeps neither the conv output nor out_proj's input for the backward ((B, L, conv_dim) and
        # (B, L, d_inner)): they are recomputed from in_proj's output and the scan's, which stay saved anyway
        recompute = self.recompute_in_backward
        recompute = (u.is_cuda if recompute is None else recompute) and state is None and self.cp_group is None
        recompute = recompute and needs_grad(u, *self.parameters())
        with recomputed_activations(recompute, u.device) as keep_out:
            xBC = keep_out(self._conv, xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias, seq_idx,
                           conv_init).transpose(1, 2)
            # x, B and C's gradients come back side by side in one buffer from the SSD's backward (no copy)
            x, B, C = split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state])
            y = self._scan(x, dt, B, C, z, seq_idx=seq_idx,
                           initial_states=None if state is None or varlen_cache else ssm_state.float(),
                           cu_seqlens=cu_seqlens, return_final_states=state is not None and not varlen_cache,
                           return_varlen_states=varlen_cache, cp_group=self.cp_group)
            if state is not None:
                y, last_state = y
                state[0].copy_(new_conv)
                state[1].copy_(last_state.detach())
            y = y.reshape(batch, seqlen, self.d_ssm)
            if recompute and self._norm_then_plain_out_proj(z0):
                out = self._norm_out_proj(y, z)
            else:
                out = self.out_proj(keep_out(self._out_proj_input, y, z, z0, x0))
        return out.reshape(batch * seqlen, -1) if seqlen_og is not None else out

    # ------------------------------------------------------------------ recurrent
    def prefill(self, x: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """A prompt x (B, L, d_model) from `state` -> (y (B, L, d_model), state): the parallel forward, which
        leaves the state after the last token in the state tensors (updated in place, as by `step`)."""
        return self(x, state=state), state

    def step(self, x_t: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """One token: x_t (B, d_model) -> (y_t (B, d_model), state). The state tensors are updated in place
        (the returned state is the same pair of tensors)."""
        conv_state, ssm_state = state
        z0, x0, z, xBC, dt = self._split(self.in_proj(x_t))
        # causal_conv1d_update needs xBC in the cache's dtype (they differ under autocast)
        xBC = causal_conv1d_update(xBC.to(conv_state.dtype), conv_state, self.conv1d.weight.squeeze(1),
                                   self.conv1d.bias, activation=self.activation)
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        H, P, N = self.nheads, self.headdim, self.d_state
        (A,) = self.constants_for_step()
        y = ssd_step(ssm_state, x.reshape(-1, H, P), dt, A, B.reshape(-1, self.ngroups, N),
                     C.reshape(-1, self.ngroups, N), self._D(), self.dt_bias, self.dt_limit,
                     z=None if self.rmsnorm else z.reshape(-1, H, P).to(x.dtype))
        return self.out_proj(self._out_proj_input(y.reshape(-1, self.d_ssm), z, z0, x0)), state

    def default_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zero state: conv_state (B, conv_dim, d_conv) in `dtype` (default: the conv weight's);
        ssm_state (B, nheads, headdim, d_state) fp32."""
        device = self.conv1d.weight.device if device is None else device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.conv1d.weight.shape[0], self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                                dtype=torch.float32)
        return conv_state, ssm_state
