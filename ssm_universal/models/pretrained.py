"""SSMLanguageModel from / to pretrained checkpoint directories (local only; nothing is downloaded).

Read (load_pretrained):
  * the Hugging Face transformers format of MambaForCausalLM, Mamba2ForCausalLM and FalconMambaForCausalLM:
    config.json with model_type "mamba", "mamba2" or "falcon_mamba"; weights in model.safetensors, sharded
    model-0000k-of-0000n.safetensors + model.safetensors.index.json, or pytorch_model.bin (sharded or not);
  * mamba_ssm's MambaLMHeadModel format: config.json (d_model, n_layer, vocab_size, ssm_cfg, ...) + weights
    (pytorch_model.bin, or any of the files above).
Written (save_pretrained): the transformers format (config.json + model.safetensors) of "mamba" and "mamba2"
models, which transformers' AutoModelForCausalLM.from_pretrained loads with the same logits.

Safetensors are parsed as data (serialization.py), .bin files read with torch.load(weights_only=True): no
checkpoint can run code. The config is read from the JSON here: transformers is never imported.

Parameter names: transformers and mamba_ssm name the mixer, norm and head parameters as ssm_universal's
Mamba / Mamba2 layers do (backbone.layers.N.mixer.*, backbone.layers.N.norm.weight, backbone.norm_f.weight,
lm_head.weight), with the same shapes; only the embedding differs (backbone.embeddings.weight in transformers,
backbone.embedding.weight in mamba_ssm and older transformers files; embedding.weight here).

Not represented, by design: residual_in_fp32 (residuals stay in the model's dtype: the same logits in fp32, a
rounding difference in half precision) and mamba_ssm's fused_add_norm (a kernel choice).
"""
from __future__ import annotations

import inspect
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..layers.mamba import Mamba
from ..layers.mamba2 import Mamba2
from .language_model import SSMLanguageModel
from .serialization import load_safetensors, save_safetensors

PathLike = Union[str, "os.PathLike[str]"]
CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
TRANSFORMERS_MODEL_TYPES = ("mamba", "mamba2", "falcon_mamba")
SAVABLE_ARCHITECTURES = ("mamba", "mamba2")
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# parameter names (last components) kept in fp32 whatever `dtype` is (the design contract: A, D, dt_bias stay fp32)
FP32_PARAMETERS = ("A_log", "D", "dt_bias", "dt_proj.bias")

# transformers' config defaults (a config.json may leave out fields that equal them)
_MAMBA_DEFAULTS = dict(vocab_size=50280, hidden_size=768, state_size=16, num_hidden_layers=32,
                       layer_norm_epsilon=1e-5, expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True,
                       hidden_act="silu", time_step_rank="auto", tie_word_embeddings=True)
TRANSFORMERS_DEFAULTS = {
    "mamba": _MAMBA_DEFAULTS,
    "falcon_mamba": dict(_MAMBA_DEFAULTS, mixer_rms_eps=1e-6),
    "mamba2": dict(num_heads=128, head_dim=64, vocab_size=32768, hidden_size=4096, state_size=128,
                   num_hidden_layers=64, layer_norm_epsilon=1e-5, expand=2, conv_kernel=4, n_groups=8,
                   use_bias=False, use_conv_bias=True, hidden_act="silu", time_step_limit=(0.0, math.inf),
                   chunk_size=256, tie_word_embeddings=False),
}
# mamba_ssm's MambaConfig defaults, and its layers' defaults for the create_model arguments
MAMBA_SSM_DEFAULTS = dict(d_model=2560, n_layer=64, vocab_size=50277, ssm_cfg={}, rms_norm=True,
                          pad_vocab_size_multiple=8, tie_embeddings=True)
MAMBA_SSM_LAYERS = {"Mamba1": ("mamba", Mamba, dict(d_state=16, d_conv=4, expand=2)),
                    "Mamba2": ("mamba2", Mamba2, dict(d_state=128, d_conv=4, expand=2, headdim=64))}
# (checkpoint prefix, our prefix); the first pair of a format is the name written back
TRANSFORMERS_PREFIXES = (("backbone.embeddings.", "embedding."), ("backbone.embedding.", "embedding."))
MAMBA_SSM_PREFIXES = (("backbone.embedding.", "embedding."),)


@dataclass
class CheckpointSpec:
    """What a config.json describes: the SSMLanguageModel arguments and the details they cannot carry."""
    model_kwargs: dict
    prefixes: Tuple[Tuple[str, str], ...]
    gated_norm_eps: Optional[float] = None  # Mamba-2: eps of each mixer's gated RMSNorm
    source: dict = field(default_factory=dict)  # the config.json as read


# ---------------------------------------------------------------------------------------------- config.json
def read_config(directory: PathLike) -> dict:
    """The parsed config.json of a checkpoint directory."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"from_pretrained: path {str(directory)!r} is not a local directory (checkpoints "
                                f"are read from local directories only; download them first)")
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"from_pretrained: {str(directory)!r} has no {CONFIG_NAME}")
    with open(path) as f:
        config = json.load(f, object_hook=_decode_tagged_float)
    if not isinstance(config, dict):
        raise ValueError(f"from_pretrained: {path} does not hold a JSON object")
    return config


def _decode_tagged_float(obj: dict):
    """transformers 5 writes inf / nan as {"__float__": "Infinity"} (strict JSON has no such numbers)."""
    if set(obj) == {"__float__"} and obj["__float__"] in ("Infinity", "-Infinity", "NaN"):
        return float(obj["__float__"].replace("Infinity", "inf"))
    return obj


def checkpoint_spec(config: dict) -> CheckpointSpec:
    """Dispatch on the config's format: transformers (has model_type) or mamba_ssm (has d_model)."""
    if "model_type" in config:
        model_type = config["model_type"]
        if model_type not in TRANSFORMERS_MODEL_TYPES:
            raise ValueError(f"from_pretrained: config.json model_type {model_type!r} is not supported; "
                             f"supported: {', '.join(TRANSFORMERS_MODEL_TYPES)} (or mamba_ssm's format)")
        spec = transformers_mamba2_spec(config) if model_type == "mamba2" else transformers_mamba_spec(config)
    elif "d_model" in config:
        spec = mamba_ssm_spec(config)
    else:
        raise ValueError("from_pretrained: config.json has neither model_type (transformers' format) nor d_model "
                         "(mamba_ssm's MambaLMHeadModel format)")
    spec.source = config
    return spec


def _field(config: dict, name: str, defaults: dict, kinds: tuple, where: str = "config.json"):
    """config[name] (or its default), checked to be one of `kinds` (bool is not an int here)."""
    value = config.get(name, defaults.get(name))
    if value is None or (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ValueError(f"from_pretrained: {where} field {name!r} must be {names}, got {value!r}")
    return value


def _integral(config: dict, name: str, defaults: dict, where: str = "config.json") -> int:
    """An integer field; integral floats (2.0) are accepted, others name the field."""
    value = _field(config, name, defaults, (int, float), where)
    if value != int(value) or value < 1:
        raise ValueError(f"from_pretrained: {where} field {name!r} = {value!r} cannot be represented: "
                         f"ssm_universal needs a positive integer")
    return int(value)


def _require(config: dict, name: str, defaults: dict, allowed: tuple, where: str = "config.json"):
    value = config.get(name, defaults.get(name))
    if value not in allowed:
        raise ValueError(f"from_pretrained: {where} field {name!r} = {value!r} cannot be represented; "
                         f"supported: {', '.join(map(repr, allowed))}")
    return value


def _transformers_common(config: dict, defaults: dict) -> dict:
    """The SSMLanguageModel arguments every transformers Mamba config shares. transformers' vocab_size already
    counts the padding rows (pad_vocab_size_multiple is informational there), so it is used as is."""
    _require(config, "hidden_act", defaults, ("silu",))
    d_model = _integral(config, "hidden_size", defaults)
    expand = _integral(config, "expand", defaults)
    if "intermediate_size" in config and config["intermediate_size"] != expand * d_model:
        raise ValueError(f"from_pretrained: config.json field 'intermediate_size' = {config['intermediate_size']!r} "
                         f"differs from expand * hidden_size = {expand * d_model}")
    return dict(vocab_size=_integral(config, "vocab_size", defaults), d_model=d_model,
                n_layer=_integral(config, "num_hidden_layers", defaults),
                tie_embeddings=_field(config, "tie_word_embeddings", defaults, (bool,)),
                d_state=_integral(config, "state_size", defaults), d_conv=_integral(config, "conv_kernel", defaults),
                expand_factor=expand, norm="rmsnorm",
                norm_eps=float(_field(config, "layer_norm_epsilon", defaults, (int, float))),
                bias=_field(config, "use_bias", defaults, (bool,)),
                conv_bias=_field(config, "use_conv_bias", defaults, (bool,)))


def transformers_mamba_spec(config: dict) -> CheckpointSpec:
    """MambaConfig / FalconMambaConfig -> a "mamba" SSMLanguageModel (+ FalconMamba's mixer_rms_eps)."""
    defaults = TRANSFORMERS_DEFAULTS[config["model_type"]]
    kwargs = dict(_transformers_common(config, defaults), architecture="mamba")
    rank = config.get("time_step_rank", "auto")
    kwargs["dt_rank"] = math.ceil(kwargs["d_model"] / 16) if rank == "auto" else \
        _integral(config, "time_step_rank", defaults)
    if config["model_type"] == "falcon_mamba":  # weightless RMSNorm of dt, B, C inside each mixer
        kwargs["mixer_rms_eps"] = float(_field(config, "mixer_rms_eps", defaults, (int, float)))
    return CheckpointSpec(kwargs, TRANSFORMERS_PREFIXES)


def transformers_mamba2_spec(config: dict) -> CheckpointSpec:
    """Mamba2Config -> a "mamba2" SSMLanguageModel (block_type "parallel").

    transformers' Mamba2 always gates before its group-wise RMSNorm (group = intermediate_size / n_groups) with
    eps layer_norm_epsilon, whatever the legacy fields norm_before_gate / rms_norm say (Mamba-Codestral's
    config says norm_before_gate: true): those fields are ignored here too, so the logits are transformers'."""
    defaults = TRANSFORMERS_DEFAULTS["mamba2"]
    kwargs = dict(_transformers_common(config, defaults), architecture="mamba2", block_type="parallel")
    heads, head_dim = _integral(config, "num_heads", defaults), _integral(config, "head_dim", defaults)
    groups = _integral(config, "n_groups", defaults)
    d_inner = kwargs["expand_factor"] * kwargs["d_model"]
    if heads * head_dim != d_inner:
        raise ValueError(f"from_pretrained: config.json fields 'num_heads' * 'head_dim' = {heads} * {head_dim} "
                         f"must equal expand * hidden_size = {d_inner}")
    if heads % groups:
        raise ValueError(f"from_pretrained: config.json field 'n_groups' = {groups} must divide "
                         f"num_heads = {heads}")
    limit = _field(config, "time_step_limit", defaults, (list, tuple))
    if len(limit) != 2 or not all(isinstance(v, numbers.Real) for v in limit) or not math.isfinite(limit[0]):
        raise ValueError(f"from_pretrained: config.json field 'time_step_limit' must be [finite low, high], "
                         f"got {limit!r}")
    kwargs.update(headdim=head_dim, ngroups=groups, chunk_size=_integral(config, "chunk_size", defaults),
                  dt_limit=(float(limit[0]), float(limit[1])), rmsnorm=True, norm_before_gate=False)
    return CheckpointSpec(kwargs, TRANSFORMERS_PREFIXES, gated_norm_eps=kwargs["norm_eps"])


def mamba_ssm_spec(config: dict) -> CheckpointSpec:
    """mamba_ssm's MambaConfig (MambaLMHeadModel) -> a "mamba" or "mamba2" SSMLanguageModel."""
    defaults = MAMBA_SSM_DEFAULTS
    if config.get("d_intermediate", 0):
        raise ValueError(f"from_pretrained: config.json field 'd_intermediate' = {config['d_intermediate']!r} "
                         f"(an MLP in every block) cannot be represented; only 0 is supported")
    if config.get("attn_layer_idx"):
        raise ValueError(f"from_pretrained: config.json field 'attn_layer_idx' = {config['attn_layer_idx']!r} "
                         f"(attention layers) cannot be represented; only [] is supported")
    ssm_cfg = dict(_field(config, "ssm_cfg", defaults, (dict,)))
    layer = _require(ssm_cfg, "layer", {"layer": "Mamba1"}, tuple(MAMBA_SSM_LAYERS), "config.json ssm_cfg")
    ssm_cfg.pop("layer", None)
    architecture, layer_class, layer_defaults = MAMBA_SSM_LAYERS[layer]
    where = "config.json ssm_cfg"
    kwargs = dict(architecture=architecture, vocab_size=_integral(config, "vocab_size", defaults),
                  d_model=_integral(config, "d_model", defaults), n_layer=_integral(config, "n_layer", defaults),
                  tie_embeddings=_field(config, "tie_embeddings", defaults, (bool,)),
                  pad_vocab_size_multiple=_integral(config, "pad_vocab_size_multiple", defaults),
                  norm="rmsnorm" if _field(config, "rms_norm", defaults, (bool,)) else "layernorm", norm_eps=1e-5,
                  d_state=_integral(ssm_cfg, "d_state", layer_defaults, where),
                  d_conv=_integral(ssm_cfg, "d_conv", layer_defaults, where),
                  expand_factor=_integral(ssm_cfg, "expand", layer_defaults, where))
    for name in ("d_state", "d_conv", "expand"):
        ssm_cfg.pop(name, None)
    if architecture == "mamba2":
        # explicit: create_model's own headdim default differs from mamba_ssm's 64
        kwargs["headdim"] = _integral(ssm_cfg, "headdim", layer_defaults, where)
        ssm_cfg.pop("headdim", None)
        kwargs["block_type"] = "parallel"
    kwargs.update(_layer_kwargs(layer_class, ssm_cfg))
    return CheckpointSpec(kwargs, MAMBA_SSM_PREFIXES)


def _layer_kwargs(layer_class: type, ssm_cfg: dict) -> dict:
    """ssm_cfg's remaining entries, which must be constructor arguments of the layer (mamba_ssm's names)."""
    accepted = set(inspect.signature(layer_class.__init__).parameters) - {
        "self", "d_model", "layer_idx", "device", "dtype", "process_group"}
    unknown = sorted(set(ssm_cfg) - accepted)
    if unknown:
        raise ValueError(f"from_pretrained: config.json ssm_cfg has fields {unknown} that {layer_class.__name__} "
                         f"does not take")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in ssm_cfg.items()}


# ---------------------------------------------------------------------------------------------- weights
def read_weights(directory: PathLike) -> Dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (CPU), by checkpoint name: model.safetensors, its sharded form
    (model.safetensors.index.json), pytorch_model.bin or its sharded form, in that order of preference."""
    for name in (SAFETENSORS_NAME, BIN_NAME):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return _read_weight_file(path)
        if os.path.isfile(path + ".index.json"):
            return _read_sharded(directory, path + ".index.json")
    raise FileNotFoundError(f"from_pretrained: {str(directory)!r} has none of {SAFETENSORS_NAME}, "
                            f"{SAFETENSORS_NAME}.index.json, {BIN_NAME}, {BIN_NAME}.index.json")


def _read_weight_file(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        return load_safetensors(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"from_pretrained: {path} does not hold a state dict (name -> tensor)")
    return state


def _read_sharded(directory: PathLike, index_path: str) -> Dict[str, torch.Tensor]:
    """The union of the shards an index.json's weight_map names (each shard must lie in `directory`)."""
    with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"from_pretrained: {index_path} has no weight_map")
    root = os.path.realpath(directory)
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        path = os.path.realpath(os.path.join(root, str(shard)))
        if os.path.dirname(path) != root:
            raise ValueError(f"from_pretrained: {index_path} names shard {shard!r} outside the checkpoint directory")
        tensors.update(_read_weight_file(path))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise ValueError(f"from_pretrained: {index_path} lists tensors its shards do not hold: {_few(missing)}")
    return tensors


def _few(names: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(names[:count])
    return shown + (f" (and {len(names) - count} more)" if len(names) > count else "")


def to_model_name(name: str, prefixes) -> str:
    """A checkpoint tensor name -> ours (only the embedding's prefix differs)."""
    for theirs, ours in prefixes:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return name


def to_checkpoint_name(name: str, prefixes) -> str:
    """Our tensor name -> the checkpoint format's (the first pair of `prefixes` that applies)."""
    for theirs, ours in prefixes:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name


def match_weights(model: nn.Module, tensors: Dict[str, torch.Tensor], prefixes, path: PathLike
                  ) -> Dict[str, torch.Tensor]:
    """Checkpoint tensors renamed to the model's state-dict names, all present with the model's shapes; else
    ValueError listing the unknown, missing and mis-shaped names (in the checkpoint's naming). A tied LM head
    is the embedding: a stored lm_head.weight is then ignored, as transformers and mamba_ssm do."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if model.lm_head.weight is model.embedding.weight:
        expected.pop("lm_head.weight")
    renamed, duplicates = {}, []
    for name, tensor in tensors.items():
        ours = to_model_name(name, prefixes)
        if ours in renamed:  # e.g. both backbone.embedding.weight and backbone.embeddings.weight
            duplicates.append(name)
        renamed.setdefault(ours, (name, tensor))
    if "lm_head.weight" not in expected:
        renamed.pop("lm_head.weight", None)
    unknown = sorted(duplicates + [theirs for ours, (theirs, _) in renamed.items() if ours not in expected])
    missing = sorted(to_checkpoint_name(ours, prefixes) for ours in expected if ours not in renamed)
    shapes = sorted(f"{theirs} {tuple(t.shape)} (the model's: {expected[ours]})"
                    for ours, (theirs, t) in renamed.items() if ours in expected and tuple(t.shape) != expected[ours])
    problems = [f"{label}: {_few(names)}" for label, names in
                (("unknown keys", unknown), ("missing keys", missing), ("shape mismatches", shapes)) if names]
    if problems:
        raise ValueError(f"from_pretrained: the weights in {str(path)!r} do not fit the model its config.json "
                         f"describes; " + "; ".join(problems))
    return {ours: tensor for ours, (_, tensor) in renamed.items() if ours in expected}


# ---------------------------------------------------------------------------------------------- model
def build_empty(spec: CheckpointSpec, model_class: type = SSMLanguageModel) -> nn.Module:
    """The model a spec describes, with parameters on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        model = model_class(**spec.model_kwargs)
        if spec.gated_norm_eps is not None:
            for block in model.backbone.layers:
                block.mixer.norm.eps = spec.gated_norm_eps
    return model


def materialize(model: nn.Module, weights: Dict[str, torch.Tensor], device=None,
                dtype: Optional[torch.dtype] = None) -> None:
    """Give every (meta) parameter its checkpoint value on `device` in `dtype` (FP32_PARAMETERS stay fp32),
    keeping each Parameter object (ties, attributes such as _no_weight_decay survive). Pops `weights`."""
    for name, param in list(model.named_parameters()):
        target = param.dtype if dtype is None or _keeps_fp32(name) else dtype
        value = weights.pop(name).to(device=device if device is not None else "cpu", dtype=target)
        new = nn.Parameter(value, requires_grad=param.requires_grad)
        new.__dict__.update(param.__dict__)
        torch.utils.swap_tensors(param, new)
    leftover = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"from_pretrained: tensors without a value after loading: {_few(leftover)}")


def _keeps_fp32(name: str) -> bool:
    return any(name == p or name.endswith("." + p) for p in FP32_PARAMETERS)


def load_pretrained(path: PathLike, device=None, dtype: Optional[torch.dtype] = None,
                    model_class: type = SSMLanguageModel) -> nn.Module:
    """The model of a local checkpoint directory (see the module docstring for the formats), in eval mode,
    on `device` (default CPU), in `dtype` (default fp32; A_log, D, dt_bias stay fp32).
    `model.pretrained_config` keeps the config.json as read."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"from_pretrained: dtype must be a floating torch.dtype or None, got {dtype!r}")
    spec = checkpoint_spec(read_config(path))
    model = build_empty(spec, model_class)
    weights = match_weights(model, read_weights(path), spec.prefixes, path)
    materialize(model, weights, device, dtype)
    model.pretrained_config = spec.source
    return model.eval()


# ---------------------------------------------------------------------------------------------- saving
def save_pretrained(model: nn.Module, path: PathLike) -> None:
    """Write `model` to directory `path` in the transformers format: config.json + model.safetensors."""
    config = transformers_config(model)
    tensors = {to_checkpoint_name(name, TRANSFORMERS_PREFIXES): tensor
               for name, tensor in model.state_dict().items()}
    if config["tie_word_embeddings"]:
        tensors.pop("lm_head.weight")  # transformers' tied checkpoints store the embedding only
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_safetensors(tensors, os.path.join(path, SAFETENSORS_NAME), metadata={"format": "pt"})


def transformers_config(model: nn.Module) -> dict:
    """The transformers config.json of `model`, read from its modules; ValueError naming what the
    transformers classes cannot represent. vocab_size is the embedding's row count (transformers has no
    separate padding); token ids come from `model.pretrained_config` where the model was loaded, else null."""
    architecture = getattr(model, "config", {}).get("architecture")
    if architecture not in SAVABLE_ARCHITECTURES:
        raise ValueError(f"save_pretrained: architecture {architecture!r} has no transformers format; "
                         f"architectures that can be saved this way: {', '.join(SAVABLE_ARCHITECTURES)}")
    backbone = model.backbone
    eps = _check_blocks(backbone)
    source = getattr(model, "pretrained_config", None) or {}
    config = dict(vocab_size=model.embedding.weight.shape[0], hidden_size=backbone.d_model,
                  num_hidden_layers=len(backbone.layers), layer_norm_epsilon=eps, hidden_act="silu",
                  tie_word_embeddings=model.lm_head.weight is model.embedding.weight,
                  residual_in_fp32=False,  # our residuals stay in the model's dtype
                  torch_dtype=str(model.embedding.weight.dtype).replace("torch.", ""),
                  **{name: source.get(name) for name in TOKEN_ID_FIELDS})
    mixer = backbone.layers[0].mixer
    mixer_fields = _mamba_fields(mixer) if architecture == "mamba" else _mamba2_fields(mixer, eps)
    for block in backbone.layers[1:]:
        if type(block.mixer) is not type(mixer):
            raise ValueError(f"save_pretrained: every layer must have the same mixer; found "
                             f"{type(mixer).__name__} and {type(block.mixer).__name__}")
    config.update(mixer_fields)
    return config


def _check_blocks(backbone: nn.Module) -> float:
    """The common eps of the blocks' RMSNorms; ValueError for LayerNorm blocks or conv gates."""
    norms = [block.norm for block in backbone.layers] + [backbone.norm_f]
    if not all(isinstance(norm, nn.RMSNorm) for norm in norms):
        raise ValueError("save_pretrained: norm 'layernorm' has no transformers format (its Mamba models use "
                         "RMSNorm)")
    eps = {norm.eps for norm in norms}
    if len(eps) != 1 or None in eps:
        raise ValueError(f"save_pretrained: the norms must share one explicit norm_eps, got {sorted(map(str, eps))}")
    if any(block.conv_gate is not None for block in backbone.layers):
        raise ValueError("save_pretrained: conv_kernel_size (the blocks' conv gate) has no transformers format")
    return eps.pop()


def _mamba_fields(mixer: nn.Module) -> dict:
    """MambaConfig (or FalconMambaConfig, for a mixer with mixer_rms_eps) fields of a Mamba mixer."""
    if not isinstance(mixer, Mamba):
        raise ValueError(f"save_pretrained: architecture 'mamba' with mixer {type(mixer).__name__} has no "
                         f"transformers format")
    fields = dict(model_type="mamba", architectures=["MambaForCausalLM"], state_size=mixer.d_state,
                  expand=mixer.expand, intermediate_size=mixer.d_inner, conv_kernel=mixer.d_conv,
                  time_step_rank=mixer.dt_rank, use_bias=mixer.in_proj.bias is not None,
                  use_conv_bias=mixer.conv1d.bias is not None)
    if mixer.mixer_rms_eps is not None:
        fields.update(model_type="falcon_mamba", architectures=["FalconMambaForCausalLM"],
                      mixer_rms_eps=mixer.mixer_rms_eps)
    return fields


def _mamba2_fields(mixer: nn.Module, eps: float) -> dict:
    """Mamba2Config fields of a Mamba2 mixer; ValueError naming the option transformers' Mamba2 lacks."""
    if not isinstance(mixer, Mamba2):
        raise ValueError(f"save_pretrained: mamba2 mixer {type(mixer).__name__} (block_type 'sequential') has no "
                         f"transformers format; use block_type 'parallel'")
    unsupported = [(mixer.d_ssm != mixer.d_inner, f"d_ssm = {mixer.d_ssm} (must equal d_inner = {mixer.d_inner})"),
                   (mixer.D_has_hdim, "D_has_hdim = True"), (not mixer.rmsnorm, "rmsnorm = False"),
                   (mixer.norm_before_gate, "norm_before_gate = True")]
    if mixer.rmsnorm and mixer.norm.eps != eps:
        unsupported.append((True, f"the gated norm's eps {mixer.norm.eps} (must equal norm_eps = {eps})"))
    for bad, what in unsupported:
        if bad:
            raise ValueError(f"save_pretrained: Mamba2 option {what} has no transformers format")
    low, high = mixer.dt_limit
    return dict(model_type="mamba2", architectures=["Mamba2ForCausalLM"], state_size=mixer.d_state,
                expand=mixer.expand, conv_kernel=mixer.d_conv, num_heads=mixer.nheads, head_dim=mixer.headdim,
                n_groups=mixer.ngroups, chunk_size=mixer.chunk_size, time_step_limit=[float(low), float(high)],
                use_bias=mixer.in_proj.bias is not None, use_conv_bias=mixer.conv1d.bias is not None,
                # for transformers versions that read them (later ones always gate before the norm)
                norm_before_gate=False, rms_norm=True)
