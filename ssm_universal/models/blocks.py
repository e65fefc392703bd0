"""The residual block every architecture of create_model stacks, and the stack itself.

    block(x) = x + dropout(mixer(norm(x)) * gate),   gate = sigmoid(causal_conv(norm(x)))   (optional)

x: (B, L, d_model). The mixer is any sequence layer of ssm_universal.layers with `forward` on (B, L, d_model),
`default_state(batch_size, device, dtype)` and `step(x_t, state) -> (y_t, state)`. The optional gate is the
convolution branch of the "State Space Model Universal" blocks (conv_kernel_size there), made causal (the
original pads symmetrically, so each position saw the future) and steppable.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn

from ssm_kernels import causal_conv1d, causal_conv1d_update

from ..layers._prefill import prefill

NORMS = {"rmsnorm": nn.RMSNorm, "layernorm": nn.LayerNorm}


class ConvGate(nn.Module):
    """sigmoid(depthwise causal conv of width kernel_size): x (B, L, D) -> gate (B, L, D)."""

    context_parallel = True  # ssm_universal.context_parallel

    def __init__(self, d_model: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_model, kernel_size))
        self.bias = nn.Parameter(torch.zeros(d_model))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.cp_group = None  # set by ssm_universal.set_context_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = causal_conv1d(x.transpose(1, 2), self.weight.to(x.dtype), self.bias.to(x.dtype), cp_group=self.cp_group)
        return torch.sigmoid(y).transpose(1, 2)

    def default_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """The last kernel_size - 1 inputs: (B, D, kernel_size - 1)."""
        return torch.zeros(batch_size, self.weight.shape[0], self.weight.shape[1] - 1,
                           device=self.weight.device if device is None else device,
                           dtype=self.weight.dtype if dtype is None else dtype)

    def prefill(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, D) continuing from `state` -> (gate (B, L, D), the last kernel_size - 1 inputs, in place)."""
        xt = x.transpose(1, 2)
        initial = state.to(x.dtype) if state.shape[-1] else None  # (a width-1 conv keeps no inputs)
        y = causal_conv1d(xt, self.weight.to(x.dtype), self.bias.to(x.dtype), initial_states=initial)
        with torch.no_grad():
            state.copy_(torch.cat([state.to(x.dtype), xt], dim=-1)[..., xt.shape[-1]:])
        return torch.sigmoid(y).transpose(1, 2), state

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x_t (B, D) -> (gate_t (B, D), state updated in place)."""
        y = causal_conv1d_update(x_t, state, self.weight.to(x_t.dtype), self.bias.to(x_t.dtype))
        return torch.sigmoid(y), state


class ResidualBlock(nn.Module):
    """Pre-norm residual block around one mixer layer; x: (B, L, d_model) -> (B, L, d_model)."""

    def __init__(self, d_model: int, mixer: nn.Module, norm: str = "rmsnorm", dropout: float = 0.0,
                 conv_kernel_size: Optional[int] = None, norm_eps: float = 1e-5):
        super().__init__()
        self.norm = NORMS[norm](d_model, eps=norm_eps)
        self.mixer = mixer
        self.conv_gate = ConvGate(d_model, conv_kernel_size) if conv_kernel_size else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        y = self.mixer(h)
        if self.conv_gate is not None:
            y = y * self.conv_gate(h)
        return x + self.dropout(y)

    def default_state(self, batch_size: int, device=None, dtype=None) -> Tuple[Any, Optional[torch.Tensor]]:
        gate = None if self.conv_gate is None else self.conv_gate.default_state(batch_size, device, dtype)
        return self.mixer.default_state(batch_size, device=device, dtype=dtype), gate

    def prefill(self, x: torch.Tensor, state) -> Tuple[torch.Tensor, Tuple[Any, Optional[torch.Tensor]]]:
        """x (B, L, d_model) from `state` -> (y (B, L, d_model), the state after the last position): the mixer's
        prefill (its parallel form where it has one, ssm_universal.layers._prefill) and the gate's."""
        mixer_state, gate_state = state
        h = self.norm(x)
        y, mixer_state = prefill(self.mixer, h, mixer_state)
        if self.conv_gate is not None:
            gate, gate_state = self.conv_gate.prefill(h, gate_state)
            y = y * gate
        return x + self.dropout(y), (mixer_state, gate_state)

    def step(self, x_t: torch.Tensor, state) -> Tuple[torch.Tensor, Tuple[Any, Optional[torch.Tensor]]]:
        """x_t (B, d_model) -> (y_t (B, d_model), new state)."""
        mixer_state, gate_state = state
        h = self.norm(x_t)
        y, mixer_state = self.mixer.step(h, mixer_state)
        if self.conv_gate is not None:
            gate, gate_state = self.conv_gate.step(h, gate_state)
            y = y * gate
        return x_t + self.dropout(y), (mixer_state, gate_state)


class SSMModel(nn.Module):
    """A stack of residual blocks and a final norm: x (B, L, d_model) -> (B, L, d_model).

    `step` runs the stack on one position, so that stepping token by token equals `forward`.
    """

    def __init__(self, d_model: int, blocks: List[ResidualBlock], norm: str = "rmsnorm", norm_eps: float = 1e-5,
                 config: Optional[dict] = None):
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(blocks)
        self.norm_f = NORMS[norm](d_model, eps=norm_eps)
        self.config = dict(config or {})  # the create_model arguments, so a checkpoint says how to rebuild it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)

    def default_state(self, batch_size: int, device=None, dtype=None) -> list:
        """One state per block (see ResidualBlock.default_state)."""
        return [layer.default_state(batch_size, device=device, dtype=dtype) for layer in self.layers]

    def prefill(self, x: torch.Tensor, state: list) -> Tuple[torch.Tensor, list]:
        """x (B, L, d_model), state from default_state (or later) -> (y (B, L, d_model), the state after the
        last position): what stepping through x gives, with each layer's parallel form where it has one."""
        new_state = []
        for layer, layer_state in zip(self.layers, state):
            x, layer_state = layer.prefill(x, layer_state)
            new_state.append(layer_state)
        return self.norm_f(x), new_state

    def step(self, x_t: torch.Tensor, state: list) -> Tuple[torch.Tensor, list]:
        """x_t (B, d_model), state from default_state -> (y_t (B, d_model), new state)."""
        new_state = []
        for layer, layer_state in zip(self.layers, state):
            x_t, layer_state = layer.step(x_t, layer_state)
            new_state.append(layer_state)
        return self.norm_f(x_t), new_state
