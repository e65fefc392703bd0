"""ssm_kernels._triton_math: the Triton kernels' softplus and its slope, elementwise against fp64 torch."""
import pytest
import torch
import triton
import triton.language as tl

from ssm_kernels._triton_math import softplus, softplus_and_sigmoid

FLUSHED = 2.0 ** -126  # results below this are flushed to zero by the GPU's ex2.approx.ftz (FAST)


@triton.jit
def _softplus_kernel(x_ptr, sp_ptr, sp2_ptr, sig_ptr, n, BLOCK: tl.constexpr, FAST: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    sp, sig = softplus_and_sigmoid(x, FAST)
    tl.store(sp_ptr + offs, sp, mask=offs < n)
    tl.store(sp2_ptr + offs, softplus(x, FAST), mask=offs < n)
    tl.store(sig_ptr + offs, sig, mask=offs < n)


def _worst_ulps(actual, expected, x):
    """Largest elementwise error in units of 2**-22 (4 fp32 ulp) relative, beyond the rounding of x log2(e) in
    fp32 that exp2(x log2 e) carries (relative |x| 2**-24 in e: tl.exp is lowered that way on GPUs too);
    results that the GPU flushes to zero are left out."""
    kept = expected.abs() >= FLUSHED
    relative = (actual.double() - expected).abs()[kept] / expected.abs()[kept]
    return (relative / (2.0 ** -22 * (2.0 + x.double().abs()[kept]))).max().item()


@pytest.mark.parametrize("fast", [False, True])
def test_softplus_and_sigmoid_to_a_few_ulp(triton_device, fast):
    """Every x from -100 to 100 (dense around 0 and 20, where torch's softplus switches to x): softplus and
    sigmoid within 2**-22 (2 + |x|) relative of fp64, elementwise (a few ulp and exp2's argument rounding).
    FAST (the GPU's approximate exp2) runs natively only (the interpreter has no inline PTX)."""
    if fast and triton_device.type != "cuda":
        pytest.skip("the FAST path's inline PTX runs on a GPU only")
    x = torch.cat([torch.linspace(-100, 100, 20001), torch.linspace(-1e-3, 1e-3, 2001), torch.linspace(19, 21, 2001),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 1e4, -1e4])]).float()
    expected_sp = torch.logaddexp(x.double(), torch.zeros((), dtype=torch.float64))
    expected_sig = torch.sigmoid(x.double())
    xd = x.to(triton_device)
    sp, sp2, sig = (torch.empty_like(xd) for _ in range(3))
    _softplus_kernel[(triton.cdiv(x.numel(), 1024),)](xd, sp, sp2, sig, x.numel(), BLOCK=1024, FAST=fast)
    assert torch.equal(sp, sp2)
    assert _worst_ulps(sp.cpu(), expected_sp, x) <= 1.0
    assert _worst_ulps(sig.cpu(), expected_sig, x) <= 1.0
