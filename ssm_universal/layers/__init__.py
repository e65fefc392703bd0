"""nn.Module layers built on ssm_kernels, each with forward, default_state and a recurrent step."""
from .dss import DSS
from .gated_mlp import GatedMLP
from .h3 import H3
from .mamba import Mamba
from .mamba2 import Mamba2
from .mamba2_sequential import Mamba2Sequential
from .s4d import S4D
from .s5 import S5

__all__ = ["DSS", "GatedMLP", "H3", "Mamba", "Mamba2", "Mamba2Sequential", "S4D", "S5"]
