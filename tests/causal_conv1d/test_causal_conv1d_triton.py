"""causal_conv1d Triton backend: tile boundaries, the unmasked interior path, the persistent backward grid
(several units per program, several tiles per unit, a grid that does not divide the work), tiles shorter
than the width. Each case shrinks the launch configuration's tiles so that small shapes cross many tiles."""
import contextlib

import pytest
import torch

from ssm_kernels import causal_conv1d
from tests.causal_conv1d.test_causal_conv1d import make_inputs, reference
from ssm_kernels.testing import assert_close
from tests.helpers import check_parity


@pytest.fixture
def conv_module():
    from ssm_kernels.causal_conv1d import triton as module
    return module


@pytest.fixture
def small_tiles(conv_module):
    """small_tiles(**changes): for the rest of the test, forward and backward tiles of 256 elements, at most
    16 along L (channel-first) or along D (channel-last), with LaunchConfig `changes` on top."""
    with contextlib.ExitStack() as stack:
        def shrink(block_l=16, tile=256, cl_block_d=16, **changes):
            stack.enter_context(conv_module.configured(fwd_block_l=block_l, bwd_block_l=block_l, fwd_tile=tile,
                                                       bwd_tile=tile, cl_block_d=cl_block_d, cl_bwd_tile=tile,
                                                       cl_bwd_block_d=cl_block_d, cl_rows_block_d=cl_block_d,
                                                       **changes))
        yield shrink


def parity(inputs, dtype=torch.float32, activation="silu"):
    width = inputs["weight"].shape[1]
    grads = ["x", "weight"] + (["bias"] if inputs["bias"] is not None else [])
    grads += ["initial_states"] if inputs["initial_states"] is not None and width > 1 else []
    check_parity(lambda **kw: causal_conv1d(**kw, backend="triton"), reference, inputs, dtype, grads,
                 activation=activation, return_final_states=True)


@pytest.mark.parametrize("layout", ["channel_first", "channel_last"])
@pytest.mark.parametrize("dim", [32, 21])  # a multiple of BLOCK_D (interior tiles unmasked) or not
@pytest.mark.parametrize("width,seq", [(4, False), (4, True), (1, False), (8, True), (3, True)])
def test_tile_edges_and_interior(triton_device, small_tiles, layout, dim, width, seq):
    """L = 103 over 16-position tiles: first tile (initial states), interior tiles (the unmasked path when D
    is a multiple of BLOCK_D), a partial last tile; seq_idx boundaries inside and across tiles."""
    small_tiles()
    inputs = make_inputs(2, dim, 103, width, torch.float32, triton_device, init=True, seq=seq,
                         transposed=layout == "channel_last")
    parity(inputs)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # 16-byte groups of 4 / 8 elements
@pytest.mark.parametrize("width", [2, 4, 6, 8])  # W - 1 within one group, or (fp32, W > 5) two groups back
def test_forward_packed_taps(triton_device, small_tiles, packed, dtype, width):
    """The forward's packed taps (aligned group loads, shifted taps picked in registers) against the
    unaligned-tap path, first / interior / last tiles, initial states."""
    small_tiles(fwd_packed=packed)
    inputs = make_inputs(2, 32, 103, width, dtype, triton_device, init=True)
    parity(inputs, dtype)


@pytest.mark.parametrize("dtype,width,dim", [  # D a multiple of the 16-channel tiles (unmasked interior) or not
    (torch.bfloat16, 4, 32), (torch.float32, 8, 21),
])  # W - 1 within one group of rows, or (fp32, W > 5) reaching two groups back
def test_channel_last_packed(triton_device, conv_module, small_tiles, dtype, width, dim):
    """Channel-last tiles through the packed paths (cl_fwd_packed, cl_bwd_packed: groups of E rows): forward
    and every gradient against the reference, and the backward against the scratch path, L = 103 over
    16-position tiles (first tile with initial states, interior, a partial last tile)."""
    small_tiles(cl_fwd_packed=True, cl_bwd_packed=True)
    inputs = make_inputs(2, dim, 103, width, dtype, triton_device, init=True, transposed=True)
    _, block_l = conv_module.forward_blocks(inputs["x"], conv_module.CONFIG)
    assert conv_module._pack_e(inputs["x"], width, None, block_l, True, True) == 16 // dtype.itemsize
    backward_both_paths(conv_module, inputs)
    parity(inputs, dtype)


def backward_both_paths(module, inputs, activation="silu", rows=0):
    """The backward op's four gradients (dx, dweight, dbias, dinitial_states) through the packed path and
    through the per-tap scratch path, on the same inputs and cotangent; asserts the packed path is taken
    (channel-last inputs: the row-parts path with `rows` parts per group, else the packed path on groups of
    rows, cl_bwd_packed)."""
    x, weight = inputs["x"], inputs["weight"]
    dout = torch.randn_like(x)
    grads = {}
    for packed in (True, False):
        with module.configured(bwd_packed=packed, cl_bwd_rows=rows, cl_bwd_packed=packed) as config:
            if packed:
                assert module._row_parts(x, weight.shape[1], None, config) == rows
                _, block_l = module.backward_blocks(x, config, rows)
                if not rows:
                    assert module._pack_e(x, weight.shape[1], None, block_l, True, True) == 16 // x.element_size()
            grads[packed] = module._backward(x, weight, inputs["bias"], None, inputs["initial_states"], dout,
                                             activation == "silu")
    for name, a, b in zip(("dx", "dweight", "dbias", "dinitial_states"), grads[True], grads[False]):
        assert a.dtype == b.dtype, name
        assert_close(a, b, x.dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # 16-byte groups of 4 / 8 elements
@pytest.mark.parametrize("width", [2, 3, 4, 5, 6, 7, 8])  # fp32 W > 5: g two groups ahead, x two groups back
def test_backward_packed_matches_per_tap(triton_device, conv_module, small_tiles, dtype, width):
    """The packed backward (aligned loads, g recomputed one group ahead, shifted windows in registers) against
    the per-tap scratch backward: every gradient, L = 103 over 16-position tiles (first tile with initial
    states, unmasked interior tiles, a partial last tile)."""
    small_tiles()
    backward_both_paths(conv_module, make_inputs(2, 32, 103, width, dtype, triton_device, init=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim,length,max_block_l,width,activation,bias", [
    (32, 96, 1024, 4, "silu", True),  # L a multiple of BLOCK_L: the last tile's look-ahead past L
    (21, 103, 1024, 8, None, True),  # D not a multiple of BLOCK_D (masked everywhere), no activation
    (16, 5, 1024, 3, "silu", False),  # L < BLOCK_L = 8: one masked tile, halo and initial states overlap
    (16, 37, 8, 5, "silu", True),  # BLOCK_L = 8: one bf16 group per tile, the next group is the next tile
    (16, 61, 8, 8, None, False),
])
def test_backward_packed_edges(triton_device, conv_module, small_tiles, dtype, dim, length, max_block_l, width,
                               activation, bias):
    """The packed backward at tile edges: against the per-tap path and against the reference."""
    small_tiles(max_block_l=max_block_l)
    inputs = make_inputs(2, dim, length, width, dtype, triton_device, bias=bias, init=True)
    backward_both_paths(conv_module, inputs, activation)
    parity(inputs, dtype, activation)


@pytest.mark.parametrize("rows,width,dtype", [
    (8, 2, torch.float32), (8, 4, torch.float32), (8, 8, torch.float32), (8, 4, torch.bfloat16),
    (4, 5, torch.float32), (4, 8, torch.float32),  # W - 1 = E: one group back; W - 1 > E: two
    (2, 3, torch.float32), (2, 4, torch.float32),
    (16, 4, torch.bfloat16),  # E = BLOCK_L: one group per tile, a part per row
])
def test_backward_channel_last_rows_match_per_tap(triton_device, conv_module, small_tiles, rows, width, dtype):
    """The channel-last backward on row parts (g once on the tile and on the rows after it, shifted windows in
    registers) against the scratch path and the reference: L = 103 over 16-position tiles (first tile with
    initial states, unmasked interior, a partial last tile), W - 1 within one group or reaching two back."""
    small_tiles()
    inputs = make_inputs(2, 32, 103, width, dtype, triton_device, init=True, transposed=True)
    backward_both_paths(conv_module, inputs, rows=rows)
    with conv_module.configured(cl_bwd_rows=rows):
        parity(inputs, dtype)


@pytest.mark.parametrize("dim,length,activation,bias", [(21, 103, "silu", True), (16, 5, None, False)])
def test_backward_channel_last_rows_edges(triton_device, conv_module, small_tiles, dim, length, activation, bias):
    """Row parts with D not a multiple of BLOCK_D (masked everywhere), and L = 5 shorter than a group."""
    small_tiles()
    inputs = make_inputs(2, dim, length, 4, torch.float32, triton_device, bias=bias, init=True, transposed=True)
    backward_both_paths(conv_module, inputs, activation, rows=8)
    with conv_module.configured(cl_bwd_rows=8):
        parity(inputs, torch.float32, activation)


def test_backward_packed_group_tiles_fp32(triton_device, conv_module, small_tiles):
    """fp32, BLOCK_L = 4 = one group per tile and W = 8: g is needed two tiles ahead, x two tiles back."""
    small_tiles(max_block_l=4)
    inputs = make_inputs(2, 16, 29, 8, torch.float32, triton_device, init=True)
    backward_both_paths(conv_module, inputs)
    parity(inputs)


@pytest.mark.parametrize("programs,units_per_program", [(None, 8), (None, 1), (1, 8), (5, 1), (64, 8)])
def test_persistent_grid(triton_device, small_tiles, programs, units_per_program):
    """Grids of 1, 3 (the interpreter's default), 5 and more programs than units; units of one tile and of
    all a row's tiles (the dweight / dbias partial sums then span several tiles)."""
    small_tiles(bwd_programs=programs, bwd_units_per_program=units_per_program)
    inputs = make_inputs(3, 32, 77, 4, torch.float32, triton_device, init=True, seq=True)
    parity(inputs)


@pytest.mark.parametrize("tiles_per_program", [2, 3])
def test_forward_tiles_per_program(triton_device, small_tiles, tiles_per_program):
    """Several L tiles per forward program, the last program running past L."""
    small_tiles(fwd_tiles_per_program=tiles_per_program)
    inputs = make_inputs(2, 32, 100, 4, torch.float32, triton_device, init=True)
    parity(inputs)


@pytest.mark.parametrize("length", [3, 11, 40])
def test_tiles_shorter_than_width(triton_device, small_tiles, length):
    """BLOCK_L = 2 < W - 1 = 7: the halo and dinitial_states read g past the tile; L = 3 < W - 1 too."""
    small_tiles(max_block_l=2)
    inputs = make_inputs(2, 16, length, 8, torch.float32, triton_device, init=True, seq=length > 3)
    parity(inputs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["silu", None])
def test_low_precision_interior(triton_device, small_tiles, dtype, activation):
    """The unmasked interior path in half precision, with and without SiLU, no bias."""
    small_tiles()
    inputs = make_inputs(2, 32, 96, 4, dtype, triton_device, bias=False, init=True)
    parity(inputs, dtype, activation)


def test_default_blocks_and_grid(triton_device, conv_module):
    """The default tiles: channel-first long side along L, channel-last along D; the persistent grid size."""
    config = conv_module.CONFIG
    x = torch.empty(1, 4096, 4096, device=triton_device)  # channel-first; transposed: channel-last
    assert conv_module.forward_blocks(x, config) == (config.fwd_tile // config.fwd_block_l, config.fwd_block_l)
    block_d, block_l = conv_module.backward_blocks(x.transpose(1, 2), config)
    assert block_d == config.cl_bwd_block_d and block_d * block_l == config.cl_bwd_tile
    rows = conv_module._row_parts(x.transpose(1, 2), 4, None, config)
    assert rows == config.cl_bwd_rows > 0
    block_d, block_l = conv_module.backward_blocks(x.transpose(1, 2), config, rows)
    assert block_d == config.cl_rows_block_d and block_d * block_l == config.cl_bwd_tile and block_l % rows == 0
    programs = conv_module._bwd_programs(torch.device(triton_device), config)
    if triton_device.type == "cpu":
        assert programs == config.interpret_programs
    else:
        sms = torch.cuda.get_device_properties(triton_device).multi_processor_count
        assert programs == sms * config.bwd_programs_per_sm


def test_configured_restores_and_rejects_unknown_fields(conv_module):
    """`configured` swaps the immutable launch configuration for a block and back, and names a bad field."""
    before = conv_module.CONFIG
    with conv_module.configured(fwd_block_l=32) as config:
        assert conv_module.CONFIG is config and config.fwd_block_l == 32 and before.fwd_block_l != 32
    assert conv_module.CONFIG is before
    with pytest.raises(TypeError, match="fwd_blok_l"):
        with conv_module.configured(fwd_blok_l=32):
            pass


def test_y_and_dx_lie_like_x(triton_device, small_tiles):
    """y and dx come back in x's memory order where x is dense (the Mamba block's conv input: a channel slice of
    in_proj's (2D, B, L)-ordered output), equal to the reference's."""
    small_tiles()
    gemm_out = torch.randn(10, 2, 37, device=triton_device).transpose(0, 1).requires_grad_()  # (2D, B, L) memory
    x = gemm_out[:, :5]
    weight = torch.randn(5, 4, device=triton_device, requires_grad=True)
    seen = []
    x.register_hook(seen.append)
    out = causal_conv1d(x, weight, activation="silu", backend="triton")
    assert out.stride() == x.stride()
    cotangent = torch.randn_like(out)
    out.backward(cotangent)
    assert seen[0].stride() == x.stride()
    ref_x = x.detach().clone().requires_grad_()
    ref = reference(ref_x, weight.detach(), activation="silu")
    ref.backward(cotangent)
    assert_close(out, ref, torch.float32, "y")
    assert_close(seen[0], ref_x.grad, torch.float32, "dx")
