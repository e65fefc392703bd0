"""Lazy build and load of the CUDA C++ extensions in csrc/<name>/.

Each csrc/<name>/ folder holds the kernels of one op and a registration file that defines its ops with
TORCH_LIBRARY_FRAGMENT(ssm_kernels_cuda, m), so they appear as torch.ops.ssm_kernels_cuda.* (visible to
torch.compile) once loaded. Loading, first that works:
1. a prebuilt library ssm_kernels/_C_<name>*.so (`SSM_KERNELS_BUILD_CUDA=1` at install time);
2. a JIT build with ninja through torch.utils.cpp_extension.load, for the current GPU's architecture only,
   cached in $SSM_KERNELS_CACHE (default ~/.cache/ssm_kernels) per torch/CUDA version and architecture;
   torch rebuilds only when the sources change.
Nothing here runs at `import ssm_kernels`.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import _build_lock

NAMESPACE = "ssm_kernels_cuda"
_PACKAGE_DIR = Path(__file__).resolve().parent
_LOADED: Dict[str, str] = {}  # name -> how it was loaded
_LOCK = threading.Lock()

NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo",
              "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
CXX_FLAGS = ["-O3"]
BUILD_WAIT_S = 1800.0  # longest wait for another process's nvcc build of the same extension
# Typical first-build times (s), measured on a 16-core H200 machine; the announcement quotes them.
TYPICAL_BUILD_S = {"causal_conv1d": 35, "selective_scan": 45, "linear_scan": 40, "fftconv": 40, "cpu": 15}
_log = logging.getLogger("ssm_kernels")


def csrc_dir() -> Optional[Path]:
    """csrc/ of a source checkout, else the copy installed as ssm_kernels/_csrc."""
    for candidate in (_PACKAGE_DIR.parent / "csrc", _PACKAGE_DIR / "_csrc"):
        if candidate.is_dir():
            return candidate
    return None


def cuda_extension_names() -> List[str]:
    """The csrc/<name> folders that are CUDA extensions (not _shared headers, not the cpu/ kernels)."""
    root = csrc_dir()
    if root is None:
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_") and p.name != "cpu")


def sources(name: str) -> List[Path]:
    root = csrc_dir()
    if root is None:
        return []
    return sorted(p for pattern in ("*.cu", "*.cpp") for p in (root / name).glob(pattern))


def announce_build(name: str, build_dir: Path, target: str) -> None:
    """Log one line before a build that will compile (the cached library is missing or older than its
    sources), so that a first call that takes a minute says why."""
    library = build_dir / f"ssm_kernels_{name}.so"
    csrc = csrc_dir()
    inputs = [p for folder in (name, "_common") for p in (csrc / folder).rglob("*") if p.is_file()] if csrc else []
    newest = max((p.stat().st_mtime for p in inputs), default=0.0)
    if library.exists() and library.stat().st_mtime >= newest:
        return
    _log.warning("ssm_kernels: building csrc/%s for %s (about %d s, once; cached in %s)", name, target,
                 TYPICAL_BUILD_S.get(name, 60), build_dir)


def prebuilt(name: str) -> Optional[Path]:
    found = sorted(_PACKAGE_DIR.glob(f"_C_{name}*.so"))
    return found[0] if found else None


def cuda_home() -> Optional[str]:
    """The CUDA toolkit torch.utils.cpp_extension would build with, found as it finds it, without importing
    it (its import warns on machines without a GPU)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None:
        nvcc = shutil.which("nvcc")
        home = os.path.dirname(os.path.dirname(nvcc)) if nvcc else "/usr/local/cuda"
    return home if os.path.exists(os.path.join(home, "bin", "nvcc")) else None


def arch() -> str:
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def cache_root() -> Path:
    return Path(os.environ.get("SSM_KERNELS_CACHE", Path.home() / ".cache" / "ssm_kernels"))


def cache_dir(name: str) -> Path:
    tag = f"{name}-torch{torch.__version__}-cuda{torch.version.cuda}-sm{arch().replace('.', '')}"
    return cache_root() / tag.replace("+", "_")


def problem(name: Optional[str]) -> Optional[str]:
    """None when csrc/<name> is loaded or can be loaded or built here, else why not (builds nothing)."""
    if name is None:
        return "no csrc extension is declared for this op"
    if name in _LOADED or prebuilt(name) is not None:
        return None
    if not sources(name):
        return f"csrc/{name} has no sources in this installation"
    if torch.version.cuda is None:
        return "torch was built without CUDA"
    if cuda_home() is None:
        return (f"no CUDA toolkit (nvcc) to build csrc/{name}: set CUDA_HOME, or install with "
                "SSM_KERNELS_BUILD_CUDA=1 on a machine that has one")
    if shutil.which("ninja") is None:
        try:
            import ninja  # noqa: F401  (the pip package puts the binary on its own path)
        except ImportError:
            return "ninja is not installed (pip install ninja)"
    return None


def load(name: str) -> str:
    """Load csrc/<name>, building it first if needed. Returns how it was loaded; raises on failure."""
    with _LOCK:
        if name in _LOADED:
            return _LOADED[name]
        path = prebuilt(name)
        if path is not None:
            torch.ops.load_library(str(path))
            _LOADED[name] = f"prebuilt {path}"
            return _LOADED[name]
        reason = problem(name)
        if reason is not None:
            raise RuntimeError(reason)
        _LOADED[name] = _jit_build(name)
        return _LOADED[name]


def _jit_build(name: str) -> str:
    from torch.utils import cpp_extension

    build_dir = cache_dir(name)
    previous = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch()  # the current GPU's architecture only
    start = time.perf_counter()
    try:
        with _build_lock.exclusive_build(build_dir, BUILD_WAIT_S):
            announce_build(name, build_dir, f"sm_{arch().replace('.', '')} with nvcc")
            cpp_extension.load(
                name=f"ssm_kernels_{name}", sources=[str(p) for p in sources(name)],
                build_directory=str(build_dir), extra_cflags=CXX_FLAGS, extra_cuda_cflags=NVCC_FLAGS,
                extra_include_paths=[str(csrc_dir())],
                is_python_module=False, verbose=os.environ.get("SSM_KERNELS_VERBOSE_BUILD") == "1")
    finally:
        if previous is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = previous
    return f"JIT-built for sm_{arch().replace('.', '')} in {build_dir} ({time.perf_counter() - start:.1f} s)"


def status() -> Dict[str, str]:
    """For `python -m ssm_kernels`: every csrc extension and whether it is loaded / loadable here."""
    report = {}
    for name in cuda_extension_names():
        if name in _LOADED:
            report[name] = _LOADED[name]
        elif prebuilt(name) is not None:
            report[name] = f"prebuilt: {prebuilt(name)}"
        else:
            reason = problem(name)
            report[name] = "builds on first use" if reason is None else f"unavailable: {reason}"
    return report
