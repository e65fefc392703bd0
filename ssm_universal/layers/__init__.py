"""nn.Module layers built on ssm_kernels, each with forward, default_state and a recurrent step."""
from .dss import DSS
from .h3 import H3
from .mamba import Mamba
from .mamba2 import Mamba2
from .s4d import S4D
from .s5 import S5

__all__ = ["DSS", "H3", "Mamba", "Mamba2", "S4D", "S5"]
