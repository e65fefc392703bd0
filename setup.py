"""Packaging. Pure Python by default: nothing is compiled at install time.

SSM_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation -e .   builds the csrc/ extensions ahead of
time (for the architectures in TORCH_CUDA_ARCH_LIST, else the visible GPU's); without it they are built
on first use by ssm_kernels._cuda_ext.
"""
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
CSRC_SUFFIXES = ("*.cu", "*.cpp", "*.h", "*.cuh")


def cuda_extensions():
    if os.environ.get("SSM_KERNELS_BUILD_CUDA", "0") != "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    if "TORCH_CUDA_ARCH_LIST" not in os.environ and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    extensions = []
    # csrc/_* hold shared headers; csrc/cpu is the CPU kernels' extension, built on first use (ssm_kernels._cpu_ext)
    for op_dir in sorted(p for p in (ROOT / "csrc").iterdir()
                         if p.is_dir() and not p.name.startswith("_") and p.name != "cpu"):
        sources = sorted(str(p.relative_to(ROOT)) for s in ("*.cu", "*.cpp") for p in op_dir.glob(s))
        if sources:
            extensions.append(CUDAExtension(
                name=f"ssm_kernels._C_{op_dir.name}", sources=sources, include_dirs=[str(ROOT / "csrc")],
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]}))
    return extensions, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extensions()
setup(
    packages=find_packages(include=["ssm_kernels*", "ssm_universal*", "benchmarks*"]) + ["ssm_kernels._csrc"],
    package_dir={"ssm_kernels._csrc": "csrc"},
    package_data={"ssm_kernels._csrc": [f"*/{s}" for s in CSRC_SUFFIXES]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
