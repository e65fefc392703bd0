"""ssm_universal.layers._split_linear: in_proj's GEMM and the split of its output as one autograd step."""
import pytest
import torch
import torch.nn.functional as F

from ssm_kernels.testing import assert_close
from ssm_universal.layers._split_linear import split_linear
from ssm_universal.layers.mamba2 import Mamba2
from tests.helpers import OutputSizes, check_parity

SIZES = (0, 0, 6, 9, 3)  # Mamba2's [z0, x0, z, xBC, dt] without gated-MLP channels


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sizes", [SIZES, (2, 2, 4, 7, 3)])
def test_split_linear_equals_nn_linear_then_split(bias, dtype, sizes):
    torch.manual_seed(0)
    out = sum(sizes)
    inputs = dict(x=torch.randn(3, 7, 5).to(dtype), weight=torch.randn(out, 5).to(dtype),
                  bias=torch.randn(out).to(dtype) if bias else None)
    grads = ["x", "weight"] + (["bias"] if bias else [])
    check_parity(lambda x, weight, bias: split_linear(x, weight, bias, sizes),
                 lambda x, weight, bias: F.linear(x, weight, bias).split(sizes, dim=-1), inputs, dtype, grads)


@pytest.mark.parametrize("layout", ["rows", "channels-first", "transposed-batch"])
def test_split_linear_reads_gradients_of_any_layout_and_missing_parts(layout):
    """Each part's gradient as its op may write it (channels-last rows, channels-first, another order) or absent
    (a part that reached no loss: its weight rows' gradient is zero)."""
    torch.manual_seed(0)
    weight = torch.randn(sum(SIZES), 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(sum(SIZES), dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    ours = split_linear(x, weight, bias, SIZES)
    ref = F.linear(x, weight, bias).split(SIZES, dim=-1)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    used = [2, 4]  # z and dt reach the loss, xBC does not
    cotangents = [torch.randn_like(ref[i]) for i in used]
    if layout == "channels-first":
        cotangents = [g.transpose(1, 2).contiguous().transpose(1, 2) for g in cotangents]
    elif layout == "transposed-batch":
        cotangents = [g.transpose(0, 1).contiguous().transpose(0, 1) for g in cotangents]
    got = torch.autograd.grad([ours[i] for i in used], [x, weight, bias], cotangents)
    expected = torch.autograd.grad([ref[i] for i in used], [x, weight, bias], cotangents)
    for name, a, b in zip(("x", "weight", "bias"), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    assert torch.autograd.gradcheck(lambda x, w, b: split_linear(x, w, b, SIZES), (x, weight, bias))


def test_split_linear_under_autocast():
    torch.manual_seed(0)
    x, weight = torch.randn(2, 5, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = split_linear(x, weight, None, (4, 5))
        expected = F.linear(x, weight).split((4, 5), dim=-1)
    for a, b in zip(parts, expected):
        assert a.dtype == torch.bfloat16
        assert_close(a.float(), b.float(), torch.bfloat16, "autocast output")
    sum(p.float().sum() for p in parts).backward()
    assert x.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32


def test_split_linear_sizes_must_cover_the_weight():
    with pytest.raises(ValueError, match="sizes"):
        split_linear(torch.randn(1, 2, 3), torch.randn(5, 3), None, (2, 2))


@pytest.mark.parametrize("plain", [True, False])
def test_mamba2_backward_concatenates_no_in_proj_sized_gradient(plain):
    """The block's backward hands the in_proj parts' gradients to its GEMMs as written; torch.split's backward
    concatenates them into one (B, L, d_in_proj) tensor first, which an in_proj called as a module (here, with
    a hook) still gets."""
    torch.manual_seed(0)
    layer = Mamba2(32, d_state=8, headdim=8, chunk_size=16)
    if not plain:
        layer.in_proj.register_forward_hook(lambda module, inputs, output: None)
    x = torch.randn(2, 40, 32, requires_grad=True)
    y = layer(x)
    with OutputSizes() as sizes:
        y.backward(torch.randn_like(y))
    in_proj_sized = [name for name, numel in sizes.calls if numel == 2 * 40 * layer.in_proj.out_features]
    assert in_proj_sized == ([] if plain else ["cat"])
