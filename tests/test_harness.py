"""The test harness itself: tolerance helper, NaN poisoning, the Triton interpreter fixture."""
import pytest
import torch

from ssm_kernels import _utils
from ssm_kernels.testing import assert_close, relative_error, tolerance


def test_poisoned_outputs_are_nan_and_fail_comparison():
    out = _utils.new_output((4, 5), torch.float32, "cpu")
    assert torch.isnan(out).all()
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(out, torch.zeros(4, 5), torch.float32)
    assert (_utils.new_output((3,), torch.int32, "cpu") == -1).all()


def test_tolerance_rejects_one_ulp_of_the_next_coarser_dtype():
    x = torch.randn(1000, dtype=torch.float64)
    assert relative_error(x.float(), x) < tolerance(torch.float32)
    assert relative_error(x.half(), x) < tolerance(torch.float16) < relative_error(x.bfloat16(), x)
    assert relative_error(x.bfloat16(), x) < tolerance(torch.bfloat16)
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(x.half(), x, torch.float32)


def test_absolute_floor_where_the_reference_is_zero():
    zeros = torch.zeros(64, dtype=torch.float64)
    assert relative_error(torch.full((64,), 1e-9), zeros) == pytest.approx(8e-9)  # ||actual||, no division
    assert_close(torch.full((64,), 1e-9), zeros, torch.float32, "rounding residue")
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(torch.full((64,), 1e-3), zeros, torch.float32, "a wrong gradient")


@pytest.mark.triton
def test_triton_kernels_run_on_this_machine(triton_device):
    import triton
    import triton.language as tl

    @triton.jit
    def axpy(x_ptr, y_ptr, out_ptr, a, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, a * tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)

    x, y = torch.randn(1000, device=triton_device), torch.randn(1000, device=triton_device)
    out = _utils.new_output((1000,), torch.float32, triton_device)
    axpy[(triton.cdiv(1000, 256),)](x, y, out, 2.0, 1000, BLOCK=256)
    assert_close(out, 2 * x + y, torch.float32)


def test_argcheck_messages():
    check = _utils.ArgCheck("op")
    check.tensor("u", torch.zeros(2, 3, 5), ("B", "D", "L"))
    with pytest.raises(ValueError, match=r"op: A must have shape \(D, N\) = \(3, N\), got \(4, 16\)"):
        check.tensor("A", torch.zeros(4, 16), ("D", "N"))
    with pytest.raises(ValueError, match="cuda:0|is on"):
        check.tensor("B", torch.zeros(2, 3, 5, device="meta"), ("B", "D", "L"))
    with pytest.raises(ValueError, match="chunk_size must be in \\[1, inf\\], got 0"):
        check.integer("chunk_size", 0, minimum=1)
    with pytest.raises(ValueError, match="must be finite"):
        check.finite("eps", float("nan"))
