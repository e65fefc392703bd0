"""Tiles, warps and grids of the Triton causal_conv1d (ssm_kernels/causal_conv1d/triton.py, LaunchConfig) on
the GPU cases of `python -m benchmarks --op causal_conv1d` ((4, 4096, 4096) width 4, SiLU, bias; the dtypes
there). The forward's settings are timed without grad, the backward's with it (the forward at its defaults)."""
from __future__ import annotations

import dataclasses
import importlib
import itertools

from ..cases import causal_conv1d as causal_conv1d_cases
from . import sweep, triton_variants

backend = importlib.import_module("ssm_kernels.causal_conv1d.triton")


def _configs(**grid):
    """{"CONFIG": backend.CONFIG with each combination of the grid's field values}, one per combination."""
    names = list(grid)
    return [{"CONFIG": dataclasses.replace(backend.CONFIG, **dict(zip(names, values)))}
            for values in itertools.product(*grid.values())]


def forward_grid(quick: bool):
    if quick:
        return _configs(fwd_block_l=(256, 512), fwd_tile=(4096, 8192), fwd_num_warps=(4, 8))
    return _configs(fwd_block_l=(128, 256, 512, 1024), fwd_tile=(4096, 8192), fwd_num_warps=(4, 8),
                    fwd_tiles_per_program=(1, 2), fwd_packed=(True, False))


def backward_grid(quick: bool):
    if quick:
        return _configs(bwd_block_l=(256, 512), bwd_tile=(2048, 4096), bwd_num_warps=(4, 8))
    return _configs(bwd_block_l=(128, 256, 512), bwd_tile=(2048, 4096), bwd_num_warps=(4, 8),
                    bwd_programs_per_sm=(2, 4), bwd_packed=(True, False))


def _label(settings: dict) -> dict:
    """The fields a setting changes, for the printed line."""
    config = settings["CONFIG"]
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(backend.CONFIG, f.name)}


def run(device, quick: bool, only):
    for case, variant in triton_variants(causal_conv1d_cases, device, only):
        print(f"{case.name}: forward", flush=True)
        sweep(backend, variant, device, forward_grid(quick), quick, modes=("fwd",), label=_label)
        print(f"{case.name}: forward+backward", flush=True)
        sweep(backend, variant, device, backward_grid(quick), quick, modes=("fwd+bwd",), label=_label)
