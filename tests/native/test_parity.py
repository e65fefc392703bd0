"""Native parity sweep of every GPU backend against the sequential reference: forward, every gradient and the
states, at lengths around block and chunk edges, every SSD chunk size, fp32 / fp16 / bf16, non-contiguous and
packed inputs, up to L = 65536 (tests/native/parity_cases.py); bitwise reproducibility of each backward; the
decoding steps in place. What the interpreter cannot give: the GPU compilers' code at the lengths where tiles,
chunks and grids change. Minutes per job, so it is its own run on the GPU machine:
`bash scripts/gpu_tests.sh -m parity` (the default native run leaves it out)."""
from __future__ import annotations

import math

import pytest
import torch

from ssm_kernels import _dispatch, causal_conv1d_update, selective_state_update
from ssm_kernels.testing import relative_error, tolerance
from tests.helpers import parity_errors
from tests.native.parity_cases import DTYPES, OPS

pytestmark = [pytest.mark.gpu, pytest.mark.parity]
DEVICE = "cuda"


def gpu_backends(op):
    """The op's implemented backends that run on a GPU (the registry's, less torch and the CPU-only cpp)."""
    return [b for b in _dispatch.implemented_backends(op) if b not in ("torch", "cpp")]


def dtype_id(dtype):
    return str(dtype).replace("torch.", "")


JOBS = [pytest.param(op, backend, dtype, id=f"{op}-{backend}-{dtype_id(dtype)}")
        for op in OPS for backend in gpu_backends(op) for dtype in DTYPES]


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    """The references' matmuls in full fp32 (TF32 would be the error measured)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def sweep(op, backend, dtype, device=DEVICE, quick=False):
    """[(case, worst tensor, its error)] over the op's cases for dtype, each against the reference."""
    make_cases, make_run = OPS[op]
    rows = []
    for case, inputs, grads, kwargs in make_cases(dtype, device, quick):
        kwargs = dict(kwargs)
        run, reference = make_run(backend, kwargs)
        grads = [g for g in grads if inputs.get(g) is not None]
        errors = parity_errors(run, reference, inputs, grads, **kwargs)
        tensor, error = max(errors.items(), key=lambda kv: math.inf if kv[1] != kv[1] else kv[1])
        rows.append((case, tensor, error))
    return rows


@pytest.mark.parametrize("op,backend,dtype", JOBS)
def test_matches_reference_at_every_edge(op, backend, dtype):
    rows = sweep(op, backend, dtype)
    bound = tolerance(dtype)
    failing = [r for r in rows if not r[2] <= bound]  # NaN fails too
    assert not failing, (f"{len(failing)} of {len(rows)} cases beyond {bound:.0e}: " +
                         "; ".join(f"{case}: {tensor} {error:.2e}" for case, tensor, error in failing))


@pytest.mark.parametrize("op,backend", [(op, b) for op in OPS for b in gpu_backends(op)])
def test_backward_is_bitwise_reproducible(op, backend, deterministic_mode):
    """Two backward passes of the first fp32 case on the same inputs and cotangent, in torch's deterministic
    mode: equal to the bit."""
    make_cases, make_run = OPS[op]
    _, inputs, grads, kwargs = next(make_cases(torch.float32, DEVICE, False))
    kwargs = dict(kwargs)
    run, _ = make_run(backend, kwargs)
    grads = [g for g in grads if inputs.get(g) is not None]
    results = []
    for _ in range(2):
        leaves = {k: (v.detach().requires_grad_(k in grads) if isinstance(v, torch.Tensor) and
                      (v.is_floating_point() or v.is_complex()) else v) for k, v in inputs.items()}
        y = run(**leaves, **kwargs)
        y = y[0] if isinstance(y, tuple) else y
        cotangent = torch.randn(y.shape, generator=torch.Generator(y.device).manual_seed(7), device=y.device,
                                dtype=y.dtype)
        results.append(torch.autograd.grad(y, [leaves[n] for n in grads], cotangent, allow_unused=True))
    for name, a, b in zip(grads, *results):
        assert (a is None and b is None) or torch.equal(a, b), f"d{name} differs between two runs"


def _state_update_inputs(dtype, batch, channels, headdim, dstate, device):
    lead = (batch, channels) if headdim is None else (batch, channels, headdim)
    per = lead[1:]
    bc = (batch, dstate) if headdim is None else (batch, 2, dstate)
    return dict(state=torch.randn(*lead, dstate, device=device), x=torch.randn(*lead, device=device).to(dtype),
                dt=torch.randn(*lead, device=device).to(dtype), A=-torch.rand(*per, dstate, device=device),
                B=torch.randn(*bc, device=device).to(dtype), C=torch.randn(*bc, device=device).to(dtype),
                D=torch.randn(*per, device=device), z=torch.randn(*lead, device=device).to(dtype),
                dt_bias=torch.randn(*per, device=device))


def _upcast(inputs):
    return {k: v.float() if isinstance(v, torch.Tensor) and v.dtype in (torch.float16, torch.bfloat16) else v
            for k, v in inputs.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("tokens,state_len", [(1, 3), (5, 7)])
def test_causal_conv1d_update_in_place(dtype, tokens, state_len):
    from ssm_kernels.causal_conv1d_update.reference import causal_conv1d_update_ref
    from tests.causal_conv1d_update.test_causal_conv1d_update import make_inputs
    inputs = make_inputs(4, 256, tokens, 4, state_len, dtype, DEVICE)
    ref_in = _upcast(inputs)
    ref_state = ref_in["conv_state"].clone()
    ref = causal_conv1d_update_ref(ref_in["x"], ref_state, ref_in["weight"], ref_in["bias"], "silu")
    state = inputs["conv_state"].clone()
    out = causal_conv1d_update(inputs["x"], state, inputs["weight"], inputs["bias"], "silu", backend="triton")
    assert relative_error(out, ref) <= tolerance(dtype) and relative_error(state, ref_state) <= tolerance(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("form,shape", [("mamba1", (3, 512, None, 16)), ("mamba2", (3, 8, 64, 128))])
def test_selective_state_update_in_place(dtype, form, shape):
    from ssm_kernels.selective_state_update.reference import selective_state_update_ref
    inputs = _state_update_inputs(dtype, *shape, DEVICE)
    ref_in = _upcast(inputs)
    ref_state = ref_in.pop("state").clone()
    if ref_state.dim() == 3:  # the Mamba-1 form is the reference's canonical form with P = 1, G = 1
        ref_in = {k: (v.unsqueeze(1) if k in ("B", "C") else v.unsqueeze(-2) if k == "A" else v.unsqueeze(-1))
                  for k, v in ref_in.items()}
        ref = selective_state_update_ref(ref_state.unsqueeze(2), **ref_in, dt_softplus=True).squeeze(-1)
    else:
        ref = selective_state_update_ref(ref_state, **ref_in, dt_softplus=True)
    state = inputs.pop("state").clone()
    out = selective_state_update(state, **inputs, dt_softplus=True, backend="triton")
    assert relative_error(out, ref) <= tolerance(dtype) and relative_error(state, ref_state) <= tolerance(dtype)
