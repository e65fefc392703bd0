"""HiSS, the hierarchical state space model of Bhirangi et al., "Hierarchical State Space Models for
Continuous Sequence-to-Sequence Modeling" (arXiv 2402.10211).

The input sequence is cut into chunks of `chunk_size` samples. A low-level SSM runs on every chunk on its own
(chunks folded into the batch, each from a zero state) and its output at the chunk's last sample is the chunk
feature; a high-level SSM runs over the sequence of chunk features and predicts once per chunk:

    x (B, L, d_in) -> in_proj -> low level per chunk -> last output (B, n_chunks, d_low) -> low_norm
      -> mid_proj -> high level (B, n_chunks, d_high) -> high_norm -> dropout -> out_proj -> (B, n_chunks, d_out)

with n_chunks = ceil(L / chunk_size). When L is not a multiple of chunk_size the last, shorter chunk runs as a
sequence of its own length (no padding), so its feature is exact for any level, causal or not; for a causal
level it equals the output a padded chunk would have at its last real sample.

Either level is any layer of ssm_universal.layers (or any nn.Module mapping (B, L, d) -> (B, L, d), with
`default_state(batch_size, device=None, dtype=None)` and `step(x_t, state) -> (y_t, state)` for `step`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

import torch
import torch.nn as nn

from ssm_kernels.validation import ArgCheck
import ssm_universal.layers as layers

LevelSpec = Union[nn.Module, str, Callable[..., nn.Module]]
NORMS = ("layernorm", "rmsnorm", None)


def layer_class(name: str) -> type:
    """The ssm_universal.layers class called `name`, case-insensitively ("mamba", "S4D", "s5", ...)."""
    classes = {cls_name.lower(): getattr(layers, cls_name) for cls_name in layers.__all__}
    if not isinstance(name, str) or name.lower() not in classes:
        raise ValueError(f"HiSS: unknown layer name {name!r}; choose one of {sorted(classes)}")
    return classes[name.lower()]


def build_level(which: str, spec: LevelSpec, width: Optional[int], kwargs: Optional[dict]) -> Tuple[nn.Module, int]:
    """(module, width) of one level from a module, a layer name or a factory called as factory(d_model=width,
    **kwargs). A module's width is its `d_model` (or `dim`) attribute when it has one."""
    kwargs = dict(kwargs or {})
    if isinstance(spec, nn.Module):
        if kwargs:
            raise ValueError(f"HiSS: {which}_kwargs apply to a layer name or factory, not to a built module")
        own = next((getattr(spec, a) for a in ("d_model", "dim") if isinstance(getattr(spec, a, None), int)), None)
        if width is None and own is None:
            raise ValueError(f"HiSS: give d_{which.split('_')[0]}, the width of the {which} module "
                             f"{type(spec).__name__} (it has no d_model attribute)")
        if width is not None and own is not None and width != own:
            raise ValueError(f"HiSS: d_{which.split('_')[0]}={width} but the {which} module has d_model={own}")
        return spec, width if width is not None else own
    if width is None:
        raise ValueError(f"HiSS: d_{which.split('_')[0]} (the {which} width) is required with a layer name or "
                         "factory")
    factory = layer_class(spec) if isinstance(spec, str) else spec
    if not callable(factory):
        raise TypeError(f"HiSS: {which} must be an nn.Module, a layer name or a factory, got "
                        f"{type(spec).__name__}")
    module = factory(d_model=width, **kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"HiSS: the {which} factory returned {type(module).__name__}, not an nn.Module")
    return module, width


def make_norm(norm: Optional[str], width: int) -> nn.Module:
    if norm == "layernorm":
        return nn.LayerNorm(width)
    if norm == "rmsnorm":
        from .hsss import RMSNorm
        return RMSNorm(width)
    return nn.Identity()


@dataclass
class HiSSState:
    """Recurrent state of HiSS: the low level's state within the current chunk, the high level's state,
    how many samples of the current chunk were consumed, the low level's last output (B, d_low) (None at a
    chunk boundary), and the `dtype` given to default_state (the low level restarts from that state)."""
    low: Any
    high: Any
    position: int = 0
    last_low: Optional[torch.Tensor] = None
    dtype: Optional[torch.dtype] = None


class HiSS(nn.Module):
    """Hierarchical SSM: (B, L, d_in) -> (B, ceil(L / chunk_size), d_out), one prediction per chunk.

    Args:
        d_in, d_out: input and output widths.
        chunk_size: samples per chunk (the low level's sequence length; the high level's stride).
        low_level, high_level: an nn.Module mapping (B, L, d) -> (B, L, d); or a layer name of
            ssm_universal.layers ("mamba", "mamba2", "s4d", "s5", "dss", "h3", case-insensitive); or a
            factory (a layer class or function) called as factory(d_model=width, **kwargs).
        d_low, d_high: the levels' widths; required with a name or factory, read from a module's d_model
            (or dim) when omitted.
        low_level_kwargs, high_level_kwargs: keyword arguments of the name's class or the factory.
        norm: "layernorm", "rmsnorm" or None: applied to the chunk features and to the high-level output.
        dropout: before the output projection.

    Submodules: in_proj Linear(d_in, d_low), low_level, low_norm, mid_proj Linear(d_low, d_high), high_level,
    high_norm, dropout, out_proj Linear(d_high, d_out).
    """

    context_parallel = False  # chunks the sequence: no cp_group form (ssm_universal.context_parallel)

    def __init__(self, d_in: int, d_out: int, chunk_size: int, low_level: LevelSpec = "mamba",
                 high_level: LevelSpec = "mamba", d_low: Optional[int] = None, d_high: Optional[int] = None,
                 low_level_kwargs: Optional[dict] = None, high_level_kwargs: Optional[dict] = None,
                 norm: Optional[str] = "layernorm", dropout: float = 0.0):
        super().__init__()
        check = ArgCheck("HiSS")
        check.integer("d_in", d_in, 1)
        check.integer("d_out", d_out, 1)
        check.integer("chunk_size", chunk_size, 1)
        for name, value in (("d_low", d_low), ("d_high", d_high)):
            if value is not None:
                check.integer(name, value, 1)
        check.choice("norm", norm, NORMS)
        if not 0.0 <= check.finite("dropout", dropout) < 1.0:
            check.fail(f"dropout must be in [0, 1), got {dropout}")
        self.d_in, self.d_out, self.chunk_size = d_in, d_out, chunk_size
        self.low_level, self.d_low = build_level("low_level", low_level, d_low, low_level_kwargs)
        self.high_level, self.d_high = build_level("high_level", high_level, d_high, high_level_kwargs)
        self.in_proj = nn.Linear(d_in, self.d_low)
        self.low_norm = make_norm(norm, self.d_low)
        self.mid_proj = nn.Linear(self.d_low, self.d_high)
        self.high_norm = make_norm(norm, self.d_high)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(self.d_high, d_out)

    def num_chunks(self, length: int) -> int:
        return -(-length // self.chunk_size)

    def chunk_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, d_in) -> the low level's last output of every chunk, (B, ceil(L / chunk_size), d_low)."""
        if x.dim() != 3 or x.shape[-1] != self.d_in or x.shape[1] == 0:
            raise ValueError(f"HiSS: x must have shape (B, L, d_in) with L >= 1 and d_in = {self.d_in}, "
                             f"got {tuple(x.shape)}")
        batch, length, _ = x.shape
        u = self.in_proj(x)
        full, rest = divmod(length, self.chunk_size)
        features = []
        if full:
            chunks = u[:, :full * self.chunk_size].reshape(batch * full, self.chunk_size, self.d_low)
            features.append(self.low_level(chunks)[:, -1].reshape(batch, full, self.d_low))
        if rest:
            features.append(self.low_level(u[:, full * self.chunk_size:])[:, -1:])
        return torch.cat(features, dim=1) if len(features) > 1 else features[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, d_in) -> (B, ceil(L / chunk_size), d_out)."""
        h = self.high_level(self.mid_proj(self.low_norm(self.chunk_features(x))))
        return self.out_proj(self.dropout(self.high_norm(h)))

    # ---- recurrent inference ----

    def default_state(self, batch_size: int, device=None, dtype=None) -> HiSSState:
        """Zero state at the start of a chunk (both levels' default_state)."""
        return HiSSState(self.low_level.default_state(batch_size, device=device, dtype=dtype),
                         self.high_level.default_state(batch_size, device=device, dtype=dtype), dtype=dtype)

    def step(self, x_t: torch.Tensor, state: HiSSState) -> Tuple[Optional[torch.Tensor], HiSSState]:
        """One sample: x_t (B, d_in) -> (y (B, d_out) when x_t completes a chunk, else None; the new state).

        The low level steps within the current chunk and restarts from its default state after each chunk;
        the high level steps once per completed chunk. Level states may be updated in place (Mamba levels),
        so keep using the returned state."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_in:
            raise ValueError(f"HiSS.step: x_t must have shape (B, d_in) with d_in = {self.d_in}, "
                             f"got {tuple(x_t.shape)}")
        v, low = self.low_level.step(self.in_proj(x_t), state.low)
        state = HiSSState(low, state.high, state.position + 1, v, state.dtype)
        if state.position < self.chunk_size:
            return None, state
        return self.finish(state)

    def finish(self, state: HiSSState) -> Tuple[Optional[torch.Tensor], HiSSState]:
        """Close the current chunk even if it is shorter than chunk_size (the end of a stream whose length is
        not a multiple of chunk_size): (y (B, d_out), state at a chunk boundary), or (None, state) when no
        sample of a new chunk has been consumed. Equals forward's output for a last, shorter chunk."""
        if state.position == 0:
            return None, state
        h, high = self.high_level.step(self.mid_proj(self.low_norm(state.last_low)), state.high)
        y = self.out_proj(self.dropout(self.high_norm(h)))
        v = state.last_low
        low = self.low_level.default_state(v.shape[0], device=v.device, dtype=state.dtype)
        return y, HiSSState(low, high, dtype=state.dtype)


__all__ = ["HiSS", "HiSSState", "build_level", "layer_class"]
