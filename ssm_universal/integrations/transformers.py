"""Run Hugging Face transformers' Mamba, Mamba2 and FalconMamba models on ssm_kernels.

    import ssm_universal.integrations.transformers as hf_ssm
    hf_ssm.patch()            # every MambaMixer / Mamba2Mixer / FalconMambaMixer, in every model
    hf_ssm.patch(model)       # or only the mixers of this model instance
    hf_ssm.unpatch()          # restore transformers' own forwards (unpatch(model): only that instance's)

Without mamba_ssm / causal-conv1d, transformers runs its mixers on a slow pure-PyTorch path. The patched
forward computes the same thing through ssm_kernels: causal_conv1d and selective_scan (Mamba, FalconMamba) or
ssd_chunk_scan and gated_rmsnorm (Mamba2) for whole sequences, forward and backward; causal_conv1d_update and
selective_state_update for decoding steps. It reads and writes transformers' cache object (conv and recurrent
states per layer) the way the original forward does, and masks padded positions with the 2D attention mask
where the original does (before in_proj and after the convolution).

Two deliberate differences from transformers' torch path, both where that path is inconsistent with itself:
  * Mamba / FalconMamba: a multi-token forward that continues a cache (chunked prefill, assisted decoding)
    starts the scan from the cached recurrent state; transformers' path restarts it from zero (while its
    convolution does continue from the cache), so its output differs from running the whole sequence at once.
  * Mamba2: a decoding step clamps dt to config.time_step_limit, as the full-sequence forward does;
    transformers' step ignores the limit (only matters when time_step_limit is not (0, inf)).
Releases: transformers 5.x, both cache APIs (the per-layer getters of recent releases and cache.layers[i]
before them) and both Mamba2 gated norms (grouped, and the earlier one over the whole intermediate size, which
the patched forward then computes too: it follows the model's own norm module).
Where a call cannot be handled (an unexpected transformers version, cache type, activation or argument), the
original forward runs for that call and the reason is logged once (logger "ssm_universal").

transformers is imported by patch() only, never by `import ssm_universal`.
"""
from __future__ import annotations

import importlib
import logging
import math
import types
import weakref
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from ssm_kernels import (causal_conv1d, causal_conv1d_update, gated_rmsnorm, selective_scan, selective_state_update,
                         ssd_chunk_scan)

from ..layers.mamba import rms_normalize
from ..layers.mamba2 import ssd_step

logger = logging.getLogger("ssm_universal")

# kind -> (module path, mixer class name); FalconMamba first: classes are matched in this order
_TARGETS = {
    "falcon_mamba": ("transformers.models.falcon_mamba.modeling_falcon_mamba", "FalconMambaMixer"),
    "mamba": ("transformers.models.mamba.modeling_mamba", "MambaMixer"),
    "mamba2": ("transformers.models.mamba2.modeling_mamba2", "Mamba2Mixer"),
}
# children whose weights the forward reads directly: their accelerate hooks must fire first (offloading)
_HOOKED_CHILDREN = {"mamba": ("conv1d", "dt_proj"), "falcon_mamba": ("conv1d", "dt_proj"), "mamba2": ("conv1d",)}
# The cache API: transformers >= 5.2x has getters; earlier 5.x caches are read through their layers
# (cache.layers[i].conv_states[0] once cache.has_previous_state(i), as their mixers do).
_CACHE_METHODS = ("get_conv_state", "get_recurrent_state", "update_conv_state", "update_recurrent_state",
                  "is_recording_past")
_LAYERED_CACHE_METHODS = ("has_previous_state", "update_conv_state", "update_recurrent_state")
_MIXER_ATTRS = {
    "mamba": ("in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "D", "out_proj", "layer_idx", "activation",
              "conv_kernel_size", "time_step_rank", "ssm_state_size", "intermediate_size"),
    "mamba2": ("in_proj", "conv1d", "dt_bias", "A_log", "D", "norm", "out_proj", "layer_idx", "activation",
               "conv_kernel_size", "num_heads", "head_dim", "n_groups", "ssm_state_size", "intermediate_size",
               "conv_dim", "chunk_size", "time_step_limit"),
}
_MIXER_ATTRS["falcon_mamba"] = _MIXER_ATTRS["mamba"] + ("rms_eps",)
_ACTIVATIONS = (None, "silu", "swish")

_PATCHED_CLASSES: Dict[type, Callable] = {}  # mixer class -> its original forward (the function object)
_PATCHED_INSTANCES: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()
_LOGGED = set()
_MARK = "_ssm_universal_patched"


# ---------------------------------------------------------------------------------------------- public API
def patch(model: Optional[torch.nn.Module] = None):
    """Route transformers' Mamba / Mamba2 / FalconMamba mixers through ssm_kernels.

    model=None: patch the mixer classes (every model, existing and future). Otherwise patch only the mixer
    modules inside `model` (their `forward` is bound on the instance) and return `model`.
    Patching twice is harmless. Raises ImportError when transformers is not installed.
    """
    classes = _mixer_classes()
    if model is None:
        for kind, cls in classes.items():
            if cls in _PATCHED_CLASSES:
                continue
            original = cls.__dict__["forward"]
            _PATCHED_CLASSES[cls] = original
            cls.forward = _make_forward(kind)
        return None
    found = 0
    for module in model.modules():
        kind = _kind_of(module, classes)
        if kind is None:
            continue
        found += 1
        if not getattr(module.__dict__.get("forward"), _MARK, False):
            module.forward = types.MethodType(_make_forward(kind), module)
            _PATCHED_INSTANCES.add(module)
    if not found:
        _log_once("no-mixer", "ssm_universal.integrations.transformers.patch(model): the model holds no "
                  "MambaMixer / Mamba2Mixer / FalconMambaMixer; nothing was patched")
    return model


def unpatch(model: Optional[torch.nn.Module] = None) -> None:
    """Undo patch(). model=None: restore the classes' original forwards and remove every instance patch;
    otherwise remove only the instance patches inside `model`."""
    if model is None:
        for cls, original in list(_PATCHED_CLASSES.items()):
            cls.forward = original
            del _PATCHED_CLASSES[cls]
        modules = list(_PATCHED_INSTANCES)
    else:
        modules = list(model.modules())
    for module in modules:
        if getattr(module.__dict__.get("forward"), _MARK, False):
            del module.__dict__["forward"]
        _PATCHED_INSTANCES.discard(module)


def is_patched(module_or_class) -> bool:
    """Whether a mixer class, or a mixer module (through its class or its own binding), runs on ssm_kernels."""
    if isinstance(module_or_class, type):
        return module_or_class in _PATCHED_CLASSES
    return bool(getattr(module_or_class.__dict__.get("forward"), _MARK, False)) or \
        getattr(type(module_or_class).forward, _MARK, False)


# ---------------------------------------------------------------------------------------------- plumbing
def _mixer_classes() -> Dict[str, type]:
    importlib.import_module("transformers")  # ImportError with the usual message when missing
    classes = {}
    for kind, (module_name, class_name) in _TARGETS.items():
        try:
            classes[kind] = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            _log_once(("import", kind), f"ssm_universal: transformers' {class_name} not found ({err}); "
                      "it is left unpatched")
    return classes


def _kind_of(module, classes) -> Optional[str]:
    for kind, cls in classes.items():
        if isinstance(module, cls):
            return kind
    return None


def _log_once(key, message: str) -> None:
    if key not in _LOGGED:
        _LOGGED.add(key)
        logger.warning(message)


def _original_forward(module) -> Callable:
    """transformers' own forward for this module's class (whatever is patched)."""
    for klass in type(module).__mro__:
        if klass in _PATCHED_CLASSES:
            return _PATCHED_CLASSES[klass]
        fn = klass.__dict__.get("forward")
        if fn is not None and not getattr(fn, _MARK, False):
            return fn
    raise RuntimeError(f"no original forward found for {type(module).__name__}")


def _make_forward(kind: str) -> Callable:
    impl = {"mamba": _mamba_forward, "falcon_mamba": _mamba_forward, "mamba2": _mamba2_forward}[kind]

    def forward(self, *args, **kwargs):
        call = _parse_call(args, kwargs)
        reason = call if isinstance(call, str) else _unsupported(kind, self, *call)
        if reason is not None:
            _log_once((kind, reason), f"ssm_universal: {type(self).__name__} runs transformers' own forward: "
                      f"{reason}")
            return _original_forward(self)(self, *args, **kwargs)
        hidden_states, cache, attention_mask, _ = call
        hooks = _fire_pre_hooks(self, _HOOKED_CHILDREN[kind])
        try:
            return impl(self, hidden_states, cache, attention_mask, falcon=kind == "falcon_mamba")
        finally:
            for child, hook in reversed(hooks):
                hook.post_forward(child, ())

    forward.__doc__ = f"ssm_kernels forward of transformers' {_TARGETS[kind][1]} (see {__name__})."
    setattr(forward, _MARK, True)
    return forward


def _parse_call(args, kwargs):
    """(hidden_states, cache, attention_mask, extra kwargs) of a mixer call, or the reason it is not understood."""
    names = ("hidden_states", "cache", "attention_mask")
    if len(args) > len(names):
        return f"unexpected positional arguments ({len(args)})"
    values = dict(zip(names, args))
    extra = dict(kwargs)
    for name in names:
        if name in extra:
            if name in values:
                return f"argument {name} given twice"
            values[name] = extra.pop(name)
    if "cache_params" in extra:  # the name transformers deprecates in favour of `cache`
        if values.get("cache") is not None:
            return "both cache and cache_params given"
        values["cache"] = extra.pop("cache_params")
    if "hidden_states" not in values:
        return "no hidden_states"
    return values["hidden_states"], values.get("cache"), values.get("attention_mask"), extra


def _unsupported(kind, mixer, hidden_states, cache, attention_mask, extra) -> Optional[str]:
    """Why this call cannot run on the patched path (None: it can)."""
    missing = [a for a in _MIXER_ATTRS[kind] if not hasattr(mixer, a)]
    if missing:
        return f"the mixer lacks {missing} (unknown transformers version)"
    unknown = sorted(k for k, v in extra.items() if v is not None)
    if unknown:
        return f"unsupported arguments {unknown}"
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 3:
        return "hidden_states is not a (batch, length, hidden) tensor"
    if cache is not None and not (_has_methods(cache, _CACHE_METHODS) or
                                  (_has_methods(cache, _LAYERED_CACHE_METHODS) and hasattr(cache, "layers"))):
        return f"cache of type {type(cache).__name__} lacks {list(_CACHE_METHODS)} (unknown transformers version)"
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
        return "attention_mask is not a 2D padding mask"
    if mixer.activation not in _ACTIVATIONS:
        return f"activation {mixer.activation!r} (ssm_kernels' convolutions take silu or none)"
    if kind == "falcon_mamba" and hasattr(getattr(mixer, "config", None), "_is_quantized"):
        return "quantized model (dt_proj is not a plain Linear)"
    if kind == "mamba2":
        if mixer.num_heads * mixer.head_dim != mixer.intermediate_size:
            return "num_heads * head_dim != intermediate_size"
        norm = mixer.norm
        if not (hasattr(norm, "weight") and hasattr(norm, "variance_epsilon")):
            return "the gated norm lacks weight / variance_epsilon (unknown transformers version)"
        low, high = (float(v) for v in mixer.time_step_limit)
        if not (math.isfinite(low) and low <= high):
            return f"time_step_limit {tuple(mixer.time_step_limit)}"
    return None


def _has_methods(obj, names) -> bool:
    return all(callable(getattr(obj, name, None)) for name in names)


def _fire_pre_hooks(mixer, names):
    """What transformers' force_accelerate_hooks does: fire the accelerate hooks of children used directly."""
    fired = []
    for name in names:
        child = getattr(mixer, name)
        hook = getattr(child, "_hf_hook", None)
        if hook is not None:
            hook.pre_forward(child)
            fired.append((child, hook))
    return fired


# ---------------------------------------------------------------------------------------------- shared math
def _mask(hidden_states, attention_mask):
    """transformers' apply_mask_to_padding_states: zero the padded positions of (B, L, C)."""
    if attention_mask is None:
        return hidden_states
    return (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)


def _grad_needed(mixer, hidden_states) -> bool:
    """Decoding-step ops have no autograd: with gradients wanted, a step runs through the sequence ops."""
    return torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad
                                                                           for p in mixer.parameters()))


def _conv(mixer, x, cache, conv_state, decode_step):
    """Depthwise causal conv of x (B, C, L) with the cache semantics of transformers' mixers.

    Decoding step: causal_conv1d_update on the cached inputs (in place). Otherwise the cache (when given) is
    updated with the new inputs by the cache itself, exactly as the original forward does; it returns the
    inputs with their left context (the cached ones on continuation, zero padding on prefill), and the conv
    over those, cut to the last L positions, is the result."""
    weight = mixer.conv1d.weight.squeeze(1)  # (C, W)
    bias = mixer.conv1d.bias
    activation = "silu" if mixer.activation is not None else None
    if decode_step:
        return causal_conv1d_update(x.to(conv_state.dtype), conv_state, weight, bias, activation=activation).to(x.dtype)
    seq_len = x.shape[-1]
    if cache is not None:
        x = cache.update_conv_state(x, mixer.layer_idx, conv_kernel_size=mixer.conv_kernel_size)
    y = causal_conv1d(x, weight, bias, activation=activation)
    return y[..., -seq_len:] if cache is not None else y


def _initial_state(recurrent_state):
    """The cached recurrent state as a scan's initial state: fp32, and a copy when autograd may save it (the
    cache overwrites its buffer in place right after the scan)."""
    if recurrent_state is None:
        return None
    state = recurrent_state.float()
    return state.clone() if torch.is_grad_enabled() and state is recurrent_state else state


def _states(mixer, cache, hidden_states):
    """(conv_state, recurrent_state, conv decoding step?, scan decoding step?) as the original forward decides."""
    if cache is None:
        return None, None, False, False
    layer_idx = mixer.layer_idx
    if _has_methods(cache, _CACHE_METHODS):
        conv_state = cache.get_conv_state(layer_idx, state_idx=0)
        recurrent_state = cache.get_recurrent_state(layer_idx, state_idx=0)
        recording = cache.is_recording_past(layer_idx)
    else:  # earlier 5.x: the layer's state dicts hold tensors once the layer has seen a prefill
        previous = cache.has_previous_state(layer_idx)
        layer = cache.layers[layer_idx] if previous else None
        conv_state = layer.conv_states[0] if previous else None
        recurrent_state = layer.recurrent_states[0] if previous else None
        recording = bool(getattr(layer, "record_past", False))
    single = hidden_states.shape[1] == 1 and not _grad_needed(mixer, hidden_states)
    conv_step = single and conv_state is not None and not recording
    scan_step = single and recurrent_state is not None
    return conv_state, recurrent_state, conv_step, scan_step


# ---------------------------------------------------------------------------------------------- Mamba / FalconMamba
def _mamba_forward(mixer, hidden_states, cache, attention_mask, falcon=False):
    """MambaMixer / FalconMambaMixer forward: (B, L, hidden) -> (B, L, hidden)."""
    dtype = hidden_states.dtype
    conv_state, recurrent_state, conv_step, scan_step = _states(mixer, cache, hidden_states)

    hidden_states = _mask(hidden_states, attention_mask)
    x, gate = mixer.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
    x = _conv(mixer, x, cache, conv_state, conv_step)
    x = _mask(x.transpose(1, 2), attention_mask)  # (B, L, d_inner)

    N = mixer.ssm_state_size
    parts = torch.split(mixer.x_proj(x), [mixer.time_step_rank, N, N], dim=-1)
    if falcon:  # FalconMamba: weightless RMS norms of dt, B and C (the same as ssm_universal's Mamba)
        parts = [rms_normalize(p, mixer.rms_eps) for p in parts]
    dt, B, C = parts
    dt = F.linear(dt, mixer.dt_proj.weight).transpose(1, 2)  # (B, d_inner, L); the bias is added in the scan
    A = -torch.exp(mixer.A_log.float())
    D = mixer.D.float()
    dt_bias = mixer.dt_proj.bias.float() if mixer.dt_proj.bias is not None else None

    if scan_step:
        y = selective_state_update(recurrent_state, x[:, 0], dt[..., 0], A, B[:, 0], C[:, 0], D=D,
                                   z=gate[..., 0], dt_bias=dt_bias, dt_softplus=True).unsqueeze(-1)
    else:
        y = selective_scan(x.transpose(1, 2), dt, A, B.transpose(1, 2).contiguous(),
                           C.transpose(1, 2).contiguous(), D=D, z=gate, delta_bias=dt_bias, delta_softplus=True,
                           initial_state=_initial_state(recurrent_state),
                           return_final_state=cache is not None)
        if cache is not None:
            y, final_state = y
            cache.update_recurrent_state(final_state.detach(), mixer.layer_idx)
    return mixer.out_proj(y.transpose(1, 2).to(dtype))


# ---------------------------------------------------------------------------------------------- Mamba2
def _mamba2_forward(mixer, hidden_states, cache, attention_mask, falcon=False):
    """Mamba2Mixer forward: (B, L, hidden) -> (B, L, hidden)."""
    batch, seq_len, _ = hidden_states.shape
    dtype = hidden_states.dtype
    conv_state, recurrent_state, conv_step, scan_step = _states(mixer, cache, hidden_states)
    H, P, G, N = mixer.num_heads, mixer.head_dim, mixer.n_groups, mixer.ssm_state_size
    dt_limit = tuple(float(v) for v in mixer.time_step_limit)

    hidden_states = _mask(hidden_states, attention_mask)
    gate, xBC, dt = mixer.in_proj(hidden_states).split([mixer.intermediate_size, mixer.conv_dim, H], dim=-1)
    xBC = _conv(mixer, xBC.transpose(1, 2), cache, conv_state, conv_step)
    xBC = _mask(xBC.transpose(1, 2), attention_mask)
    x, B, C = torch.split(xBC, [mixer.intermediate_size, G * N, G * N], dim=-1)
    A = -torch.exp(mixer.A_log.float())
    D = mixer.D.float()
    dt_bias = mixer.dt_bias.float()

    if scan_step:
        y = ssd_step(recurrent_state, x.reshape(batch, H, P), dt[:, 0], A, B.reshape(batch, G, N),
                     C.reshape(batch, G, N), D, dt_bias, dt_limit).reshape(batch, 1, H * P)
    else:
        y = ssd_chunk_scan(x.reshape(batch, seq_len, H, P), dt, A, B.reshape(batch, seq_len, G, N),
                           C.reshape(batch, seq_len, G, N), chunk_size=mixer.chunk_size, D=D, dt_bias=dt_bias,
                           dt_softplus=True, dt_limit=dt_limit,
                           initial_states=_initial_state(recurrent_state),
                           return_final_states=cache is not None)
        if cache is not None:
            y, final_state = y
            cache.update_recurrent_state(final_state.detach(), layer_idx=mixer.layer_idx)
        y = y.reshape(batch, seq_len, H * P)

    norm = mixer.norm
    # transformers' norm before group_size existed normalises over the whole intermediate size (for n_groups > 1
    # unlike mamba_ssm); the patched forward computes what the model's own norm module computes
    group_size = getattr(norm, "group_size", mixer.intermediate_size)
    y = gated_rmsnorm(y, norm.weight, gate, eps=norm.variance_epsilon, group_size=group_size,
                      norm_before_gate=False)
    return mixer.out_proj(y.to(dtype))


__all__ = ["patch", "unpatch", "is_patched"]
