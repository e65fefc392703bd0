"""causal_conv1d Triton backend: tile boundaries, the unmasked interior path, the persistent backward grid
(several units per program, several tiles per unit, a grid that does not divide the work), tiles shorter
than the width. Each case shrinks the module's block-size constants so that small shapes cross many tiles."""
import pytest
import torch

from ssm_kernels import causal_conv1d
from tests.causal_conv1d.test_causal_conv1d import make_inputs, reference
from tests.helpers import check_parity


@pytest.fixture
def conv_module():
    from ssm_kernels.causal_conv1d import triton as module
    return module


def small_tiles(monkeypatch, module, block_l=16, tile=256, cl_block_d=16, **extra):
    """Forward and backward tiles of `tile` elements, at most `block_l` along L (channel-first) or
    `cl_block_d` along D (channel-last)."""
    for name, value in dict(FWD_BLOCK_L=block_l, BWD_BLOCK_L=block_l, FWD_TILE=tile, BWD_TILE=tile,
                            CL_BLOCK_D=cl_block_d, **extra).items():
        monkeypatch.setattr(module, name, value)


def parity(inputs, dtype=torch.float32, activation="silu"):
    width = inputs["weight"].shape[1]
    grads = ["x", "weight"] + (["bias"] if inputs["bias"] is not None else [])
    grads += ["initial_states"] if inputs["initial_states"] is not None and width > 1 else []
    check_parity(lambda **kw: causal_conv1d(**kw, backend="triton"), reference, inputs, dtype, grads,
                 activation=activation, return_final_states=True)


@pytest.mark.parametrize("layout", ["channel_first", "channel_last"])
@pytest.mark.parametrize("dim", [32, 21])  # a multiple of BLOCK_D (interior tiles unmasked) or not
@pytest.mark.parametrize("width,seq", [(4, False), (4, True), (1, False), (8, True), (3, True)])
def test_tile_edges_and_interior(triton_device, conv_module, monkeypatch, layout, dim, width, seq):
    """L = 103 over 16-position tiles: first tile (initial states), interior tiles (the unmasked path when D
    is a multiple of BLOCK_D), a partial last tile; seq_idx boundaries inside and across tiles."""
    small_tiles(monkeypatch, conv_module)
    inputs = make_inputs(2, dim, 103, width, torch.float32, triton_device, init=True, seq=seq,
                         transposed=layout == "channel_last")
    parity(inputs)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # 16-byte groups of 4 / 8 elements
@pytest.mark.parametrize("width", [2, 4, 6, 8])  # W - 1 within one group, or (fp32, W > 5) two groups back
def test_forward_packed_taps(triton_device, conv_module, monkeypatch, packed, dtype, width):
    """The forward's packed taps (aligned group loads, shifted taps picked in registers) against the
    unaligned-tap path, first / interior / last tiles, initial states."""
    small_tiles(monkeypatch, conv_module, FWD_PACKED=packed)
    inputs = make_inputs(2, 32, 103, width, dtype, triton_device, init=True)
    parity(inputs, dtype)


@pytest.mark.parametrize("programs,units_per_program", [(None, 8), (None, 1), (1, 8), (5, 1), (64, 8)])
def test_persistent_grid(triton_device, conv_module, monkeypatch, programs, units_per_program):
    """Grids of 1, 3 (the interpreter's default), 5 and more programs than units; units of one tile and of
    all a row's tiles (the dweight / dbias partial sums then span several tiles)."""
    small_tiles(monkeypatch, conv_module, BWD_TARGET_PROGRAMS=programs, BWD_UNITS_PER_PROGRAM=units_per_program)
    inputs = make_inputs(3, 32, 77, 4, torch.float32, triton_device, init=True, seq=True)
    parity(inputs)


@pytest.mark.parametrize("tiles_per_program", [2, 3])
def test_forward_tiles_per_program(triton_device, conv_module, monkeypatch, tiles_per_program):
    """Several L tiles per forward program, the last program running past L."""
    small_tiles(monkeypatch, conv_module, FWD_TILES_PER_PROGRAM=tiles_per_program)
    inputs = make_inputs(2, 32, 100, 4, torch.float32, triton_device, init=True)
    parity(inputs)


@pytest.mark.parametrize("length", [3, 11, 40])
def test_tiles_shorter_than_width(triton_device, conv_module, monkeypatch, length):
    """BLOCK_L = 2 < W - 1 = 7: the halo and dinitial_states read g past the tile; L = 3 < W - 1 too."""
    small_tiles(monkeypatch, conv_module, MAX_BLOCK_L=2)
    inputs = make_inputs(2, 16, length, 8, torch.float32, triton_device, init=True, seq=length > 3)
    parity(inputs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["silu", None])
def test_low_precision_interior(triton_device, conv_module, monkeypatch, dtype, activation):
    """The unmasked interior path in half precision, with and without SiLU, no bias."""
    small_tiles(monkeypatch, conv_module)
    inputs = make_inputs(2, 32, 96, 4, dtype, triton_device, bias=False, init=True)
    parity(inputs, dtype, activation)


def test_default_blocks_and_grid(triton_device, conv_module):
    """The default tiles: channel-first long side along L, channel-last along D; the persistent grid size."""
    assert conv_module._blocks(4096, 4096, False, conv_module.FWD_TILE, conv_module.FWD_BLOCK_L,
                               conv_module.CL_BLOCK_D) == (conv_module.FWD_TILE // conv_module.FWD_BLOCK_L,
                                                           conv_module.FWD_BLOCK_L)
    block_d, block_l = conv_module._blocks(4096, 4096, True, conv_module.BWD_TILE, conv_module.BWD_BLOCK_L,
                                           conv_module.CL_BLOCK_D)
    assert block_d == conv_module.CL_BLOCK_D and block_d * block_l == conv_module.BWD_TILE
    programs = conv_module._bwd_programs(torch.device(triton_device))
    if triton_device.type == "cpu":
        assert programs == conv_module.INTERPRET_PROGRAMS
    else:
        sms = torch.cuda.get_device_properties(triton_device).multi_processor_count
        assert programs == sms * conv_module.BWD_PROGRAMS_PER_SM
