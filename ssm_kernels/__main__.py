"""`python -m ssm_kernels`: versions, and per op which backends exist and which one would run, and why."""
from __future__ import annotations

import importlib.util
import platform

import torch

from . import _cpu_ext, _cuda_ext, _dispatch


def _versions() -> list:
    lines = [f"ssm_kernels {__import__('ssm_kernels').__version__}", f"python {platform.python_version()}",
             f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})"]
    if importlib.util.find_spec("triton") is not None:
        import triton
        interp = " [TRITON_INTERPRET=1: CPU interpreter]" if _dispatch.triton_interpreter_on() else ""
        lines.append(f"triton {triton.__version__}{interp}")
    else:
        lines.append("triton: not installed")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"GPU: {props.name}, sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
                     f"{props.total_memory / 2**30:.0f} GiB")
    else:
        lines.append("GPU: none (CUDA not available)")
    cuda_home = _cuda_ext.cuda_home()
    lines.append(f"CUDA toolkit for csrc/: {cuda_home or 'not found'}")
    for name, state in _cuda_ext.status().items():
        lines.append(f"  csrc/{name}: {state}")
    lines.append(f"CPU C++ kernels (csrc/cpu: the 'cpp' backend, the default for CPU tensors of the ops that have it): "
                 f"{_cpu_ext.status()}")
    return lines


def main() -> None:
    _dispatch.ensure_registered()
    print("\n".join(_versions()))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print()
    for op in _dispatch.OPS:
        backends = _dispatch.implemented_backends(op)
        print(f"{op}: implemented backends: {', '.join(backends) if backends else 'none yet'}")
        if not backends:
            continue
        for device in devices:
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            choice, why = _dispatch.explain(op, device, dtype)
            print(f"  {device:4s} {str(dtype).replace('torch.', ''):8s} -> {choice:6s} ({why})")
        if "cuda" not in devices:
            print(f"  cuda tensors -> not available here (no CUDA GPU)")
        here = "cuda" if torch.cuda.is_available() else "cpu"
        for backend, problem in _dispatch.available_backends(op).items():
            state = "can run" if problem is None else f"cannot run: {problem}"
            print(f"  {backend:6s} on {here}: {state}")


if __name__ == "__main__":
    main()
