"""torch.library.opcheck (schema, autograd registration, fake tensors, AOT dispatch with dynamic shapes) on
the custom ops made by the shared wiring helper (ssm_kernels._autograd.define_custom_op)."""
import pytest
import torch

import ssm_kernels
from ssm_kernels import _dispatch


def _linear_scan_args(dtype):
    gates = (0.5 + 0.4 * torch.rand(2, 3, 9)).to(dtype).requires_grad_()
    tokens = torch.randn(2, 3, 9, dtype=dtype, requires_grad=True)
    initial = torch.randn(2, 3, dtype=dtype, requires_grad=True)
    return gates, tokens, initial, False


def _complex(*shape):
    return torch.randn(*shape, dtype=torch.complex64, requires_grad=True)


CASES = {
    "linear_scan_torch": lambda: _linear_scan_args(torch.float32),
    "linear_scan_cpp": lambda: _linear_scan_args(torch.float32),
    "cauchy_kernel_torch": lambda: (_complex(4, 3), _complex(7), _complex(4, 3)),
    "vandermonde_kernel_torch": lambda: (_complex(4, 3), (-0.1 + 0.3j) * torch.ones(4, 3, dtype=torch.complex64)
                                         .requires_grad_(), 11),
}
LOADERS = {"linear_scan_torch": ("linear_scan", "torch"), "linear_scan_cpp": ("linear_scan", "cpp"),
           "cauchy_kernel_torch": ("cauchy_kernel", "torch"), "vandermonde_kernel_torch": ("vandermonde_kernel", "torch")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_opcheck(name):
    op, backend = LOADERS[name]
    if _dispatch.backend_problem(backend, torch.device("cpu")) is not None:
        pytest.skip(_dispatch.backend_problem(backend, torch.device("cpu")))
    ssm_kernels.available_backends()  # registry populated
    _dispatch._REGISTRY[op][backend].load()  # defines the ops
    torch.library.opcheck(getattr(torch.ops.ssm_kernels, f"{name}_fwd").default, CASES[name]())
