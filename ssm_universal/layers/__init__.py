"""nn.Module layers built on ssm_kernels, each with forward, default_state and a recurrent step."""
from .dss import DSS
from .gated_mlp import GatedMLP
from .gss import GSS, GSSDSS, EfficientDsConv, GatedDsConv
from .gss_ema import MHESA, GatedMHESA
from .h3 import H3
from .mamba import Mamba
from .mamba2 import Mamba2
from .mamba2_sequential import Mamba2Sequential
from .s4 import S4
from .s4d import S4D
from .s4nd import S4ND
from .s5 import S5

__all__ = ["DSS", "EfficientDsConv", "GSS", "GSSDSS", "GatedDsConv", "GatedMHESA", "GatedMLP", "H3", "MHESA",
           "Mamba", "Mamba2", "Mamba2Sequential", "S4", "S4D", "S4ND", "S5"]
