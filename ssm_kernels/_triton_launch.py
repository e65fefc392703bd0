"""Triton launches that fit the GPU's shared memory (imported by the Triton backends only)."""
from __future__ import annotations

import os
from typing import Dict

from triton.runtime.errors import OutOfResources

DEFAULT_STAGES = 3  # Triton's software-pipelining depth on NVIDIA GPUs when num_stages is not given
_fitting_stages: Dict[tuple, int] = {}  # (kernel, constexprs and options) -> most stages that fitted


def launch_fitting_shared_memory(kernel, grid, *args, num_stages=DEFAULT_STAGES, **kwargs):
    """kernel[grid](*args, **kwargs) with num_stages of pipelining (Triton's default unless given), or with
    fewer where the compiled kernel needs more shared memory than the GPU has. Pipelining buffers grow with the
    tiles: Triton 3.6 asks 313 KB for the SSD backward's (128, 128) fp32 state tiles at 3 stages (an H100 / H200
    block has 227 KB), 214 KB at 2. OutOfResources is raised when the compiled kernel is loaded, before it runs,
    so a retry is safe. kwargs: the kernel's constexprs and launch options (hashable)."""
    key = (kernel, num_stages, tuple(sorted(kwargs.items())))
    for stages in range(_fitting_stages.get(key, num_stages), 0, -1):
        try:
            result = kernel[grid](*args, num_stages=stages, **kwargs)
        except OutOfResources:
            if stages == 1:
                raise
            continue
        _fitting_stages[key] = stages
        return result


def fast_math(x) -> bool:
    """The FAST constexpr of kernels using _triton_math.exp2: native GPU runs take the approximate
    ex2.approx.ftz through inline PTX; the interpreter cannot run PTX, so it takes tl.exp2."""
    return x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "True")
