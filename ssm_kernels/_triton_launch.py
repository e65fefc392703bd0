"""Triton launches: repeat launches straight to the compiled kernel, and launches that fit the GPU's shared memory
(imported by the Triton backends only)."""
from __future__ import annotations

import os
from typing import Dict, Tuple

import torch
import triton
from torch import Tensor
from triton.runtime.errors import OutOfResources
from triton.runtime.jit import JITFunction

# Triton versions whose compiled kernels launch as CompiledKernel.run(grid x, y, z, stream, function,
# packed_metadata, launch_metadata, enter_hook, exit_hook, *bound_args), checked natively; others take
# kernel[grid] every time.
DIRECT_LAUNCH_VERSIONS = ((3, 6),)
DIRECT_LAUNCH = (tuple(int(v) for v in triton.__version__.split(".")[:2]) in DIRECT_LAUNCH_VERSIONS
                 and os.environ.get("SSM_KERNELS_DIRECT_LAUNCH", "1") != "0")
DIRECT_CACHE_SIZE = 4096  # entries (each distinct size or stride is one); cleared when full
# launch key -> (kernel, compiled kernel, bound arguments after *args); the key names the kernel by id (a
# JITFunction hashes its source under a lock), the entry holds it so that the id is never reused
_direct: Dict[tuple, Tuple[object, object, tuple]] = {}

DEFAULT_STAGES = 3  # Triton's software-pipelining depth on NVIDIA GPUs when num_stages is not given
_fitting_stages: Dict[tuple, int] = {}  # (kernel, constexprs and options) -> most stages that fitted


class _Uncached(Exception):
    """An argument the direct launch does not key (the launch takes kernel[grid])."""


def _arg_key(arg):
    """What Triton specialises a runtime argument on, or more: an int's value (Triton: whether it is 1,
    divisible by 16, fits in 32 bits), a tensor's dtype and 16-byte alignment, a float's type."""
    cls = arg.__class__
    if cls is int or arg is None:
        return arg
    if cls is Tensor or isinstance(arg, Tensor):
        return arg.dtype, not arg.data_ptr() & 15
    if cls is bool:
        return bool, arg  # True == 1 as a key, but Triton types it i1
    if cls is float:
        return float
    raise _Uncached


def launch_key(kernel, device: int, args: tuple, kwargs: dict) -> tuple:
    """The direct launch's cache key of kernel[grid](*args, **kwargs) on `device` (raises _Uncached, or TypeError
    for an unhashable kwarg, where the launch must take kernel[grid])."""
    return (id(kernel), device, *kwargs.items(), *map(_arg_key, args))


def _hooks_set() -> bool:
    """Whether a profiler (proton, ...) watches launches: those launches take kernel[grid], which calls it."""
    runtime = triton.knobs.runtime
    return any(getattr(hook, "calls", hook) for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook))


def _globals_changed(kernel) -> bool:
    return any(globals_dict.get(name) != value for (name, _), (value, globals_dict) in kernel.used_global_vals.items())


def launch(kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs) (grid a tuple), the first time per key; after it, launches with the same
    key go to the compiled kernel directly. Triton's own path binds and specialises every argument, builds a
    cache key string and launch metadata on every call: on an H100 host, 55 us for an empty kernel of 64
    arguments, which made small calls host-bound. The key (kernel, device, kwargs, each argument's _arg_key) is
    at least as fine as Triton's specialisation, so a hit launches what kernel[grid] would. Tensors passed as
    kwargs, other argument types, launch hooks, changed globals and the interpreter take kernel[grid]."""
    if not (DIRECT_LAUNCH and isinstance(kernel, JITFunction) and grid.__class__ is tuple
            and not kernel.pre_run_hooks):
        return kernel[grid](*args, **kwargs)
    try:
        key = launch_key(kernel, torch.cuda.current_device(), args, kwargs)
        hit = _direct.get(key)
    except (_Uncached, TypeError):  # TypeError: an unhashable kwarg
        return kernel[grid](*args, **kwargs)
    if hit is not None and not _hooks_set() and not _globals_changed(kernel):
        _, compiled, tail = hit
        device = key[1]
        compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1,
                     torch._C._cuda_getCurrentRawStream(device), compiled.function, compiled.packed_metadata,
                     None, None, None, *args, *tail)
        return compiled
    compiled = kernel[grid](*args, **kwargs)
    if any(isinstance(value, torch.Tensor) for value in kwargs.values()) or not hasattr(compiled, "packed_metadata"):
        return compiled
    binder = kernel.device_caches[key[1]][-1]
    bound_args = tuple(binder(*args, **kwargs)[0].values())
    if len(_direct) >= DIRECT_CACHE_SIZE:
        _direct.clear()
    _direct[key] = (kernel, compiled, bound_args[len(args):])
    return compiled


def launch_fitting_shared_memory(kernel, grid, *args, num_stages=DEFAULT_STAGES, **kwargs):
    """kernel[grid](*args, **kwargs) with num_stages of pipelining (Triton's default unless given), or with
    fewer where the compiled kernel needs more shared memory than the GPU has. Pipelining buffers grow with the
    tiles: Triton 3.6 asks 313 KB for the SSD backward's (128, 128) fp32 state tiles at 3 stages (an H100 / H200
    block has 227 KB), 214 KB at 2. OutOfResources is raised when the compiled kernel is loaded, before it runs,
    so a retry is safe. kwargs: the kernel's constexprs and launch options (hashable)."""
    key = (kernel, num_stages, tuple(sorted(kwargs.items())))
    for stages in range(_fitting_stages.get(key, num_stages), 0, -1):
        try:
            result = launch(kernel, grid, *args, num_stages=stages, **kwargs)
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
