"""Compile a csrc/<name> CUDA extension's kernels for a GPU target without a GPU, and report each kernel's
registers, spills and stack frame (ptxas -v), optionally its SASS.

    python -m tests.csrc_compile linear_scan [--arch 90] [--sass DIR]

The flags are the JIT build's (ssm_kernels._cuda_ext.NVCC_FLAGS, C++20 as torch.utils.cpp_extension builds) with
torch's include paths; a CPU build of torch lacks one generated CUDA header (c10/cuda/impl/cuda_cmake_macros.h),
which is written to a scratch folder here.
Only the .cu files compile (objects, no link): what finds a kernel that spills, keeps arrays in local memory
(a stack frame: an array indexed by a runtime value) or fails to compile, before any GPU time is spent.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

from ssm_kernels import _cuda_ext

_MACROS = "c10/cuda/impl/cuda_cmake_macros.h"
_ENTRY = re.compile(r"Compiling entry function '(\S+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")


def include_flags(scratch: Path) -> List[str]:
    """-I flags: csrc/, torch's headers and, where torch lacks it, a stand-in for its CUDA macros header."""
    from torch.utils.cpp_extension import include_paths
    paths = [str(_cuda_ext.csrc_dir())] + include_paths()
    if not any((Path(p) / _MACROS).exists() for p in paths):
        stub = scratch / _MACROS
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        paths.append(str(scratch))
    return [f"-I{p}" for p in paths]


def demangle(names: List[str]) -> List[str]:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def usage(ptxas_log: str) -> List[str]:
    """One line per kernel: registers, spill stores / loads and stack frame bytes, then its name."""
    rows, names = [], []
    for line in ptxas_log.splitlines():
        entry, frame, used = _ENTRY.search(line), _FRAME.search(line), _USED.search(line)
        if entry:
            names.append(entry.group(1))
            rows.append({})
        elif frame and rows:
            rows[-1].update(stack=int(frame.group(1)), spill_st=int(frame.group(2)), spill_ld=int(frame.group(3)))
        elif used and rows:
            rows[-1]["registers"] = int(used.group(1))
    return [f"{r.get('registers', '?'):>4} regs  spills {r.get('spill_st', 0)}/{r.get('spill_ld', 0)} B  "
            f"stack {r.get('stack', 0)} B  {name}" for r, name in zip(rows, demangle(names))]


def cuobjdump(nvcc: str) -> str:
    """cuobjdump on PATH, beside nvcc, or the copy Triton's NVIDIA backend ships (a toolkit may lack it)."""
    found = shutil.which("cuobjdump") or shutil.which("cuobjdump", path=str(Path(nvcc).resolve().parent))
    if found:
        return found
    import triton
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if bundled.exists():
        return str(bundled)
    raise SystemExit("--sass needs cuobjdump (CUDA toolkit or Triton's NVIDIA backend)")


def compile_extension(name: str, arch: str, sass_dir: Path = None) -> int:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("nvcc not on PATH", file=sys.stderr)
        return 2
    status = 0
    with tempfile.TemporaryDirectory() as scratch:
        flags = include_flags(Path(scratch))
        for source in (s for s in _cuda_ext.sources(name) if s.suffix == ".cu"):
            obj = Path(scratch) / (source.stem + ".o")
            cmd = [nvcc, "-std=c++20", f"-arch=sm_{arch}", *_cuda_ext.NVCC_FLAGS, "-Xptxas", "-v",
                   "-D_GLIBCXX_USE_CXX11_ABI=1", *flags, "-c", str(source), "-o", str(obj)]
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            print(f"== {source.relative_to(_cuda_ext.csrc_dir())} (sm_{arch}, nvcc rc {done.returncode}, "
                  f"{time.perf_counter() - start:.0f} s)")
            if done.returncode:
                errors = [line for line in done.stderr.splitlines() if "error" in line]
                print("\n".join(errors or done.stderr.splitlines()[-20:]))
                status = 1
                continue
            print("\n".join(usage(done.stderr)))
            if sass_dir is not None:
                sass_dir.mkdir(parents=True, exist_ok=True)
                sass = subprocess.run([cuobjdump(nvcc), "-sass", str(obj)], capture_output=True, text=True).stdout
                (sass_dir / (source.stem + ".sass")).write_text(sass)
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=_cuda_ext.cuda_extension_names(), help="the csrc/<name> extension")
    parser.add_argument("--arch", default="90", help="compute capability without the dot (default 90)")
    parser.add_argument("--sass", type=Path, help="write each source's SASS (cuobjdump -sass) here")
    args = parser.parse_args(argv)
    return compile_extension(args.name, args.arch, args.sass)


if __name__ == "__main__":
    sys.exit(main())
