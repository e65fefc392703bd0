"""torch.library.opcheck (schema, autograd registration, fake tensors, AOT dispatch with dynamic shapes) on
the forward custom ops made by the shared wiring helper (ssm_kernels._autograd.define_custom_op)."""
import pytest
import torch

from ssm_kernels import _dispatch
from tests.helpers import TRITON_DEVICE, backend_device


def _leaf(*shape, dtype=torch.float32, device="cpu", scale=1.0, shift=0.0):
    return (shift + scale * torch.randn(*shape, dtype=dtype, device=device)).requires_grad_()


def _linear_scan(device):
    return (_leaf(2, 3, 9, device=device, scale=0.1, shift=0.7), _leaf(2, 3, 9, device=device),
            _leaf(2, 3, device=device), None, False)


def _linear_scan_packed(device):  # three sequences packed along L, one empty
    return (_leaf(3, 9, device=device, scale=0.1, shift=0.7), _leaf(1, 3, 9, device=device),
            _leaf(3, 3, device=device), torch.tensor([0, 4, 4, 9], dtype=torch.int32, device=device), True)


def _causal_conv1d(device):
    return _leaf(2, 8, 13, device=device), _leaf(8, 4, device=device), _leaf(8, device=device), None, None, True


def _gated_rmsnorm(device):
    return _leaf(5, 16, device=device), _leaf(16, device=device), _leaf(5, 16, device=device), 1e-6, 8, True


def _gated_rmsnorm_linear(device):  # the norm with a linear layer after it
    return (_leaf(5, 16, device=device), _leaf(16, device=device), _leaf(5, 16, device=device),
            _leaf(6, 16, device=device), _leaf(6, device=device), 1e-6, 8, False)


def _selective_scan(device):  # inputs in the compute layout: B, C grouped (Bb, G, N, Lb)
    return (_leaf(2, 4, 19, device=device), _leaf(2, 4, 19, device=device, scale=0.05, shift=0.1),
            _leaf(4, 3, device=device, scale=0.1, shift=-1.0), _leaf(2, 1, 3, 19, device=device),
            _leaf(2, 1, 3, 19, device=device), _leaf(2, 4, 3, device=device), None)


def _ssd_chunk_scan(device):  # dt after its softplus; no packed sequences
    return (_leaf(2, 21, 4, 5, device=device), _leaf(2, 21, 4, device=device, scale=0.05, shift=0.1),
            _leaf(4, device=device, scale=0.1, shift=-1.0), _leaf(2, 21, 2, 3, device=device),
            _leaf(2, 21, 2, 3, device=device), _leaf(2, 4, 5, 3, device=device), None, None, 8)


def _selective_scan_public(device):  # the Triton / CUDA ops take the public arguments
    return (_leaf(2, 8, 19, device=device), _leaf(2, 8, 19, device=device, scale=0.1),
            _leaf(8, 4, device=device, scale=0.1, shift=-1.0), _leaf(2, 4, 19, device=device),
            _leaf(2, 4, 19, device=device), _leaf(8, device=device), _leaf(2, 8, 19, device=device),
            _leaf(8, device=device), True, _leaf(2, 8, 4, device=device), None, True)


def _ssd_chunk_scan_public(device, lean=False):
    """(x, dt, A, B, C, D, z, dt_bias, initial_states, seg, cu_seqlens, chunk_size, dt_softplus, dt_lo, dt_hi,
    store_pre, lean), as the Triton backend passes them (lean: the states entering the chunks in x's dtype, the
    final one returned alone, the boundary states recomputed by the backward)."""
    return (_leaf(2, 21, 4, 8, device=device), _leaf(2, 21, 4, device=device, scale=0.5),
            _leaf(4, device=device, scale=0.1, shift=-1.0), _leaf(2, 21, 2, 16, device=device),
            _leaf(2, 21, 2, 16, device=device), _leaf(4, device=device), _leaf(2, 21, 4, 8, device=device),
            _leaf(4, device=device), _leaf(2, 4, 8, 16, device=device), None, None, 16, True, 0.0, float("inf"),
            True, lean)


def _complex(*shape, device):
    return _leaf(*shape, dtype=torch.complex64, device=device)


def _fftconv(device):  # (u, k, D, bidirectional, pregate, postgate)
    return (_leaf(2, 4, 24, device=device), _leaf(4, 24, device=device), _leaf(4, device=device), False,
            _leaf(2, 4, 24, device=device), _leaf(2, 4, 24, device=device))


def fftconv_cuda_args(device, save_ungated: bool):
    """The CUDA op also takes whether to save the ungated output and V (saved: the inputs require grad), and the
    kernel's spectrum."""
    from ssm_kernels.fftconv.cuda import kernel_spectrum, log_points
    u, k, D, bidirectional, pregate, postgate = _fftconv(device)
    spectrum = kernel_spectrum(k.detach(), bidirectional, log_points(u.shape[-1]))
    return (u, k, D, bidirectional, pregate, postgate, save_ungated, True, spectrum)


# forward op name (then a case name) -> (op, backend, arguments on the backend's test device)
CASES = {
    "linear_scan_torch": ("linear_scan", "torch", _linear_scan),
    "linear_scan_torch packed": ("linear_scan", "torch", _linear_scan_packed),
    "linear_scan_cpp": ("linear_scan", "cpp", _linear_scan),
    "linear_scan_triton": ("linear_scan", "triton", _linear_scan),
    "linear_scan_triton packed": ("linear_scan", "triton", _linear_scan_packed),
    "linear_scan_cuda": ("linear_scan", "cuda", _linear_scan),
    "linear_scan_cuda packed": ("linear_scan", "cuda", _linear_scan_packed),
    "cauchy_kernel_torch": ("cauchy_kernel", "torch", lambda device: (
        _complex(4, 3, device=device), _complex(7, device=device), _complex(4, 3, device=device))),
    "cauchy_kernel_triton": ("cauchy_kernel", "triton", lambda device: (
        _complex(4, 3, device=device), _complex(7, device=device), _complex(4, 3, device=device))),
    "vandermonde_kernel_torch": ("vandermonde_kernel", "torch", lambda device: (
        _complex(4, 3, device=device), 0.1 * _complex(4, 3, device=device), 11)),
    "vandermonde_kernel_triton": ("vandermonde_kernel", "triton", lambda device: (
        _complex(4, 3, device=device), 0.1 * _complex(4, 3, device=device), 11)),
    "selective_scan_torch": ("selective_scan", "torch", _selective_scan),
    "ssd_chunk_scan_torch": ("ssd_chunk_scan", "torch", _ssd_chunk_scan),
    "selective_scan_triton": ("selective_scan", "triton", _selective_scan_public),
    "selective_scan_cuda": ("selective_scan", "cuda", _selective_scan_public),
    "ssd_chunk_scan_triton": ("ssd_chunk_scan", "triton", _ssd_chunk_scan_public),
    "ssd_chunk_scan_triton lean": ("ssd_chunk_scan", "triton", lambda device: _ssd_chunk_scan_public(device, True)),
    "causal_conv1d_triton": ("causal_conv1d", "triton", _causal_conv1d),
    "causal_conv1d_cuda": ("causal_conv1d", "cuda", _causal_conv1d),
    "gated_rmsnorm_triton": ("gated_rmsnorm", "triton", _gated_rmsnorm),
    "gated_rmsnorm_linear_triton": ("gated_rmsnorm", "triton", _gated_rmsnorm_linear),
    "fftconv_triton": ("fftconv", "triton", _fftconv),
    "fftconv_cuda": ("fftconv", "cuda", lambda device: fftconv_cuda_args(device, False)),
    "fftconv_cuda saved": ("fftconv", "cuda", lambda device: fftconv_cuda_args(device, True)),
}


def test_every_loaded_custom_op_has_a_case():
    """The backends come from the registry: every forward custom op that a backend usable here defines is
    opchecked below (a new backend or op without a case fails here)."""
    for op, backends in _dispatch._REGISTRY.items():
        for backend, entry in backends.items():
            device = {"triton": TRITON_DEVICE, "cuda": "cuda"}.get(backend, "cpu")
            if device == "cuda" and not torch.cuda.is_available():
                continue
            if _dispatch.backend_problem(backend, torch.device(device), entry.extension) is None:
                entry.load()
    defined = {name[:-len("_fwd")] for name in dir(torch.ops.ssm_kernels) if name.endswith("_fwd")}
    covered = {name.split()[0] for name in CASES}
    assert defined and defined <= covered, f"custom ops without an opcheck case: {sorted(defined - covered)}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_opcheck(name):
    op, backend, make_args = CASES[name]
    device = backend_device(backend)
    problem = _dispatch.backend_problem(backend, device, _dispatch._REGISTRY[op][backend].extension)
    if problem is not None:
        pytest.skip(problem)
    _dispatch._REGISTRY[op][backend].load()  # defines the custom ops
    torch.library.opcheck(getattr(torch.ops.ssm_kernels, f"{name.split()[0]}_fwd").default, make_args(device))
