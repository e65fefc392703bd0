"""Tiles, warps and grids of the Triton causal_conv1d (ssm_kernels/causal_conv1d/triton.py, LaunchConfig) on
the GPU cases of `python -m benchmarks --op causal_conv1d` ((4, 4096, 4096), widths 2-8, SiLU, bias, both
layouts). The forward's settings are timed without grad; the backward's as the backward launch alone replayed
from a CUDA graph ("bwd kernel"): forward+backward calls of these sizes are host-bound on some hosts, which
would hide the kernels' differences. Channel-last cases sweep the channel-last tiles of both (and the
backward's row parts) instead."""
from __future__ import annotations

import dataclasses
import importlib
import itertools

import torch
import triton

from ..cases import causal_conv1d as causal_conv1d_cases
from ..core import time_ms
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


def channel_last_forward_grid(quick: bool):
    """Channel-last forward tiles: cl_block_d channels (the contiguous axis) by fwd_tile // cl_block_d rows,
    per-tap or packed (cl_fwd_packed: groups of E rows moved into threads by the compiler)."""
    if quick:
        return _configs(cl_block_d=(64, 128), fwd_tile=(2048, 4096))
    return _configs(cl_block_d=(64, 128, 256), fwd_tile=(2048, 4096, 8192), fwd_num_warps=(4, 8),
                    cl_fwd_packed=(False, True))


# Row-part backward tiles (cl_bwd_rows E, cl_rows_block_d, cl_bwd_tile, bwd_num_warps) without spills and with
# two or more programs per SM, Triton 3.6 for sm_90 offline, bf16 W4 (sm90_causal_conv1d_rows_registers.txt):
# E = BLOCK_L (one group per tile: a part per row, shifts between parts are register references) and E < BLOCK_L.
_CL_ROW_TILES = [(16, 64, 1024, 2), (16, 128, 2048, 2), (16, 128, 2048, 4), (16, 256, 4096, 4), (16, 256, 4096, 8),
                 (8, 64, 512, 2), (8, 128, 1024, 4), (8, 256, 2048, 2), (8, 256, 2048, 4), (8, 512, 4096, 4),
                 (8, 512, 4096, 8), (4, 256, 1024, 4), (8, 64, 4096, 8), (4, 64, 2048, 8)]


# Packed channel-last backward tiles (cl_bwd_packed; cl_bwd_block_d, cl_bwd_tile, bwd_num_warps) without spills,
# offline as above: 128 x 16 at 4 warps 96 registers, 128 x 32 at 4 warps 128, at 8 warps 180, 256 x 16 at 8 warps
# 100, 64 x 32 at 4 warps 168 (64 x 64: 255 with spills at 4 warps, 255 at 8).
_CL_PACKED_TILES = [(128, 2048, 4), (128, 4096, 4), (128, 4096, 8), (256, 4096, 8), (64, 2048, 4)]


def channel_last_backward_grid(quick: bool):
    if quick:
        return _configs(cl_bwd_rows=(0, 8), cl_bwd_block_d=(32, 64), cl_bwd_tile=(2048, 4096))
    rows = [config for e, block_d, tile, warps in _CL_ROW_TILES
            for config in _configs(cl_bwd_rows=(e,), cl_rows_block_d=(block_d,), cl_bwd_tile=(tile,),
                                   bwd_num_warps=(warps,), bwd_programs_per_sm=(8, 16))]
    packed = [config for block_d, tile, warps in _CL_PACKED_TILES
              for config in _configs(cl_bwd_rows=(0,), cl_bwd_packed=(True,), cl_bwd_block_d=(block_d,),
                                     cl_bwd_tile=(tile,), bwd_num_warps=(warps,), bwd_programs_per_sm=(8, 16))]
    return (_configs(cl_bwd_rows=(0,), cl_bwd_block_d=(32, 64, 128), cl_bwd_tile=(2048, 4096),
                     bwd_programs_per_sm=(4, 8)) + rows + packed)


def backward_kernel_ms(variant, device, quick: bool, modes) -> dict:
    """{"bwd kernel": ms}: the backward launch alone (its kernel and the partial sums' reduction) at the
    backend's current CONFIG, from a CUDA graph on a GPU (no host time)."""
    x, weight, bias = variant.grad_inputs
    dout = torch.randn_like(x)

    def call():
        backend._backward_launch(x, weight, bias, None, None, dout, True, False, backend.CONFIG)

    if device.type == "cuda":
        return {"bwd kernel": triton.testing.do_bench_cudagraph(call)}
    return {"bwd kernel": time_ms(call, device, quick)}


def _label(settings: dict) -> dict:
    """The fields a setting changes, for the printed line."""
    config = settings["CONFIG"]
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(backend.CONFIG, f.name)}


def run(device, quick: bool, only):
    for case, variant in triton_variants(causal_conv1d_cases, device, only):
        channel_last = "channel-last" in case.name
        print(f"{case.name}: forward", flush=True)
        grid = channel_last_forward_grid(quick) if channel_last else forward_grid(quick)
        sweep(backend, variant, device, grid, quick, modes=("fwd",), label=_label)
        print(f"{case.name}: backward kernel", flush=True)
        grid = channel_last_backward_grid(quick) if channel_last else backward_grid(quick)
        sweep(backend, variant, device, grid, quick, modes=("bwd kernel",), label=_label, timer=backward_kernel_ms)
