"""ssm_universal: nn.Module layers and architectures built on ssm_kernels (see DESIGN.md).

Everything public is importable from the top level (`import ssm_universal as su; su.create_model(...)`,
`su.Mamba2(...)`); the submodules load on first access, so `import ssm_universal` stays cheap and never
initialises CUDA.
"""
import importlib

__version__ = "0.1.0"

_LAYERS = ("DSS", "EfficientDsConv", "GSS", "GSSDSS", "GatedDsConv", "GatedMHESA", "GatedMLP", "H3", "MHESA",
           "Mamba", "Mamba2", "Mamba2Sequential", "S4", "S4D", "S4ND", "S5")
_MODELS = ("ARCHITECTURES", "GatedDsConvLM", "GatedExponentialSmoothingLM", "GatedStateSpacesLM", "HSSS", "HiSS",
           "HiSSState", "HighLevelMamba", "LowLevelMamba", "ResidualBlock", "SimpleHSSSMamba", "SSMLanguageModel",
           "SSMModel", "create_model", "load_safetensors", "load_state_dict", "save_safetensors", "save_state_dict")
_HOME = {**{name: "ssm_universal.layers" for name in _LAYERS}, **{name: "ssm_universal.models" for name in _MODELS},
         "set_context_parallel": "ssm_universal.context_parallel"}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'ssm_universal' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_HOME))
