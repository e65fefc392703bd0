"""Triton backend of causal_conv1d: a streaming forward kernel (_triton_fwd.py) and a persistent backward kernel
(_triton_bwd.py); here their launch settings, launchers and autograd wiring.

Layout: x (B, D, L) with any strides. Both the channel-first layout (L contiguous) and the channel-last one
(D contiguous: Mamba's in_proj output viewed as (B, D, L)) are read in place; each kernel takes a
(BLOCK_D, BLOCK_L) tile whose long side follows the contiguous axis (Triton specialises a stride of 1, so
the loads are coalesced along it). Outputs y / dx get x's layout.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from .._autograd import define_custom_op
from .._triton_launch import launch
from .._utils import (cdiv, in_dtype, is_dense, multiprocessor_count, new_output, new_output_like, next_power_of_2,
                      sum_over)
from ._common import gradients, save_for_backward
from ._triton_bwd import _bwd_kernel
from ._triton_fwd import _fwd_kernel


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and grids of both kernels (python -m benchmarks tune causal_conv1d sweeps them; tests shrink
    them with `configured` to reach tile edges at small sizes).

    Channel-first tiles (L contiguous): BLOCK_L = min(next_pow2(L), *_block_l, max_block_l) positions and
    BLOCK_D = *_tile // BLOCK_L channels. Channel-last tiles (D contiguous): BLOCK_D = min(next_pow2(D),
    cl_block_d) channels and BLOCK_L = *_tile // BLOCK_D positions."""
    max_block_l: int = 1024  # cap on BLOCK_L of both kernels
    cl_block_d: int = 128
    fwd_block_l: int = 256
    fwd_tile: int = 4096
    fwd_num_warps: int = 4
    fwd_tiles_per_program: int = 1  # consecutive L tiles per forward program
    # Channel-first forward without seq_idx: read the tile and the tile shifted back by one 16-byte vector (two
    # for W - 1 > the vector) as aligned vectors and pick the shifted taps in registers, instead of W - 1
    # unaligned (scalar) L1 re-reads of the tile.
    fwd_packed: bool = True
    # Channel-first backward without seq_idx: the same aligned packed taps, g recomputed on the tile and on the
    # tile one vector ahead (no scratch slot, no barriers), the shifted g windows picked in registers; the
    # channel-last backward without seq_idx does the same on cl_bwd_rows row parts per group (rows loaded apart).
    bwd_packed: bool = True
    # E of the row parts (0: the channel-last backward takes the scratch path, or the packed one below), on tiles
    # of cl_rows_block_d channels and cl_bwd_tile elements. H100, B4 D4352 L4096 bf16 W4, the kernel alone:
    # E 16 on 256 x 16 tiles 252 us, 128 x 16 at 2 warps 248-262; the scratch path's best (32 x 64) 703 us.
    cl_bwd_rows: int = 16
    cl_rows_block_d: int = 256
    # Channel-last tiles through the packed paths too (no seq_idx): the loads stay coalesced along D, and the
    # compiler moves each tile's E-row groups into threads (a layout conversion through shared memory) for the
    # packed arithmetic, then back for the store: what causal-conv1d's channel-last kernels do by hand.
    cl_fwd_packed: bool = False
    cl_bwd_packed: bool = False
    bwd_block_l: int = 256
    bwd_tile: int = 2048
    # Channel-last backward tiles: cl_bwd_block_d channels, cl_bwd_tile elements (H200, (4, 4096, 4096) bf16 W4,
    # the kernel alone: 64 x 64 at 8 programs per SM 722 us, 128 x 16 at 4 per SM 1436 us).
    cl_bwd_block_d: int = 64
    cl_bwd_tile: int = 4096
    bwd_num_warps: int = 4
    # Persistent backward grid: bwd_programs_per_sm programs per SM on the GPU, interpret_programs on the CPU
    # interpreter; bwd_programs (when set) overrides both.
    bwd_programs_per_sm: int = 8
    interpret_programs: int = 3
    bwd_programs: Optional[int] = None
    # Units (dweight / dbias partial sums) per program: more balances the grid, fewer means fewer partials.
    bwd_units_per_program: int = 8


CONFIG = LaunchConfig()  # what calls use; replaced whole (it is immutable), by `configured` or a tuner


@contextlib.contextmanager
def configured(**changes) -> Iterator[LaunchConfig]:
    """CONFIG with `changes` (LaunchConfig fields) inside the block, the previous one after it."""
    global CONFIG
    previous = CONFIG
    CONFIG = dataclasses.replace(CONFIG, **changes)
    try:
        yield CONFIG
    finally:
        CONFIG = previous


def _channel_last(x: Tensor) -> bool:
    return x.stride(1) == 1 and x.stride(2) != 1 and x.shape[2] > 1


def _like_layout(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A fresh (NaN-poisoned in tests) tensor of x's shape and layout (channel-first or channel-last)."""
    batch, dim, length = x.shape
    if _channel_last(x):
        return new_output((batch, length, dim), dtype, x.device).transpose(1, 2)
    return new_output((batch, dim, length), dtype, x.device)


def _buffer_like(x: Tensor) -> Tensor:
    """y or dx: in x's memory order where x is dense, else as _like_layout. The Mamba block's conv input is a
    channel slice of in_proj's (2 d_inner, B, L)-ordered output: in_proj's backward reads dx in place, and y in
    that order makes the selective scan's output (which follows its input's order) one (d_inner, B L) matrix
    for out_proj's weight gradient."""
    return new_output_like(x) if is_dense(x) else _like_layout(x, x.dtype)


@functools.lru_cache(maxsize=None)
def _blocks(dim: int, length: int, channel_last: bool, tile: int, block_l: int, cl_block_d: int
            ) -> Tuple[int, int]:
    """(BLOCK_D, BLOCK_L): `tile` elements, the long side along the contiguous axis."""
    if channel_last:
        block_d = min(next_power_of_2(dim), cl_block_d)
        block_l = max(1, min(next_power_of_2(length), tile // block_d))
    else:
        block_l = min(next_power_of_2(length), block_l)
        block_d = max(1, min(next_power_of_2(dim), tile // block_l))
    return block_d, block_l


def _bwd_programs(device: torch.device, config: LaunchConfig) -> int:
    """The persistent backward grid size."""
    if config.bwd_programs is not None:
        return config.bwd_programs
    if device.type != "cuda":
        return config.interpret_programs
    return multiprocessor_count(device) * config.bwd_programs_per_sm


def _strides3(t: Optional[Tensor]) -> Tuple[int, int, int]:
    return (0, 0, 0) if t is None else t.stride()


def _pack_e(x: Tensor, width: int, seq_idx: Optional[Tensor], block_l: int, enabled: bool,
            channel_last_enabled: bool) -> int:
    """E, the elements of one 16-byte vector (8 bf16 / fp16, 4 fp32), when the packed taps apply: no seq_idx,
    BLOCK_L a multiple of E, and channel-first (L contiguous: the groups are vectors) or channel-last with
    `channel_last_enabled` (groups of E rows); else 0 (the per-tap path)."""
    pack_e = 16 // x.element_size()
    layout_ok = x.stride(2) == 1 or (channel_last_enabled and _channel_last(x))
    if enabled and layout_ok and width > 1 and seq_idx is None and block_l % pack_e == 0:
        return pack_e
    return 0


def _row_parts(x: Tensor, width: int, seq_idx: Optional[Tensor], config: LaunchConfig) -> int:
    """E, the row parts per group of the channel-last backward's packed path (config.cl_bwd_rows) when it
    applies: channel-last, no seq_idx, W - 1 within two groups; else 0."""
    rows = config.cl_bwd_rows
    if (config.bwd_packed and rows > 0 and width > 1 and seq_idx is None and _channel_last(x)
            and width - 1 <= 2 * rows):
        return rows
    return 0


def forward_blocks(x: Tensor, config: LaunchConfig) -> Tuple[int, int]:
    """(BLOCK_D, BLOCK_L) of the forward kernel for x (B, D, L)."""
    return _blocks(x.shape[1], x.shape[2], _channel_last(x), config.fwd_tile,
                   min(config.fwd_block_l, config.max_block_l), config.cl_block_d)


def backward_blocks(x: Tensor, config: LaunchConfig, rows: int = 0) -> Tuple[int, int]:
    """(BLOCK_D, BLOCK_L) of the backward kernel for x (B, D, L); with `rows` row parts per group (channel-last,
    _row_parts), cl_rows_block_d channels and a multiple of `rows` positions."""
    if rows:
        block_d, block_l = _blocks(x.shape[1], x.shape[2], True, config.cl_bwd_tile, 0, config.cl_rows_block_d)
        return block_d, max(block_l, rows)
    channel_last = _channel_last(x)
    return _blocks(x.shape[1], x.shape[2], channel_last, config.cl_bwd_tile if channel_last else config.bwd_tile,
                   min(config.bwd_block_l, config.max_block_l), config.cl_bwd_block_d)


def _forward_launch(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
                    initial_states: Optional[Tensor], silu: bool, config: LaunchConfig) -> Tensor:
    batch, dim, length = x.shape
    width = weight.shape[1]
    y = _buffer_like(x)
    block_d, block_l = forward_blocks(x, config)
    tiles = max(1, min(config.fwd_tiles_per_program, cdiv(length, block_l)))
    pack_e = _pack_e(x, width, seq_idx, block_l, config.fwd_packed, config.cl_fwd_packed)
    reach = width - 1 if pack_e == 0 else pack_e * cdiv(width - 1, pack_e)
    grid = (cdiv(length, block_l * tiles), cdiv(dim, block_d), batch)
    launch(
        _fwd_kernel, grid,
        x, weight, x if bias is None else bias, x if seq_idx is None else seq_idx,
        x if initial_states is None else initial_states, y,
        dim, length, *x.stride(), *weight.stride(), *_strides3(initial_states),
        *((0, 0) if seq_idx is None else seq_idx.stride()), *y.stride(),
        W=width, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, HAS_INIT=initial_states is not None,
        SILU=silu, EVEN_D=dim % block_d == 0, PACK_E=pack_e, REACH=reach, BLOCK_D=block_d, BLOCK_L=block_l,
        TILES=tiles,
        num_warps=config.fwd_num_warps)
    return y


def _backward_launch(x, weight, bias, seq_idx, initial_states, dout, silu, need_dinit, config: LaunchConfig):
    batch, dim, length = x.shape
    width = weight.shape[1]
    channel_last = _channel_last(x)
    rows = _row_parts(x, width, seq_idx, config)
    block_d, block_l = backward_blocks(x, config, rows)
    w_pad = next_power_of_2(width)
    n_dblk = cdiv(dim, block_d)
    n_ltiles = cdiv(length, block_l)
    programs = _bwd_programs(x.device, config)
    # units of consecutive L tiles (one dweight/dbias partial sum each), about bwd_units_per_program per program
    tiles_per_chunk = max(1, min(n_ltiles, (batch * n_dblk * n_ltiles) // (programs * config.bwd_units_per_program)))
    n_lchunks = cdiv(n_ltiles, tiles_per_chunk)
    tiles_per_chunk = cdiv(n_ltiles, n_lchunks)  # even chunks
    n_units = batch * n_dblk * n_lchunks
    programs = max(1, min(programs, n_units))
    dx = _buffer_like(x)
    # dinit only where the initial states take a gradient (else no buffer, no memset per backward)
    dinit = (new_output((batch, dim, width - 1), x.dtype if initial_states is None else initial_states.dtype,
                        x.device) if need_dinit else None)
    # each unit's dweight (D, W) and dbias (D,) partial sums in one row: one buffer, one sum over the units
    parts = new_output((batch * n_lchunks, dim * (width + 1)), torch.float32, x.device)
    pack_e = rows or _pack_e(x, width, seq_idx, block_l, config.bwd_packed, config.cl_bwd_packed)
    # BACK / AHEAD: how far before / after a tile its loads reach (the unmasked path needs both inside [0, L))
    if pack_e:
        back = ahead = pack_e * cdiv(width - 1, pack_e)
    else:
        back, ahead = width - 1, w_pad
    # g scratch of the per-tap path, one slot per program, laid out like x's tiles (the contiguous axis stays
    # contiguous); the packed path has none
    scratch = parts if pack_e else torch.empty((programs * block_d * (block_l + w_pad),), dtype=torch.float32,
                                               device=x.device)
    scr_d, scr_l = (1, block_d) if channel_last else (block_l + w_pad, 1)
    has_init = initial_states is not None and width > 1
    launch(
        _bwd_kernel, (programs,),
        x, weight, x if bias is None else bias, x if seq_idx is None else seq_idx,
        x if initial_states is None else initial_states, dout, dx, x if dinit is None else dinit, parts, scratch,
        dim, length, n_dblk, n_ltiles, n_lchunks, tiles_per_chunk, n_units, programs,
        *x.stride(), *weight.stride(), *_strides3(initial_states),
        *((0, 0) if seq_idx is None else seq_idx.stride()), *dout.stride(), *dx.stride(), *_strides3(dinit),
        scr_d, scr_l,
        W=width, W_PAD=w_pad, INIT_PAD=next_power_of_2(max(width - 1, 1)),
        HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, HAS_INIT=has_init, SILU=silu,
        EVEN_D=dim % block_d == 0, PACK_E=pack_e, ROWS=rows > 0, BACK=back, AHEAD=ahead, BLOCK_D=block_d,
        BLOCK_L=block_l, num_warps=config.bwd_num_warps)
    if dinit is not None and not has_init:
        dinit.zero_()  # W == 1: an empty state, nothing to write
    return dx, sum_over(parts, 0), dinit


# --- autograd wiring -----------------------------------------------------------------------------------
def _forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
             initial_states: Optional[Tensor], silu: bool) -> Tensor:
    return _forward_launch(x, weight, bias, seq_idx, initial_states, silu, CONFIG)


def _forward_fake(x, weight, bias, seq_idx, initial_states, silu):
    return _buffer_like(x)


def _backward_eager(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
                    initial_states: Optional[Tensor], dout: Tensor, silu: bool):
    """(dx, dweight, dbias, dinitial_states or None): dweight and dbias views of one buffer."""
    dx, parts, dinit = _backward_launch(x, weight, bias, seq_idx, initial_states, dout, silu,
                                        initial_states is not None, CONFIG)
    return (dx, *_weight_and_bias(parts, weight, bias), dinit)


def _backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
              initial_states: Optional[Tensor], dout: Tensor, silu: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward op's body: its outputs may not alias each other, nor be None."""
    dx, dw, db, dinit = _backward_eager(x, weight, bias, seq_idx, initial_states, dout, silu)
    return dx, dw, db.clone(), x.new_empty((0,)) if dinit is None else dinit


def _weight_and_bias(parts: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """dweight (D, W) and dbias (D,) in weight's / bias's dtypes from their fp32 sums in one row (D W + D,):
    one cast where the two dtypes agree."""
    dim, width = weight.shape
    db_dtype = weight.dtype if bias is None else bias.dtype
    if db_dtype == weight.dtype:
        parts = in_dtype(parts, weight.dtype)
    return in_dtype(parts[:dim * width].view(dim, width), weight.dtype), in_dtype(parts[dim * width:], db_dtype)


def _backward_fake(x, weight, bias, seq_idx, initial_states, dout, silu):
    batch, dim, length = x.shape
    dx = _buffer_like(x)
    return (dx, weight.new_empty(weight.shape), (weight if bias is None else bias).new_empty((dim,)),
            x.new_empty((0,)) if initial_states is None
            else initial_states.new_empty((batch, dim, weight.shape[1] - 1)))


_run = define_custom_op("causal_conv1d_triton", _forward, _forward_fake, _backward, _backward_fake,
                        save_for_backward, gradients, eager_backward=_backward_eager)


# --- backend function ----------------------------------------------------------------------------------
def causal_conv1d_triton(x, weight, bias=None, activation=None, seq_idx=None, initial_states=None):
    """Triton backend of ssm_kernels.causal_conv1d (arguments already validated). Returns y (B, D, L)."""
    return _run(x, weight, bias, seq_idx, initial_states, activation == "silu")
