"""Helpers for op tests: where each backend runs here, and forward + every-gradient parity checks."""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ssm_kernels import _cpu_ext, _dispatch
from ssm_kernels.testing import relative_error, tolerance

HAS_CUDA = torch.cuda.is_available()
# Where Triton kernels run in this session: natively on the GPU, else on the CPU through the interpreter.
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"
LOW_PRECISION = (torch.float16, torch.bfloat16)


def backend_device(backend: str) -> torch.device:
    """The device on which `backend` is tested in this session, or a skip saying why it cannot be."""
    if backend == "torch":
        return torch.device("cuda" if HAS_CUDA else "cpu")
    if backend == "triton":
        if not _dispatch.triton_importable():
            pytest.skip("Triton is not installed")
        return torch.device(TRITON_DEVICE)
    if backend == "cpp":
        if not _cpu_ext.load():
            pytest.skip(f"the C++ CPU kernels cannot be used here: {_cpu_ext.problem()}")
        return torch.device("cpu")
    if not HAS_CUDA:
        pytest.skip("the cuda backend needs a CUDA GPU")
    return torch.device("cuda")


def refuses_complex128(backend: str, dtype: torch.dtype) -> bool:
    """Whether `backend` runs complex ops in complex64 only (its kernels refuse complex128 inputs)."""
    return backend in ("triton", "cuda") and dtype == torch.complex128


def as_outputs(result) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def check_parity(fn: Callable, ref: Callable, inputs: Dict[str, Optional[torch.Tensor]], dtype: torch.dtype,
                 grads: Iterable[str], **kwargs) -> Dict[str, float]:
    """Compare fn(**inputs) with ref on fp32 copies of the same (already rounded) inputs: every output and
    the gradient of every input named in `grads`, under one random cotangent per output.

    `inputs` hold the values in the dtypes the op receives (low-precision tensors stay low precision for
    fn); the reference gets fp32 upcasts (fp64 stays fp64, integer tensors unchanged).
    Returns {name: relative error}. Tolerance: ssm_kernels.testing.tolerance(dtype).
    """
    errors = parity_errors(fn, ref, inputs, grads, **kwargs)
    for name, err in errors.items():
        assert err == err, f"{name}: non-finite values (unwritten or overflowed elements)"
        assert err <= tolerance(dtype), f"{name}: relative error {err:.3e} > {tolerance(dtype):.1e} for {dtype}"
    return errors


def parity_errors(fn: Callable, ref: Callable, inputs: Dict[str, Optional[torch.Tensor]], grads: Iterable[str],
                  **kwargs) -> Dict[str, float]:
    """check_parity's measurement without the bound: {"out0": err, ..., "d<input>": err} (NaN when not
    finite); shapes, dtypes and the presence of every gradient are still asserted."""
    grads = list(grads)

    def leaves(upcast: bool):
        out = {}
        for name, t in inputs.items():
            if t is None or not (t.is_floating_point() or t.is_complex()):
                out[name] = t
                continue
            # detach() keeps the caller's strides, so non-contiguous inputs reach fn as they are
            v = t.detach().float() if upcast and t.dtype in LOW_PRECISION else t.detach()
            out[name] = v.requires_grad_(name in grads)
        return out

    test_in, ref_in = leaves(False), leaves(True)
    outs = as_outputs(fn(**test_in, **kwargs))
    ref_outs = as_outputs(ref(**ref_in, **kwargs))
    assert len(outs) == len(ref_outs)
    errors = {}
    # A low-precision output's backward receives its cotangent rounded to that dtype; the reference gets
    # the same rounded values, so that only the op's own arithmetic differs (as for the inputs).
    cotangents = [torch.randn_like(r).to(o.dtype).to(r.dtype) for o, r in zip(outs, ref_outs)]
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert o.shape == r.shape, f"output {i}: shape {tuple(o.shape)} != {tuple(r.shape)}"
        errors[f"out{i}"] = relative_error(o, r)
    if grads:
        # <o, c> = Re sum(o * conj(c)): the real inner product, which also covers complex outputs
        test_loss = sum((o.to(c.dtype) * c.conj()).real.sum() for o, c in zip(outs, cotangents))
        ref_loss = sum((r * c.conj()).real.sum() for r, c in zip(ref_outs, cotangents))
        test_grads = torch.autograd.grad(test_loss, [test_in[g] for g in grads], allow_unused=True)
        ref_grads = torch.autograd.grad(ref_loss, [ref_in[g] for g in grads], allow_unused=True)
        for name, g, rg in zip(grads, test_grads, ref_grads):
            assert g is not None and rg is not None, f"no gradient for {name}"
            assert g.dtype == test_in[name].dtype, f"grad of {name} has dtype {g.dtype}, input {test_in[name].dtype}"
            assert g.shape == rg.shape, f"gradient of {name}: shape {tuple(g.shape)} != {tuple(rg.shape)}"
            errors[f"d{name}"] = relative_error(g, rg)
    return errors


class OutputSizes(TorchDispatchMode):
    """Records (aten op name, output elements) of every op run under it that writes its output (no views):
    what a block's backward materialises, e.g. a concatenation or a sum of gradients."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and not func.is_view:
            self.calls.append((func.overloadpacket.__name__, out.numel()))
        return out
