"""create_model: every architecture as a stack of pre-norm residual blocks with a final norm.

    model = create_model(architecture="mamba2", block_type="parallel", d_model=512, d_state=32, n_layer=6,
                         d_conv=8, expand_factor=4, conv_kernel_size=7, dropout=0.1)
    y = model(x)                                   # x, y: (B, L, d_model)
    state = model.default_state(batch_size)        # recurrent inference: y_t, state = model.step(x_t, state)

The argument names are those of the "State Space Model Universal" README. Their meaning here:
  d_state           the SSM state size N of each layer (per channel for S4/S4D/DSS/H3, per head for Mamba-2,
                    the whole state for S5)
  d_conv            the width of the short causal convolution inside layers that have one (mamba_ssm's
                    d_conv: Mamba, Mamba-2 blocks)
  expand_factor     the inner width of expanding layers (Mamba's expand, GSS's dim_expansion_factor, the
                    gated MLP's hidden width)
  conv_kernel_size  when given, each block also gates its mixer output with sigmoid(causal depthwise conv of
                    this width) (blocks.ConvGate); None: no gate
  dropout           on each block's output before the residual add
  **kwargs          block options norm ("rmsnorm" | "layernorm") and norm_eps; everything else goes to the
                    layer constructor (e.g. headdim=32 for Mamba-2, init="diag-inv" for S4D)
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch.nn as nn

from ssm_kernels.validation import ArgCheck

from ..context_parallel import set_context_parallel
from .blocks import NORMS, ResidualBlock, SSMModel


def _s4(d_model, d_state, d_conv, expand, layer_idx, block_type, kwargs):
    from ..layers.s4 import S4
    return S4(d_model, d_state=d_state, **kwargs)


def _s4d(d_model, d_state, d_conv, expand, layer_idx, block_type, kwargs):
    from ..layers import S4D
    return S4D(d_model, d_state=d_state, **kwargs)


def _s5(d_model, d_state, d_conv, expand, layer_idx, block_type, kwargs):
    from ..layers import S5
    return S5(d_model, d_state=d_state, **kwargs)


def _dss(d_model, d_state, d_conv, expand, layer_idx, block_type, kwargs):
    from ..layers import DSS
    return DSS(d_model, d_state=d_state, **kwargs)


def _h3(d_model, d_state, d_conv, expand, layer_idx, block_type, kwargs):
    from ..layers import H3
    return H3(d_model, d_state=d_state, layer_idx=layer_idx, **kwargs)


def _mamba(d_model, d_state, d_conv, expand, layer_idx, block_type, kwargs):
    from ..layers import Mamba
    return Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, layer_idx=layer_idx, **kwargs)


def _mamba2(d_model, d_state, d_conv, expand, layer_idx, block_type, kwargs):
    kwargs = dict(kwargs)
    # mamba_ssm's headdim 64 where it divides the inner width, else the largest width that does
    kwargs.setdefault("headdim", math.gcd(64, expand * d_model))
    if block_type == "sequential":
        from ..layers.mamba2_sequential import Mamba2Sequential
        return Mamba2Sequential(d_model, d_state=d_state, d_conv=d_conv, expand=expand, layer_idx=layer_idx,
                                **kwargs)
    from ..layers import Mamba2
    return Mamba2(d_model, d_state=d_state, d_conv=d_conv, expand=expand, layer_idx=layer_idx, **kwargs)


def _gated_mlp(d_model, d_state, d_conv, expand, layer_idx, block_type, kwargs):
    from ..layers.gated_mlp import GatedMLP
    return GatedMLP(d_model, hidden_features=expand * d_model, **kwargs)


def _gss(d_model, d_state, d_conv, expand, layer_idx, block_type, kwargs):
    from ..layers.gss import GSS
    # the GSS layer without its own norm and skip: the residual block provides them
    return GSS(dim=d_model, dim_expansion_factor=expand, dss_kernel_N=d_state, residual=False, **kwargs)


# name -> (builder(d_model, d_state, d_conv, expand, layer_idx, block_type, layer_kwargs) -> mixer,
#          the block types it accepts, the default block type)
ARCHITECTURES: Dict[str, tuple] = {
    "s4": (_s4, (None,), None),
    "s4d": (_s4d, (None,), None),
    "s5": (_s5, (None,), None),
    "dss": (_dss, (None,), None),
    "mamba": (_mamba, (None,), None),
    "mamba2": (_mamba2, ("sequential", "parallel"), "parallel"),
    "h3": (_h3, (None,), None),
    "gated_mlp": (_gated_mlp, (None,), None),
    "gss": (_gss, (None,), None),
}


def _create_hiss(config: dict) -> nn.Module:
    from .hiss import HiSS

    options = {k: v for k, v in config.items() if k not in ("architecture", "block_type")}
    chunk_size = options.pop("chunk_size", 16)
    dropout = options.pop("dropout")
    names = {level: options.pop(f"{level}_level", "mamba") for level in ("low", "high")}
    block_types = {level: options.pop(f"{level}_block_type", None) for level in ("low", "high")}
    for level, name in names.items():
        if name == "hiss":
            ArgCheck("create_model").fail(f"{level}_level cannot itself be 'hiss'")
    levels = {level: create_model(names[level], block_type=block_types[level], dropout=dropout, **options)
              for level in ("low", "high")}
    model = HiSS(config["d_model"], config["d_model"], chunk_size, low_level=levels["low"],
                 high_level=levels["high"], dropout=dropout)
    model.config = dict(config, chunk_size=chunk_size, low_level=names["low"], high_level=names["high"])
    return model


def create_model(architecture: str, block_type: Optional[str] = None, d_model: int = 256, d_state: int = 16,
                 n_layer: int = 4, d_conv: int = 4, expand_factor: int = 2,
                 conv_kernel_size: Optional[int] = None, dropout: float = 0.0, cp_group=None,
                 **kwargs) -> nn.Module:
    """A stack of n_layer residual blocks of `architecture`: (B, L, d_model) -> (B, L, d_model).

    architecture: one of ARCHITECTURES ("s4", "s4d", "s5", "dss", "mamba", "mamba2", "h3", "gated_mlp",
        "gss", "hiss"); block_type: "sequential" or "parallel" for "mamba2" (default "parallel": mamba_ssm's
        Mamba2), None otherwise. See the module docstring for the other arguments.
    cp_group: a torch.distributed group over which the sequence is split (ssm_universal.context_parallel;
        mamba, mamba2 and s5), or None.
    Returns an SSMModel (forward, default_state, step). "hiss" returns a HiSS model (models/hiss.py):
    (B, L, d_model) -> (B, ceil(L / chunk_size), d_model), one prediction per chunk, whose low and high
    levels are each a create_model stack of n_layer blocks; its kwargs: chunk_size (default 16),
    low_level / high_level (architecture names, default "mamba"), low_block_type / high_block_type, and the
    rest go to both levels.
    """
    check = ArgCheck("create_model")
    check.choice("architecture", architecture, tuple(ARCHITECTURES) + ("hiss",))
    for name, value in (("d_model", d_model), ("d_state", d_state), ("n_layer", n_layer), ("d_conv", d_conv),
                        ("expand_factor", expand_factor)):
        check.integer(name, value, minimum=1)
    if conv_kernel_size is not None:
        check.integer("conv_kernel_size", conv_kernel_size, minimum=1)
    check.finite("dropout", dropout)
    if not 0.0 <= dropout < 1.0:
        check.fail(f"dropout must be in [0, 1), got {dropout}")
    config = dict(architecture=architecture, block_type=block_type, d_model=d_model, d_state=d_state,
                  n_layer=n_layer, d_conv=d_conv, expand_factor=expand_factor,
                  conv_kernel_size=conv_kernel_size, dropout=dropout, **kwargs)
    if architecture == "hiss":
        model = _create_hiss(config)
        return set_context_parallel(model, cp_group) if cp_group is not None else model  # raises: not supported

    build, block_types, default_block = ARCHITECTURES[architecture]
    block_type = default_block if block_type is None else block_type
    check.choice("block_type", block_type, block_types)
    config["block_type"] = block_type
    norm = kwargs.pop("norm", "rmsnorm")
    norm_eps = kwargs.pop("norm_eps", 1e-5)
    check.choice("norm", norm, tuple(NORMS))
    blocks = [ResidualBlock(d_model, build(d_model, d_state, d_conv, expand_factor, i, block_type, kwargs),
                            norm=norm, dropout=dropout, conv_kernel_size=conv_kernel_size, norm_eps=norm_eps)
              for i in range(n_layer)]
    model = SSMModel(d_model, blocks, norm=norm, norm_eps=norm_eps, config=config)
    return set_context_parallel(model, cp_group) if cp_group is not None else model
