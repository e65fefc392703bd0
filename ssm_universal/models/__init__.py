"""Architectures built from ssm_universal.layers: create_model, the language model, save/load."""
from .blocks import ResidualBlock, SSMModel
from .factory import ARCHITECTURES, create_model
from .gss_lm import GatedDsConvLM, GatedExponentialSmoothingLM, GatedStateSpacesLM
from .hiss import HiSS, HiSSState
from .hsss import HSSS, HighLevelMamba, LowLevelMamba, SimpleHSSSMamba
from .language_model import SSMLanguageModel
from .serialization import load_safetensors, load_state_dict, save_safetensors, save_state_dict

__all__ = ["ARCHITECTURES", "GatedDsConvLM", "GatedExponentialSmoothingLM", "GatedStateSpacesLM", "HSSS", "HiSS", "HiSSState", "HighLevelMamba", "LowLevelMamba", "ResidualBlock",
           "SimpleHSSSMamba", "SSMLanguageModel", "SSMModel", "create_model", "load_safetensors",
           "load_state_dict", "save_safetensors", "save_state_dict"]
