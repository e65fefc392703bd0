"""cauchy_kernel: every backend against the sequential reference (forward, complex gradients)."""
import pytest
import torch

from ssm_kernels import _dispatch
from ssm_kernels.cauchy_kernel import pytorch as cauchy_pytorch
from ssm_kernels.cauchy_kernel import cauchy_kernel
from ssm_kernels.cauchy_kernel.reference import cauchy_kernel_ref
from ssm_kernels.testing import assert_close
from ssm_kernels._dispatch import BackendUnavailableError
from tests.helpers import backend_device, check_parity, refuses_complex128

BACKENDS = list(_dispatch.implemented_backends("cauchy_kernel"))
DTYPES = [torch.complex64, torch.complex128]


def make_inputs(heads, state, length, dtype, device, *, transposed=False):
    """S4-like: w = -1/2 + i pi n (perturbed) in the left half-plane, z on the imaginary axis."""
    n = torch.arange(state, device=device)
    w = torch.complex(-0.5 + 0.1 * torch.rand(heads, state, device=device),
                      torch.pi * n + 0.1 * torch.randn(heads, state, device=device)).to(dtype)
    v = torch.randn(heads, state, dtype=dtype, device=device)
    z = (2j * torch.tan(torch.pi / 2 * torch.rand(length, device=device) * 0.99)).to(dtype)
    if transposed:  # (H, N) views of (N, H) memory, z a strided view
        v, w = v.t().contiguous().t(), w.t().contiguous().t()
        z = torch.stack([z, z], -1)[:, 0]
    return {"v": v, "z": z, "w": w}


@pytest.fixture(params=["one chunk", "many chunks"])
def chunking(request, monkeypatch):
    if request.param == "many chunks":  # a few positions of z per chunk, the last one partial
        monkeypatch.setattr(cauchy_pytorch, "CHUNK_ELEMENTS", 20)
    return request.param


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,state,length", [(3, 8, 1), (4, 16, 7), (2, 5, 63), (3, 32, 130)])
def test_matches_reference(backend, dtype, heads, state, length, chunking):
    device = backend_device(backend)
    if refuses_complex128(backend, dtype):
        with pytest.raises(BackendUnavailableError, match="complex128"):
            cauchy_kernel(**make_inputs(heads, state, length, dtype, device), backend=backend)
        return
    check_parity(lambda **kw: cauchy_kernel(**kw, backend=backend), cauchy_kernel_ref,
                 make_inputs(heads, state, length, dtype, device), dtype, ["v", "z", "w"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous(backend):
    device = backend_device(backend)
    inputs = make_inputs(6, 10, 33, torch.complex64, device, transposed=True)
    assert not inputs["v"].is_contiguous() and not inputs["z"].is_contiguous()
    check_parity(lambda **kw: cauchy_kernel(**kw, backend=backend), cauchy_kernel_ref,
                 inputs, torch.complex64, ["v", "z", "w"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_form(backend):
    device = backend_device(backend)
    v = torch.tensor([[1.0 + 1.0j, -2.0 + 0.0j]], dtype=torch.complex128, device=device)
    w = torch.tensor([[-1.0 + 2.0j, -0.5 - 1.0j]], dtype=torch.complex128, device=device)
    z = torch.tensor([0.0 + 0.0j, 1.0j, 3.0 - 1.0j], dtype=torch.complex128, device=device)
    expected = v[:, :1] / (z - w[:, :1]) + v[:, 1:] / (z - w[:, 1:])
    if refuses_complex128(backend, v.dtype):
        v, z, w = (t.to(torch.complex64) for t in (v, z, w))
    assert_close(cauchy_kernel(v, z, w, backend=backend), expected, v.dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_of_heads_modes_and_positions(backend):
    """More heads than dz's head groups (the last one partial), more modes than one Triton block, positions
    over several blocks; and w = 0 exactly, beside z's padding (no 0 * inf)."""
    device = backend_device(backend)
    inputs = make_inputs(37, 45, 300, torch.complex64, device)
    inputs["w"][0, 0] = 0
    check_parity(lambda **kw: cauchy_kernel(**kw, backend=backend), cauchy_kernel_ref, inputs, torch.complex64,
                 ["v", "z", "w"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length", [2, 4096, 65536])
def test_long_kernels(backend, length):
    """Many positions per head: the backward's segments of positions and their partial sums."""
    device = backend_device(backend)
    check_parity(lambda **kw: cauchy_kernel(**kw, backend=backend), cauchy_kernel_ref,
                 make_inputs(2, 8, length, torch.complex64, device), torch.complex64, ["v", "w"])


def test_gradcheck_complex128(chunking):
    inputs = make_inputs(2, 3, 9, torch.complex128, "cpu")
    args = [inputs[k].requires_grad_() for k in ("v", "z", "w")]
    assert torch.autograd.gradcheck(cauchy_kernel, args)


def test_gradients_without_z():
    inputs = make_inputs(2, 4, 9, torch.complex64, "cpu")
    v, w = inputs["v"].requires_grad_(), inputs["w"].requires_grad_()
    cauchy_kernel(v, inputs["z"], w).abs().sum().backward()
    assert v.grad is not None and w.grad is not None and inputs["z"].grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_heads(backend):
    device = backend_device(backend)
    check_parity(lambda **kw: cauchy_kernel(**kw, backend=backend), cauchy_kernel_ref,
                 make_inputs(0, 4, 10, torch.complex64, device), torch.complex64, ["v", "z", "w"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_modes(backend):
    """An empty sum: K = 0, and z's gradient 0."""
    device = backend_device(backend)
    inputs = make_inputs(3, 0, 10, torch.complex64, device)
    v, z, w = (inputs[k].requires_grad_() for k in ("v", "z", "w"))
    K = cauchy_kernel(v, z, w, backend=backend)
    assert K.shape == (3, 10) and torch.equal(K, torch.zeros_like(K))
    torch.view_as_real(K).sum().backward()
    assert v.grad.shape == (3, 0) and w.grad.shape == (3, 0) and torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_z(backend):
    device = backend_device(backend)
    v, w = (torch.randn(3, 4, dtype=torch.complex64, device=device, requires_grad=True) for _ in range(2))
    K = cauchy_kernel(v, torch.zeros(0, dtype=torch.complex64, device=device), w, backend=backend)
    assert K.shape == (3, 0)
    K.abs().sum().backward()
    assert (v.grad == 0).all() and (w.grad == 0).all()


def test_compile_fullgraph():
    inputs = make_inputs(4, 8, 50, torch.complex64, "cpu")
    v, z, w = (inputs[k].requires_grad_() for k in ("v", "z", "w"))
    compiled = torch.compile(cauchy_kernel, fullgraph=True, backend="aot_eager")
    K = compiled(v, z, w)
    assert_close(K, cauchy_kernel_ref(v, z, w), torch.complex64)
    K.abs().square().sum().backward()
    assert v.grad is not None and z.grad is not None and w.grad is not None


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(v=torch.randn(4, 8)), TypeError, r"v must have dtype in \(complex64, complex128\), got float32"),
    (dict(z=torch.randn(16)), TypeError, r"z must have dtype in \(complex64\), got float32"),
    (dict(w=torch.randn(4, 8)), TypeError, r"w must have dtype in \(complex64\), got float32"),
    (dict(w=torch.randn(4, 8, dtype=torch.complex128)), TypeError, "w must have dtype"),
    (dict(w=torch.randn(5, 8, dtype=torch.complex64)), ValueError, r"w must have shape \(H, N\) = \(4, 8\)"),
    (dict(w=torch.randn(4, 7, dtype=torch.complex64)), ValueError, r"w must have shape \(H, N\) = \(4, 8\)"),
    (dict(z=torch.randn(2, 8, dtype=torch.complex64)), ValueError, r"z must have shape \(L,\)"),
    (dict(v=None), TypeError, "v is required"),
    (dict(backend="cuda"), RuntimeError, "no 'cuda' backend"),
])
def test_validation(kwargs, error, match):
    args = dict(v=torch.randn(4, 8, dtype=torch.complex64), z=torch.randn(16, dtype=torch.complex64),
                w=torch.randn(4, 8, dtype=torch.complex64))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        cauchy_kernel(**args)
