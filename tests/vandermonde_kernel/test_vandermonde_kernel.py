"""vandermonde_kernel: every backend against the sequential reference (forward, complex gradients)."""
import pytest
import torch

from ssm_kernels import _dispatch
from ssm_kernels.vandermonde_kernel import vandermonde_kernel
from ssm_kernels.vandermonde_kernel.reference import vandermonde_kernel_ref
from ssm_kernels.testing import assert_close
from ssm_kernels._dispatch import BackendUnavailableError
from tests.helpers import backend_device, check_parity, refuses_complex128

BACKENDS = list(_dispatch.implemented_backends("vandermonde_kernel"))
DTYPES = [torch.complex64, torch.complex128]


def make_inputs(heads, state, dtype, device, *, transposed=False):
    """S4D-Lin: log_z = dt * (-1/2 + i pi n) with dt log-uniform in [1e-3, 1e-1], random complex C."""
    dt = torch.exp(torch.empty(heads, 1, device=device).uniform_(-6.9, -2.3))
    n = torch.arange(state, device=device)
    log_z = (dt * torch.complex(torch.full((state,), -0.5, device=device), torch.pi * n)).to(dtype)
    C = torch.randn(heads, state, dtype=dtype, device=device)
    if transposed:  # (H, N) views of (N, H) memory
        C, log_z = C.t().contiguous().t(), log_z.t().contiguous().t()
    return {"C": C, "log_z": log_z}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,state,length", [(3, 8, 1), (4, 16, 7), (2, 5, 63), (3, 32, 130), (2, 16, 1025)])
def test_matches_reference(backend, dtype, heads, state, length):
    device = backend_device(backend)
    if refuses_complex128(backend, dtype):
        with pytest.raises(BackendUnavailableError, match="complex128"):
            vandermonde_kernel(**make_inputs(heads, state, dtype, device), L=length, backend=backend)
        return
    check_parity(lambda **kw: vandermonde_kernel(**kw, backend=backend), vandermonde_kernel_ref,
                 make_inputs(heads, state, dtype, device), dtype, ["C", "log_z"], L=length)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous(backend):
    device = backend_device(backend)
    inputs = make_inputs(6, 10, torch.complex64, device, transposed=True)
    assert not inputs["C"].is_contiguous()
    check_parity(lambda **kw: vandermonde_kernel(**kw, backend=backend), vandermonde_kernel_ref, inputs,
                 torch.complex64, ["C", "log_z"], L=77)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_mode_closed_form(backend):
    device = backend_device(backend)
    log_z = torch.tensor([[-0.1 + 0.7j]], dtype=torch.complex128, device=device)
    C = torch.tensor([[0.5 - 2.0j]], dtype=torch.complex128, device=device)
    l = torch.arange(50, dtype=torch.float64, device=device)
    expected = 2 * (C * torch.exp(log_z * l)).real
    if refuses_complex128(backend, C.dtype):
        C, log_z = C.to(torch.complex64), log_z.to(torch.complex64)
    assert_close(vandermonde_kernel(C, log_z, 50, backend=backend), expected, C.real.dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_of_modes_and_positions(backend):
    """More modes than one Triton block holds and positions over several blocks, the last ones partial."""
    device = backend_device(backend)
    check_parity(lambda **kw: vandermonde_kernel(**kw, backend=backend), vandermonde_kernel_ref,
                 make_inputs(5, 45, torch.complex64, device), torch.complex64, ["C", "log_z"], L=300)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length", [2, 4096, 65536])
def test_long_kernels(backend, length):
    device = backend_device(backend)
    check_parity(lambda **kw: vandermonde_kernel(**kw, backend=backend), vandermonde_kernel_ref,
                 make_inputs(2, 8, torch.complex64, device), torch.complex64, ["C", "log_z"], L=length)


def reference_in_complex128(C, log_z, L):
    return vandermonde_kernel_ref(C.to(torch.complex128), log_z.to(torch.complex128), L)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_phases(backend):
    """Slowly decaying modes whose phase Im(log_z) l runs to 5e5 radians by L = 65536, against the reference in
    complex128: a phase rounded to fp32 there (as complex64 math, the reference's included, rounds it) is off by
    up to 1e-2 radians."""
    device = backend_device(backend)
    generator = torch.Generator().manual_seed(0)
    log_z = torch.complex(-1e-5 * torch.rand(2, 6, generator=generator, dtype=torch.float64),
                          8 * torch.rand(2, 6, generator=generator, dtype=torch.float64))
    C = torch.randn(2, 6, generator=generator, dtype=torch.complex128)
    inputs = {"C": C.to(device, torch.complex64), "log_z": log_z.to(device, torch.complex64)}
    check_parity(lambda **kw: vandermonde_kernel(**kw, backend=backend), reference_in_complex128, inputs,
                 torch.complex64, ["C", "log_z"], L=65536)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("heads,state", [(0, 4), (3, 0)])
def test_no_heads_or_no_modes(backend, heads, state):
    """Empty sums are zero, with empty gradients."""
    device = backend_device(backend)
    check_parity(lambda **kw: vandermonde_kernel(**kw, backend=backend), vandermonde_kernel_ref,
                 make_inputs(heads, state, torch.complex64, device), torch.complex64, ["C", "log_z"], L=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_growing_modes_stay_finite(backend):
    """Modes with Re log_z > 0 (an unstable system): every gradient finite when the kernel is, whatever tile
    padding lies past L."""
    device = backend_device(backend)
    log_z = torch.tensor([[0.6 + 0.5j, -0.2 + 1.0j]], dtype=torch.complex64, device=device)
    C = torch.tensor([[1.0 - 0.5j, 0.25 + 2.0j]], dtype=torch.complex64, device=device)
    check_parity(lambda **kw: vandermonde_kernel(**kw, backend=backend), vandermonde_kernel_ref,
                 {"C": C, "log_z": log_z}, torch.complex64, ["C", "log_z"], L=131)


@pytest.mark.parametrize("length", [5, 40])  # one chunk; several chunks with a padded last one
def test_gradcheck_complex128(length):
    inputs = make_inputs(2, 3, torch.complex128, "cpu")
    args = [inputs["C"].requires_grad_(), (inputs["log_z"] * 10).detach().requires_grad_()]
    assert torch.autograd.gradcheck(lambda C, log_z: vandermonde_kernel(C, log_z, length), args)


def test_compile_fullgraph():
    inputs = make_inputs(4, 8, torch.complex64, "cpu")
    C, log_z = inputs["C"].requires_grad_(), inputs["log_z"].requires_grad_()
    compiled = torch.compile(lambda C, log_z: vandermonde_kernel(C, log_z, 100), fullgraph=True,
                             backend="aot_eager")
    K = compiled(C, log_z)
    assert_close(K, vandermonde_kernel_ref(C, log_z, 100), torch.complex64)
    K.square().sum().backward()
    assert C.grad is not None and log_z.grad is not None


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(C=torch.randn(4, 8)), TypeError, r"C must have dtype in \(complex64, complex128\), got float32"),
    (dict(log_z=torch.randn(4, 8)), TypeError, r"log_z must have dtype in \(complex64\), got float32"),
    (dict(log_z=torch.randn(4, 8, dtype=torch.complex128)), TypeError, "log_z must have dtype"),
    (dict(log_z=torch.randn(4, 7, dtype=torch.complex64)), ValueError, r"log_z must have shape \(H, N\) = \(4, 8\)"),
    (dict(C=torch.randn(4, 8, 1, dtype=torch.complex64)), ValueError, r"C must have shape \(H, N\)"),
    (dict(L=0), ValueError, r"L must be in \[1, inf\], got 0"),
    (dict(L=3.0), TypeError, "L must be an int"),
    (dict(backend="cuda"), RuntimeError, "no 'cuda' backend"),
])
def test_validation(kwargs, error, match):
    args = dict(C=torch.randn(4, 8, dtype=torch.complex64), log_z=torch.randn(4, 8, dtype=torch.complex64), L=16)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        vandermonde_kernel(**args)
