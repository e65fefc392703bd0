"""ssm_kernels: fast state space model primitives with pure-PyTorch references.

Every public op takes `backend=None` ("torch", "triton", "cuda", or "cpp" for the C++ CPU kernels; None picks
automatically, see ssm_kernels._dispatch). Importing this package loads only torch: Triton and the CUDA
extensions are imported or built on first use, and CUDA is not initialised.

mamba_ssm's and causal-conv1d's function names (selective_scan_fn, mamba_inner_fn, selective_state_update,
mamba_chunk_scan_combined, mamba_split_conv1d_scan_combined, rmsnorm_fn, causal_conv1d_fn) are re-exported here
from ssm_kernels.compat, which also holds causal-conv1d's causal_conv1d_update: the top-level
causal_conv1d_update is our own op (see ssm_kernels.compat).
"""
from ._dispatch import BackendUnavailableError, available_backends, record_backends, use_backend
from .cauchy_kernel import cauchy_kernel
from .causal_conv1d import causal_conv1d
from .causal_conv1d_update import causal_conv1d_update
from .compat import causal_conv1d_fn, mamba_inner_fn, mamba_split_conv1d_scan_combined, rmsnorm_fn
from .fftconv import fftconv
from .gated_rmsnorm import gated_rmsnorm
from .linear_scan import linear_scan
from .selective_scan import selective_scan, selective_scan_fn
from .selective_state_update import selective_state_update
from .ssd_chunk_scan import mamba_chunk_scan_combined, ssd_chunk_scan
from .vandermonde_kernel import vandermonde_kernel

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "available_backends", "record_backends", "use_backend",
    "causal_conv1d", "causal_conv1d_update", "selective_scan", "selective_scan_fn", "selective_state_update",
    "ssd_chunk_scan", "mamba_chunk_scan_combined", "linear_scan", "fftconv", "gated_rmsnorm", "vandermonde_kernel", "cauchy_kernel",
    "mamba_inner_fn", "mamba_split_conv1d_scan_combined", "rmsnorm_fn", "causal_conv1d_fn",
]
