"""nn.Module layers built on ssm_kernels, each with forward, default_state and a recurrent step."""
from .mamba import Mamba

__all__ = ["Mamba"]
