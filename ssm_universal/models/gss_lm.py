"""The language models of gated-state-spaces-pytorch 0.1.0 (GatedStateSpacesLM, GatedDsConvLM,
GatedExponentialSmoothingLM), with the package's arguments, state_dict keys and forward:
token_emb -> depth gated layers (each with its own residual, no final norm) -> to_logits (no bias).

`forward(x, labels=None)` returns the logits (B, L, num_tokens), or with labels (B, L) only the mean
cross-entropy loss, as the package does. For generation, `default_state(batch_size)` and
`step(token_t, state) -> (logits_t, state)` run the layers' recurrences one token at a time.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_kernels.validation import ArgCheck

from ..layers.gss import GSS, GatedDsConv
from ..layers.gss_ema import GatedMHESA


class GatedLM(nn.Module):
    """token_emb (num_tokens, dim) -> layers -> to_logits; subclasses call build() with their layers."""

    def build(self, op: str, num_tokens: int, dim: int, depth: int, make_layer) -> None:
        check = ArgCheck(op)
        check.integer("num_tokens", num_tokens, 1)
        check.integer("dim", dim, 1)
        check.integer("depth", depth, 1)
        self.num_tokens, self.dim, self.depth = num_tokens, dim, depth
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.layers = nn.ModuleList([make_layer() for _ in range(depth)])
        self.to_logits = nn.Linear(dim, num_tokens, bias=False)

    def _check_ids(self, x: torch.Tensor, name: str, dims: int) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != dims or x.dtype not in (torch.int64, torch.int32):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            layout = "(B, L)" if dims == 2 else "(B,)"
            raise ValueError(f"{type(self).__name__}: {name} must be an int64/int32 tensor of token ids of shape "
                             f"{layout}, got {shape}")

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, L) token ids -> logits (B, L, num_tokens); with labels (B, L): the scalar mean
        cross-entropy of the logits against the labels (the logits are not returned, as in the package)."""
        self._check_ids(x, "x", 2)
        h = self.token_emb(x)
        for layer in self.layers:
            h = layer(h)
        logits = self.to_logits(h)
        if labels is None:
            return logits
        if labels.shape != x.shape:
            raise ValueError(f"{type(self).__name__}: labels must have x's shape {tuple(x.shape)}, "
                             f"got {tuple(labels.shape)}")
        return F.cross_entropy(logits.transpose(1, 2), labels)

    def default_state(self, batch_size: int, device=None, dtype=None) -> List:
        """One state per layer (each layer's default_state)."""
        return [layer.default_state(batch_size, device=device, dtype=dtype) for layer in self.layers]

    def step(self, x_t: torch.Tensor, state: List) -> Tuple[torch.Tensor, List]:
        """One token: x_t (B,) token ids, state from default_state -> (logits_t (B, num_tokens), new state).
        Stepping through a sequence gives forward's logits; the given state is not modified."""
        self._check_ids(x_t, "x_t", 1)
        if not isinstance(state, (list, tuple)) or len(state) != self.depth:
            raise ValueError(f"{type(self).__name__}.step: state must be a list of {self.depth} layer states "
                             "(default_state)")
        h, new_state = self.token_emb(x_t), []
        for layer, s in zip(self.layers, state):
            h, s = layer.step(h, s)
            new_state.append(s)
        return self.to_logits(h), new_state


class GatedStateSpacesLM(GatedLM):
    """Language model of GSS layers (reverse_seq=False): input ids (B, L) -> logits (B, L, num_tokens)."""

    def __init__(self, num_tokens: int, dim: int, depth: int, dim_expansion_factor=4, dss_kernel_N: int = 512,
                 dss_kernel_H: int = 256, dss_kernel_lambda_imag_exp: bool = True):
        super().__init__()
        self.build("GatedStateSpacesLM", num_tokens, dim, depth, lambda: GSS(
            dim, dim_expansion_factor=dim_expansion_factor, dss_kernel_N=dss_kernel_N, dss_kernel_H=dss_kernel_H,
            dss_kernel_lambda_imag_exp=dss_kernel_lambda_imag_exp))


class GatedDsConvLM(GatedLM):
    """Language model of GatedDsConv layers: input ids (B, L) with L <= max_seq_len -> logits. A step's state
    grows by one position per token (the convolution kernel is data-dependent); stepping past max_seq_len
    raises, as forward does for longer inputs."""

    def __init__(self, num_tokens: int, dim: int, depth: int, heads: int = 8, dim_dsconv: int = 512,
                 max_seq_len: int = 2048, dim_expansion_factor=4):
        super().__init__()
        ArgCheck("GatedDsConvLM").integer("max_seq_len", max_seq_len, 1)
        self.max_seq_len = max_seq_len
        self.build("GatedDsConvLM", num_tokens, dim, depth, lambda: GatedDsConv(
            dim, heads=heads, dim_dsconv=dim_dsconv, dim_expansion_factor=dim_expansion_factor))

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] > self.max_seq_len:
            raise ValueError(f"GatedDsConvLM: x has {x.shape[1]} tokens, more than max_seq_len = {self.max_seq_len}")
        return super().forward(x, labels)

    def step(self, x_t: torch.Tensor, state: List) -> Tuple[torch.Tensor, List]:
        if isinstance(state, (list, tuple)) and state and state[0][0].shape[1] >= self.max_seq_len:
            raise ValueError(f"GatedDsConvLM.step: the state already holds max_seq_len = {self.max_seq_len} tokens")
        return super().step(x_t, state)


class GatedExponentialSmoothingLM(GatedLM):
    """Language model of GatedMHESA layers: input ids (B, L) -> logits (B, L, num_tokens)."""

    def __init__(self, num_tokens: int, dim: int, depth: int, heads: int = 8, dim_mhesa: int = 512,
                 dim_expansion_factor=4):
        super().__init__()
        self.build("GatedExponentialSmoothingLM", num_tokens, dim, depth, lambda: GatedMHESA(
            dim, heads=heads, dim_mhesa=dim_mhesa, dim_expansion_factor=dim_expansion_factor))


__all__ = ["GatedLM", "GatedStateSpacesLM", "GatedDsConvLM", "GatedExponentialSmoothingLM"]
