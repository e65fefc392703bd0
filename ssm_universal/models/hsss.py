"""The hierarchical Mamba models of the `hsss` package (kyegomez/HSSS, hsss 0.0.9): LowLevelMamba,
HighLevelMamba, SimpleHSSSMamba and HSSS, with the same constructor arguments, built on
ssm_universal.layers.Mamba (whose state_dict keys are mamba_ssm's).

LowLevelMamba / HighLevelMamba are hsss's `Mamba(MambaConfig)` stack: `depth` residual blocks
x + Mamba(RMSNorm(x)), no final norm. Their state_dict has hsss's keys (model.layers.{i}.mixer.*,
model.layers.{i}.norm.weight) and, from the same seed, the same initial values, so an hsss checkpoint loads
with strict=True and gives the same outputs. Its mamba-minimal scan math equals mamba_ssm's.

Bugs of hsss 0.0.9 fixed here:
* HSSS kept the branch models in a plain Python list (their parameters were invisible to .parameters(),
  .to(), state_dict): they are an nn.ModuleList.
* HSSS built a fresh, randomly initialised nn.Embedding and fusion FeedForward / Linear inside forward on
  every call (never trained, never saved, a different function at each call): both are built in __init__.
  The embedding has the branches' input width (hsss's unused `self.embed` had the high-level width) and is
  applied only to integer token ids, so the README's example, which feeds floats (B, L, 8), runs as
  written (in hsss it raised on nn.Embedding of a float tensor).
* HSSS ignored `proj_layer` (and passed `dropout` nowhere): proj_layer=True fuses the concatenated branch
  outputs with a projection to `dim` (the FeedForward when ffn=True, a Linear when ffn=False, as
  SimpleHSSSMamba's proj_layer chooses), proj_layer=False feeds them to the high level unprojected (their
  width must then be `dim`); `dropout` is the FeedForward's dropout.
* HSSS split the high-level output into pieces of len(layers) positions instead of one piece per branch:
  it returns one output per branch, each as long as that branch's output.
* The FeedForward's hidden width is 4 * dim (hsss passed dim * 4 as zeta's *multiplier* of the input
  width, e.g. 8 * 48 = 384 hidden units for the README's sizes); debug prints removed.
`pscan` (parallel or sequential scan in hsss) is accepted and ignored: ssm_kernels picks the scan.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from ssm_kernels import gated_rmsnorm
from ssm_kernels.validation import ArgCheck
from ssm_universal.layers import Mamba

SEQUENCE_AXES = (-2, 1)
FEATURE_AXES = (-1, 2)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (mamba-minimal's RMSNorm, as hsss uses).
    x: (..., d_model) -> (..., d_model)."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gated_rmsnorm(x, self.weight, eps=self.eps)


class HSSSResidualBlock(nn.Module):
    """hsss's (mamba-minimal's) ResidualBlock: x + mixer(norm(x)) with a Mamba mixer and RMSNorm.
    (B, L, dim) -> (B, L, dim)."""

    def __init__(self, mixer: Mamba, dim: int):
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))

    def step(self, x_t: torch.Tensor, state):
        y, state = self.mixer.step(self.norm(x_t), state)
        return x_t + y, state


class MambaStack(nn.Module):
    """hsss's `Mamba`: `layers`, an nn.ModuleList of HSSSResidualBlock. (B, L, dim) -> (B, L, dim)."""

    def __init__(self, blocks: Sequence[HSSSResidualBlock]):
        super().__init__()
        self.layers = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class LowLevelMamba(nn.Module):
    """hsss's LowLevelMamba: `depth` pre-norm residual Mamba blocks of width `dim`. (B, L, dim) -> (B, L, dim).

    Args (hsss's names and defaults): dim (d_model), depth (number of blocks), dt_rank (an int or "auto" =
    ceil(dim / 16)), d_state, expand_factor (d_inner = expand_factor * dim), d_conv, dt_min, dt_max,
    dt_init ("random" or "constant"), dt_scale, bias (in/out projections), conv_bias, pscan (ignored).
    Recurrent state: a list with each block's Mamba (conv_state, ssm_state), updated in place by `step`.
    """

    context_parallel = False  # chunks the sequence: no cp_group form (ssm_universal.context_parallel)

    def __init__(self, dim: int = 4, depth: int = 3, dt_rank=2, d_state: int = 2, expand_factor: int = 2,
                 d_conv: int = 3, dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
                 dt_scale: float = 1.0, bias: bool = False, conv_bias: bool = True, pscan: bool = True):
        super().__init__()
        check = ArgCheck(type(self).__name__)
        for name, value, minimum in (("dim", dim, 1), ("depth", depth, 1), ("d_state", d_state, 1),
                                     ("expand_factor", expand_factor, 1), ("d_conv", d_conv, 1)):
            check.integer(name, value, minimum)
        if dt_rank != "auto":
            check.integer("dt_rank", dt_rank, 1)
        check.choice("dt_init", dt_init, ("random", "constant"))
        for name, value in (("bias", bias), ("conv_bias", conv_bias), ("pscan", pscan)):
            if not isinstance(value, bool):
                check.fail(f"{name} must be a bool, got {type(value).__name__}", TypeError)
        if not 0 < check.finite("dt_min", dt_min) <= check.finite("dt_max", dt_max):
            check.fail(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.dim, self.depth, self.dt_rank, self.d_state = dim, depth, dt_rank, d_state
        self.expand_factor, self.d_conv, self.dt_min, self.dt_max = expand_factor, d_conv, dt_min, dt_max
        self.dt_init, self.dt_scale, self.bias, self.conv_bias, self.pscan = dt_init, dt_scale, bias, conv_bias, pscan
        self.d_model = dim
        self.model = MambaStack([
            HSSSResidualBlock(Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand_factor, dt_rank=dt_rank,
                                    dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale,
                                    conv_bias=conv_bias, bias=bias), dim)
            for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, dim) -> (B, L, dim)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}: x must have shape (B, L, dim) with dim = {self.dim}, "
                             f"got {tuple(x.shape)}")
        return self.model(x)

    def default_state(self, batch_size: int, device=None, dtype=None) -> List:
        """One zero Mamba state (conv_state, ssm_state) per block."""
        return [block.mixer.default_state(batch_size, device=device, dtype=dtype) for block in self.model.layers]

    def step(self, x_t: torch.Tensor, state: List) -> Tuple[torch.Tensor, List]:
        """One token: x_t (B, dim) -> (y_t (B, dim), state); the state tensors are updated in place."""
        for block, block_state in zip(self.model.layers, state):
            x_t, _ = block.step(x_t, block_state)
        return x_t, state


class HighLevelMamba(LowLevelMamba):
    """hsss's HighLevelMamba: the same stack as LowLevelMamba (the name marks its place in the hierarchy)."""


class FeedForward(nn.Module):
    """zeta.nn.FeedForward's default path (hsss's fusion projection): Linear -> GELU -> Dropout -> Linear,
    with its parameter layout (ff.0.0, ff.2). (..., dim) -> (..., dim_out)."""

    def __init__(self, dim: int, dim_out: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.ff = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.GELU()), nn.Dropout(dropout),
                                nn.Linear(hidden, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class SimpleHSSSMamba(nn.Module):
    """hsss's SimpleHSSSMamba: LowLevelMamba(dim_in, ..._in) -> projection dim_in -> dim (FeedForward with
    4 * dim hidden units when proj_layer, else Linear) -> HighLevelMamba(dim, ...). (B, L, dim_in) ->
    (B, L, dim). The arguments ending in _in configure the low level, the others the high level (see
    LowLevelMamba); dropout is the FeedForward's."""

    context_parallel = False  # chunks the sequence: no cp_group form (ssm_universal.context_parallel)

    def __init__(self, dim_in: int = 8, depth_in: int = 6, dt_rank_in=4, d_state_in: int = 4,
                 expand_factor_in: int = 4, d_conv_in: int = 6, dt_min_in: float = 0.001, dt_max_in: float = 0.1,
                 dt_init_in: str = "random", dt_scale_in: float = 1.0, bias_in: bool = False,
                 conv_bias_in: bool = True, pscan_in: bool = True, dim: int = 4, depth: int = 3, dt_rank=2,
                 d_state: int = 2, expand_factor: int = 2, d_conv: int = 3, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0, bias: bool = False,
                 conv_bias: bool = True, pscan: bool = True, proj_layer: bool = True, dropout: float = 0.0):
        super().__init__()
        self.dim_in, self.dim, self.proj_layer = dim_in, dim, proj_layer
        self.low_level_mamba = LowLevelMamba(dim_in, depth_in, dt_rank_in, d_state_in, expand_factor_in, d_conv_in,
                                             dt_min_in, dt_max_in, dt_init_in, dt_scale_in, bias_in, conv_bias_in,
                                             pscan_in)
        self.ffn = FeedForward(dim_in, dim, 4 * dim, dropout) if proj_layer else nn.Linear(dim_in, dim)
        self.high_level_mamba = HighLevelMamba(dim, depth, dt_rank, d_state, expand_factor, d_conv, dt_min, dt_max,
                                               dt_init, dt_scale, bias, conv_bias, pscan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, dim_in) -> (B, L, dim)."""
        return self.high_level_mamba(self.ffn(self.low_level_mamba(x)))


def _width(layer: nn.Module, index: int) -> int:
    for name in ("dim", "d_model"):
        value = getattr(layer, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise TypeError(f"HSSS: layers[{index}] ({type(layer).__name__}) must have an int `dim` or `d_model` "
                    "attribute giving its (B, L, width) input and output width")


class HSSS(nn.Module):
    """hsss's HSSS: every branch of `layers` reads the same input, the branch outputs are concatenated along
    `dim_range`, fused to width `dim`, run through a HighLevelMamba, and split back into one output per branch.

    Args:
        layers: the branch modules, each (B, L, d) -> (B, L_i, d) with a `dim` or `d_model` attribute d (e.g.
            LowLevelMamba); all read the same input, so they share their input width d.
        dim: width of the high level and of the outputs.
        num_tokens: vocabulary of the embedding applied to integer inputs (token ids (B, L)).
        seq_length: stored only (hsss does not use it either).
        depth, dt_rank, d_state, expand_factor, d_conv, dt_min, dt_max, dt_init, dt_scale, bias, conv_bias,
            pscan: the HighLevelMamba's arguments (see LowLevelMamba).
        proj_layer: fuse the concatenated branch outputs with a projection to `dim` (True), or feed them to the
            high level as they are (False: their width must be `dim`).
        ffn: the projection is a FeedForward (Linear -> GELU -> Dropout -> Linear, 4 * dim hidden units) when
            True, a Linear when False.
        dropout: the FeedForward's dropout.
        dim_range: the concatenation axis of the (B, L, d) branch outputs: -2 (or 1), the sequence (hsss's
            default: the high level reads branch after branch; outputs (B, L_i, dim), one per branch) or -1
            (or 2), the features (the high level reads (B, L, n d) fused to dim; its output is split into n
            feature groups (B, L, dim / n), so n must divide dim).
    """

    context_parallel = False  # chunks the sequence: no cp_group form (ssm_universal.context_parallel)

    def __init__(self, layers: Sequence[nn.Module], dim: int = 4, num_tokens: int = 10000, seq_length: int = 2048,
                 depth: int = 3, dt_rank=2, d_state: int = 2, expand_factor: int = 2, d_conv: int = 3,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 bias: bool = False, conv_bias: bool = True, pscan: bool = True, proj_layer: bool = True,
                 ffn: bool = True, dropout: float = 0.1, dim_range: int = -2):
        super().__init__()
        check = ArgCheck("HSSS")
        if isinstance(layers, nn.Module) or not all(isinstance(layer, nn.Module) for layer in layers) \
                or len(layers) == 0:
            check.fail("layers must be a non-empty list of nn.Module branches", TypeError)
        check.integer("dim", dim, 1)
        check.integer("num_tokens", num_tokens, 1)
        check.integer("seq_length", seq_length, 1)
        check.choice("dim_range", dim_range, SEQUENCE_AXES + FEATURE_AXES)
        for name, value in (("proj_layer", proj_layer), ("ffn", ffn)):
            if not isinstance(value, bool):
                check.fail(f"{name} must be a bool, got {type(value).__name__}", TypeError)
        if not 0.0 <= check.finite("dropout", dropout) < 1.0:
            check.fail(f"dropout must be in [0, 1), got {dropout}")
        widths = [_width(layer, i) for i, layer in enumerate(layers)]
        if len(set(widths)) != 1:
            check.fail(f"the branches read the same input, so they need one width; got widths {widths}")
        self.sequence_axis = dim_range in SEQUENCE_AXES
        d_cat = widths[0] if self.sequence_axis else sum(widths)
        if not proj_layer and d_cat != dim:
            check.fail(f"proj_layer=False feeds the concatenated branch outputs (width {d_cat}) to the high level "
                       f"unprojected, so dim must be {d_cat}, got {dim}")
        if not self.sequence_axis and dim % len(layers):
            check.fail(f"dim_range={dim_range} splits the output features into one group per branch: dim ({dim}) "
                       f"must be a multiple of the number of branches ({len(layers)})")

        self.dim, self.num_tokens, self.seq_length, self.depth = dim, num_tokens, seq_length, depth
        self.dt_rank, self.d_state, self.expand_factor, self.d_conv = dt_rank, d_state, expand_factor, d_conv
        self.dt_min, self.dt_max, self.dt_init, self.dt_scale = dt_min, dt_max, dt_init, dt_scale
        self.bias, self.conv_bias, self.pscan = bias, conv_bias, pscan
        self.proj_layer, self.ffn, self.dropout, self.dim_range = proj_layer, ffn, dropout, dim_range
        self.ffn_mult = 4 * dim

        self.layers = nn.ModuleList(layers)
        self.embed = nn.Embedding(num_tokens, widths[0])
        if not proj_layer:
            self.fusion = nn.Identity()
        elif ffn:
            self.fusion = FeedForward(d_cat, dim, self.ffn_mult, dropout)
        else:
            self.fusion = nn.Linear(d_cat, dim)
        self.high_level_mamba = HighLevelMamba(dim, depth, dt_rank, d_state, expand_factor, d_conv, dt_min, dt_max,
                                               dt_init, dt_scale, bias, conv_bias, pscan)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """x: (B, L, d) features, or (B, L) integer token ids (embedded first) -> one output per branch:
        (B, L_i, dim) each for the sequence axis, (B, L, dim / n) each for the feature axis."""
        if not (x.is_floating_point() or x.is_complex()):
            x = self.embed(x)
        outputs = [layer(x) for layer in self.layers]
        if self.sequence_axis:
            y = self.high_level_mamba(self.fusion(torch.cat(outputs, dim=1)))
            return tuple(torch.split(y, [o.shape[1] for o in outputs], dim=1))
        y = self.high_level_mamba(self.fusion(torch.cat(outputs, dim=-1)))
        return tuple(torch.chunk(y, len(outputs), dim=-1))


__all__ = ["LowLevelMamba", "HighLevelMamba", "SimpleHSSSMamba", "HSSS", "RMSNorm", "FeedForward"]
