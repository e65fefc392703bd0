"""Lazy build and load of the CPU C++ kernels in csrc/cpu/ (ops torch.ops.ssm_kernels_cpu.*).

The torch backend's fast paths use them for CPU tensors where a sequential loop in C++ runs at memory speed
and no pure-PyTorch formulation does (the linear scan). They are built once, on first use, with the
system C++ compiler through torch.utils.cpp_extension (ninja), and cached in $SSM_KERNELS_CACHE next to the
CUDA builds. Where there is no compiler, or SSM_KERNELS_CPU_EXT=0, or the build fails, `load()` returns
False (the reason is logged once and kept in `problem()`), and callers use their pure-PyTorch path: both
paths are tested against the sequential references.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from typing import Optional

import torch

from . import _build_lock, _cuda_ext

NAMESPACE = "ssm_kernels_cpu"
CXX_FLAGS = ["-O3", "-fopenmp"]  # OpenMP: at::parallel_for spreads rows over the intra-op threads
BUILD_WAIT_S = 600.0  # longest wait for another process's build before using the pure-PyTorch paths

_log = logging.getLogger("ssm_kernels")
_LOCK = threading.Lock()
_state = {"loaded": None, "problem": None, "how": None}  # loaded: None = not tried yet


def disabled() -> bool:
    return os.environ.get("SSM_KERNELS_CPU_EXT", "1") == "0"


def problem() -> Optional[str]:
    """None if the CPU kernels are loaded or look buildable here, else why not (builds nothing)."""
    if disabled():
        return "disabled by SSM_KERNELS_CPU_EXT=0"
    if _state["problem"] is not None:
        return _state["problem"]
    if _state["loaded"]:
        return None
    if not _cuda_ext.sources("cpu"):
        return "csrc/cpu has no sources in this installation"
    compiler = os.environ.get("CXX", "c++")  # what torch.utils.cpp_extension builds with on Linux and macOS
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) on PATH"
    return None


def load() -> bool:
    """Build (once) and load csrc/cpu; False when it cannot be used here (see problem())."""
    if _state["loaded"] is not None and not disabled():
        return _state["loaded"]
    if disabled():
        return False
    with _LOCK:
        if _state["loaded"] is None:
            reason = problem()
            if reason is None:
                try:
                    _state["how"] = _build()
                except Exception as error:  # a broken toolchain must not break the pure-PyTorch path
                    reason = f"building csrc/cpu failed: {str(error).strip().splitlines()[-1]}"
            if reason is not None:
                _state["problem"] = reason
                _log.warning("ssm_kernels: CPU C++ kernels unavailable (%s); using the pure-PyTorch paths",
                             reason)
            _state["loaded"] = reason is None
    return _state["loaded"]


def _build() -> str:
    from torch.utils import cpp_extension

    build_dir = _cuda_ext.cache_root() / f"cpu-torch{torch.__version__}".replace("+", "_")
    start = time.perf_counter()
    with _build_lock.exclusive_build(build_dir, BUILD_WAIT_S):
        _cuda_ext.announce_build("cpu", build_dir, "this CPU with the system C++ compiler")
        cpp_extension.load(
            name="ssm_kernels_cpu", sources=[str(p) for p in _cuda_ext.sources("cpu")],
            build_directory=str(build_dir), extra_cflags=CXX_FLAGS, extra_ldflags=["-fopenmp"],
            is_python_module=False, verbose=os.environ.get("SSM_KERNELS_VERBOSE_BUILD") == "1")
    return f"built in {build_dir} ({time.perf_counter() - start:.1f} s)"


def status() -> str:
    """For `python -m ssm_kernels`."""
    if _state["loaded"]:
        return f"loaded ({_state['how']})"
    reason = problem()
    return "builds on first use" if reason is None else f"unavailable: {reason}"
