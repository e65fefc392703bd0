"""selective_scan: every backend against the sequential fp32 reference, states, varlen, validation."""
import math

import pytest
import torch

from ssm_kernels import _dispatch
from ssm_kernels.selective_scan import selective_scan, selective_scan_fn
from ssm_kernels.selective_scan import _chunked
from ssm_kernels.selective_scan.reference import selective_scan_ref
from ssm_kernels.testing import assert_close
from tests.helpers import backend_device, check_parity

BACKENDS = list(_dispatch.implemented_backends("selective_scan"))
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ALL_GRADS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
              return_final_state=False, cu_seqlens=None):
    y, state = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens)
    return (y, state) if return_final_state else y


def make_inputs(batch, dim, length, dstate, dtype, device, *, bc="variable", groups=2, complex_A=False,
                interleaved=False, init=True, transposed=False, decay=1.0):
    """Mamba-like inputs: A = -(1..N) scaled by `decay` (S4D-real; S4D-lin imaginary parts when complex),
    Δ = softplus(delta + delta_bias) mostly in [0.01, 0.5]."""
    def seq(*lead):  # (*lead, L) in dtype, or a transposed view of (*lead[:1], L, *lead[1:]) memory
        if transposed:
            return torch.randn(lead[0], length, *lead[1:], device=device).to(dtype).movedim(1, -1)
        return torch.randn(*lead, length, device=device).to(dtype)
    A = -decay * torch.arange(1, dstate + 1, device=device, dtype=torch.float32).repeat(dim, 1)
    A = A * (0.5 + torch.rand(dim, dstate, device=device))
    if complex_A:
        A = torch.complex(A / dstate, math.pi * torch.arange(dstate, device=device).float().repeat(dim, 1))

    def bc_tensor():
        if bc == "fixed":
            return torch.randn(dim, dstate, device=device, dtype=A.dtype)
        lead = (batch, dstate) if bc == "variable" else (batch, groups, dstate)
        if complex_A and interleaved:
            return torch.randn(*lead, 2 * length, device=device).to(dtype)
        if complex_A:
            return torch.randn(*lead, length, device=device, dtype=torch.complex64)
        return seq(*lead)
    return {
        "u": seq(batch, dim), "delta": (seq(batch, dim).float() * 0.5 - 1.0).to(dtype),
        "A": A, "B": bc_tensor(), "C": bc_tensor(),
        "D": torch.randn(dim, device=device), "z": seq(batch, dim),
        "delta_bias": torch.rand(dim, device=device) - 1.5,
        "initial_state": torch.randn(batch, dim, dstate, device=device, dtype=A.dtype) if init else None,
    }


def run(backend):
    return lambda **kw: selective_scan(**kw, backend=backend)


def real_outputs(fn):
    """check_parity builds a real loss: complex states are compared as (..., 2) real views."""
    def wrapped(**kw):
        return tuple(torch.view_as_real(o) if o.is_complex() else o for o in fn(**kw))
    return wrapped


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bc,length", [("variable", 130), ("grouped", 63), ("fixed", 7), ("variable", 1)])
def test_matches_reference(backend, dtype, bc, length):
    device = backend_device(backend)
    inputs = make_inputs(2, 8, length, 4, dtype, device, bc=bc)
    check_parity(run(backend), reference, inputs, dtype, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bc,interleaved", [("variable", False), ("variable", True), ("grouped", True),
                                            ("fixed", False)])
def test_complex_A(backend, bc, interleaved):
    device = backend_device(backend)
    inputs = make_inputs(2, 6, 70, 4, torch.float32, device, bc=bc, complex_A=True, interleaved=interleaved)
    check_parity(real_outputs(run(backend)), real_outputs(reference), inputs, torch.float32, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strong_decay_and_growth_split_chunks(backend):
    """Decays far beyond the chunk budget (sub-chunks, steps that wipe the state) and, without softplus,
    negative Δ (growth): still the sequential result."""
    device = backend_device(backend)
    inputs = make_inputs(1, 6, 150, 3, torch.float32, device, decay=30.0)
    check_parity(run(backend), reference, inputs, torch.float32, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)
    inputs = make_inputs(2, 4, 40, 3, torch.float32, device, decay=0.05)
    check_parity(run(backend), reference, inputs, torch.float32, ALL_GRADS, return_final_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_noncontiguous_inputs(backend, dtype):
    device = backend_device(backend)
    inputs = make_inputs(2, 8, 67, 4, dtype, device, bc="grouped", transposed=True)
    assert not inputs["u"].is_contiguous() and not inputs["B"].is_contiguous()
    check_parity(run(backend), reference, inputs, dtype, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("complex_A", [False, True])
def test_varlen_equals_separate_sequences(backend, complex_A):
    device = backend_device(backend)
    lengths = [5, 1, 0, 70, 9]
    parts = [make_inputs(1, 6, n, 4, torch.float32, device, complex_A=complex_A, interleaved=True) for n in lengths]
    shared = {k: parts[0][k] for k in ("A", "D", "delta_bias")}
    packed = {k: torch.cat([p[k] for p in parts], dim=-1 if k != "initial_state" else 0)
              for k in ("u", "delta", "B", "C", "z", "initial_state")}
    cu_seqlens = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
    y, states = selective_scan(**packed, **shared, delta_softplus=True, cu_seqlens=cu_seqlens,
                               return_final_state=True, backend=backend)
    separate = [selective_scan(**{k: p[k] for k in ("u", "delta", "B", "C", "z", "initial_state")}, **shared,
                               delta_softplus=True, return_final_state=True, backend=backend) for p in parts]
    assert_close(y, torch.cat([s[0] for s in separate], -1), torch.float32, "packed output")
    assert_close(states, torch.cat([s[1] for s in separate], 0), torch.float32, "final state per sequence")
    inputs = dict(packed, **shared)
    check_parity(real_outputs(run(backend)), real_outputs(reference), inputs, torch.float32, ALL_GRADS, delta_softplus=True,
                 return_final_state=True, cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", [1, 64, 99])
def test_split_with_state_equals_whole(backend, split):
    device = backend_device(backend)
    inputs = make_inputs(2, 8, 100, 4, torch.float32, device, init=False)
    kw = dict(A=inputs["A"], D=inputs["D"], delta_bias=inputs["delta_bias"], delta_softplus=True,
              return_final_state=True, backend=backend)
    part = lambda k, sl: inputs[k][..., sl]  # noqa: E731
    whole, whole_state = selective_scan(*(inputs[k] for k in ("u", "delta")), B=inputs["B"], C=inputs["C"],
                                        z=inputs["z"], **kw)
    first, state = selective_scan(*(part(k, slice(0, split)) for k in ("u", "delta")), B=part("B", slice(0, split)),
                                  C=part("C", slice(0, split)), z=part("z", slice(0, split)), **kw)
    second, second_state = selective_scan(*(part(k, slice(split, None)) for k in ("u", "delta")),
                                          B=part("B", slice(split, None)), C=part("C", slice(split, None)),
                                          z=part("z", slice(split, None)), initial_state=state, **kw)
    assert_close(torch.cat([first, second], -1), whole, torch.float32, "split output")
    assert_close(second_state, whole_state, torch.float32, "final state")


@pytest.mark.parametrize("backend", BACKENDS)
def test_final_state_gradient_reaches_inputs(backend):
    """A loss on the final state alone back-propagates, and matches the reference's gradient."""
    inputs = make_inputs(1, 4, 80, 3, torch.float32, backend_device(backend))
    check_parity(lambda **kw: selective_scan(**kw, delta_softplus=True, return_final_state=True,
                                             backend=backend)[1],
                 lambda **kw: reference(**kw, delta_softplus=True, return_final_state=True)[1], inputs,
                 torch.float32, ["u", "delta", "A", "B", "delta_bias", "initial_state"])


@pytest.mark.parametrize("complex_A", [False, True])
def test_gradcheck_fp64(complex_A):
    inputs = make_inputs(1, 2, 9, 2, torch.float64, "cpu", bc="variable", complex_A=complex_A, interleaved=True)
    names = ["u", "delta", "A", "B", "C", "initial_state"]
    args = []
    for name in names:
        t = inputs[name].detach()
        t = t.to(torch.complex128 if t.is_complex() else torch.float64)
        args.append(t.requires_grad_())
    cu_seqlens = torch.tensor([0, 4, 9])
    state = args[-1][:1].detach().repeat(2, 1, 1).requires_grad_()

    def fn(u, delta, A, B, C, init):
        return selective_scan(u, delta, A, B, C, delta_softplus=True, initial_state=init, return_final_state=True)

    def packed(u, delta, A, B, C, init):
        return selective_scan(u, delta, A, B, C, initial_state=init, cu_seqlens=cu_seqlens, return_final_state=True)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradcheck(packed, args[:-1] + [state])


def test_empty_sequence():
    inputs = make_inputs(2, 3, 0, 4, torch.float32, "cpu")
    y, state = selective_scan(**inputs, return_final_state=True)
    assert y.shape == (2, 3, 0) and torch.equal(state, inputs["initial_state"])


def test_selective_scan_fn_convention():
    inputs = make_inputs(2, 4, 9, 3, torch.float32, "cpu", init=False)
    del inputs["initial_state"]
    out = selective_scan_fn(**inputs, delta_softplus=True)
    out2, last = selective_scan_fn(**inputs, delta_softplus=True, return_last_state=True)
    expected, expected_last = reference(**inputs, delta_softplus=True, return_final_state=True)
    assert isinstance(out, torch.Tensor) and torch.equal(out, out2)
    assert_close(out, expected, torch.float32)
    assert_close(last, expected_last, torch.float32, "last state")


def test_checkpoints_are_sparse():
    """The saved tensors of the fast path hold states only every CHUNK positions, not all (B, D, L, N)."""
    inputs = make_inputs(1, 4, 3 * _chunked.CHUNK + 5, 2, torch.float32, "cpu")
    inputs = {k: v.requires_grad_() for k, v in inputs.items()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        selective_scan(**inputs)
    assert max(saved) < 1 * 4 * 3 * _chunked.CHUNK * 2


def test_compile_fullgraph():
    inputs = make_inputs(2, 4, 20, 3, torch.float32, "cpu", bc="grouped")
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    compiled = torch.compile(lambda **kw: selective_scan(**kw, delta_softplus=True, return_final_state=True),
                             fullgraph=True, backend="aot_eager")
    y, state = compiled(**leaves)
    (y.sum() + state.sum()).backward()
    expected, expected_state = reference(**inputs, delta_softplus=True, return_final_state=True)
    assert_close(y, expected, torch.float32)
    assert_close(state, expected_state, torch.float32, "final state")
    assert leaves["A"].grad is not None and leaves["initial_state"].grad is not None


@pytest.mark.parametrize("dim,dstate,length,bc,groups", [
    (20, 5, 37, "fixed", 1),       # D not a multiple of the channel block, N not a power of two
    (6, 3, 19, "grouped", 2),      # 3 channels per group: one channel per program
    (2, 130, 19, "variable", 1),   # large N (N block 256, short chunks), L not a multiple of the chunk
    (16, 2, 50, "grouped", 4),
])
def test_triton_block_edges(dim, dstate, length, bc, groups):
    device = backend_device("triton")
    inputs = make_inputs(2, dim, length, dstate, torch.float32, device, bc=bc, groups=groups)
    check_parity(run("triton"), reference, inputs, torch.float32, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)


@pytest.mark.parametrize("bc,interleaved,dtype", [("fixed", False, torch.float32), ("grouped", True, torch.bfloat16)])
def test_triton_complex_A_edges(bc, interleaved, dtype):
    """Complex A with N not a power of two, D not a multiple of the channel block, low-precision data."""
    device = backend_device("triton")
    inputs = make_inputs(2, 10, 23, 5, dtype, device, bc=bc, complex_A=True, interleaved=interleaved)
    check_parity(real_outputs(run("triton")), real_outputs(reference), inputs, dtype, ALL_GRADS,
                 delta_softplus=True, return_final_state=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_optional_inputs_absent_and_mixed_bc(dtype):
    """No D, z, delta_bias, initial state or softplus; B fixed while C is variable (and the reverse)."""
    device = backend_device("triton")
    inputs = make_inputs(2, 8, 45, 6, dtype, device, init=False)
    for k in ("D", "z", "delta_bias", "initial_state"):
        inputs[k] = None
    inputs["delta"] = (inputs["delta"].float().abs() * 0.3).to(dtype)  # Δ > 0 without softplus
    fixed = make_inputs(2, 8, 45, 6, dtype, device, bc="fixed")["B"]
    check_parity(run("triton"), reference, dict(inputs, B=fixed), dtype, ["u", "delta", "A", "B", "C"],
                 return_final_state=True)
    check_parity(run("triton"), reference, dict(inputs, C=fixed), dtype, ["u", "delta", "A", "B", "C"])


@pytest.mark.parametrize("complex_A", [False, True])
def test_triton_empty_sequence_passes_the_state_and_its_gradient(complex_A):
    device = backend_device("triton")
    inputs = make_inputs(2, 3, 0, 4, torch.float32, device, complex_A=complex_A)
    state = inputs["initial_state"].requires_grad_()
    y, final = selective_scan(**inputs, return_final_state=True, backend="triton")
    assert y.shape == (2, 3, 0) and torch.equal(final, state.detach())
    cotangent = torch.randn_like(final)
    (grad,) = torch.autograd.grad(torch.real(final * cotangent.conj()).sum(), [state])
    assert torch.equal(grad, cotangent)


def test_triton_varlen_without_initial_state():
    device = backend_device("triton")
    inputs = make_inputs(1, 4, 40, 3, torch.float32, device, init=False)
    cu_seqlens = torch.tensor([0, 0, 17, 17, 18, 40], device=device)
    check_parity(run("triton"), reference, inputs, torch.float32, ALL_GRADS[:-1], delta_softplus=True,
                 return_final_state=True, cu_seqlens=cu_seqlens)


def test_triton_compile_fullgraph():
    device = backend_device("triton")
    inputs = make_inputs(2, 4, 20, 3, torch.float32, device, bc="grouped")
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    compiled = torch.compile(lambda **kw: selective_scan(**kw, delta_softplus=True, return_final_state=True,
                                                         backend="triton"), fullgraph=True, backend="aot_eager")
    y, state = compiled(**leaves)
    (y.sum() + state.sum()).backward()
    expected, expected_state = reference(**inputs, delta_softplus=True, return_final_state=True)
    assert_close(y, expected, torch.float32)
    assert_close(state, expected_state, torch.float32, "final state")
    grads = {k: v.grad for k, v in leaves.items()}
    ref_leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    y, state = reference(**ref_leaves, delta_softplus=True, return_final_state=True)
    (y.sum() + state.sum()).backward()
    for k, v in ref_leaves.items():
        assert_close(grads[k], v.grad, torch.float32, f"gradient of {k}")


def test_triton_checkpoints_are_sparse():
    """The Triton forward saves states every BLOCK_L positions only, not (B, D, L, N)."""
    device = backend_device("triton")
    inputs = make_inputs(1, 4, 200, 2, torch.float32, device)
    inputs = {k: v.requires_grad_() for k, v in inputs.items()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        selective_scan(**inputs, delta_softplus=True, backend="triton")
    assert max(saved) < 1 * 4 * 200 * 2  # (B, D, L, N)


def _base():
    return dict(u=torch.randn(2, 8, 16), delta=torch.randn(2, 8, 16), A=-torch.rand(8, 4),
                B=torch.randn(2, 4, 16), C=torch.randn(2, 4, 16))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(u=torch.randn(2, 8)), ValueError, r"u must have shape \(B, D, L\)"),
    (dict(delta=torch.randn(2, 8, 15)), ValueError, r"delta must have shape \(B, D, L\) = \(2, 8, 16\)"),
    (dict(A=torch.randn(7, 4)), ValueError, r"A must have shape \(D, N\) = \(8, N\)"),
    (dict(A=torch.randn(8, 4, dtype=torch.bfloat16)), TypeError, "A must have dtype"),
    (dict(B=torch.randn(2, 5, 16)), ValueError, r"B must have shape \(B, N, L\) = \(2, 4, 16\)"),
    (dict(C=torch.randn(2, 3, 4, 16)), ValueError, "C has 3 groups, which must divide D = 8"),
    (dict(B=torch.randn(8, 4, dtype=torch.complex64)), TypeError, "B must have dtype"),
    (dict(A=torch.randn(8, 4, dtype=torch.complex64), B=torch.randn(2, 4, 16)), ValueError,
     r"B must have shape \(B, N, 32\)"),
    (dict(D=torch.randn(9)), ValueError, r"D must have shape \(D,\) = \(8,\)"),
    (dict(z=torch.randn(2, 8, 17)), ValueError, r"z must have shape \(B, D, L\)"),
    (dict(delta_bias=torch.randn(8, dtype=torch.float16)), TypeError, "delta_bias must have dtype"),
    (dict(initial_state=torch.randn(2, 8, 5)), ValueError, r"initial_state must have shape \(B, D, N\) = \(2, 8, 4\)"),
    (dict(delta_softplus=1), TypeError, "delta_softplus must be a bool"),
    (dict(cu_seqlens=torch.tensor([0, 16])), ValueError, "needs batch size B = 1"),
    (dict(u=[1.0]), TypeError, "u must be a torch.Tensor"),
    (dict(backend="cuda"), RuntimeError, r"backend 'cuda' .*cannot run"),
])
def test_validation(kwargs, error, match):
    args = _base()
    args.update(kwargs)
    with pytest.raises(error, match=match):
        selective_scan(**args)


def test_validation_after_a_passed_signature():
    """Validation is skipped for a signature (shapes, dtypes, devices) that passed before: a call differing in any
    of them, or in delta_softplus's type, is checked again."""
    args = _base()
    selective_scan(**args)
    selective_scan(**args)
    with pytest.raises(ValueError, match=r"delta must have shape \(B, D, L\) = \(2, 8, 16\)"):
        selective_scan(**dict(args, delta=torch.randn(2, 8, 15)))
    with pytest.raises(TypeError, match="delta_softplus must be a bool"):
        selective_scan(**args, delta_softplus=1)
    with pytest.raises(TypeError, match="A must have dtype"):
        selective_scan(**dict(args, A=args["A"].half()))


@pytest.mark.parametrize("cu_seqlens,match", [
    (torch.tensor([0, 9, 5, 16]), "non-decreasing"),
    (torch.tensor([0, 5, 15]), "end at L = 16"),
    (torch.tensor([1, 16]), "start at 0"),
    (torch.tensor([0.0, 16.0]), "cu_seqlens must have dtype"),
])
def test_validation_cu_seqlens(cu_seqlens, match):
    args = {k: v[:1] if k in ("u", "delta", "B", "C") else v for k, v in _base().items()}
    with pytest.raises((ValueError, TypeError), match=match):
        selective_scan(**args, cu_seqlens=cu_seqlens)
    with pytest.raises(ValueError, match=r"initial_state must have shape \(S, D, N\) = \(2, 8, 4\)"):
        selective_scan(**args, cu_seqlens=torch.tensor([0, 5, 16]), initial_state=torch.randn(1, 8, 4))


@pytest.mark.parametrize("dim,dstate,length,bc,groups,dtype", [
    (32, 16, 1100, "grouped", 2, torch.bfloat16),  # 16 channels per backward block, 3 backward chunks
    (8, 40, 600, "variable", 1, torch.float32),    # dB / dC sums over the shared-memory budget: global partials
    (12, 5, 2100, "fixed", 1, torch.float16),      # 2 forward chunks, N not a power of two
    (24, 8, 777, "grouped", 3, torch.float32),     # 8 channels per group
])
def test_cuda_blocks_chunks_and_partials(dim, dstate, length, bc, groups, dtype):
    device = backend_device("cuda")
    inputs = make_inputs(2, dim, length, dstate, dtype, device, bc=bc, groups=groups)
    check_parity(run("cuda"), reference, inputs, dtype, ALL_GRADS, delta_softplus=True, return_final_state=True)


def test_cuda_mixed_dtypes_and_misaligned_rows():
    """delta / B in fp32 with bf16 u (the kernels read one dtype for u, delta, z: fp32 then), and rows that
    start off the 16-byte boundary (scalar loads)."""
    device = backend_device("cuda")
    inputs = make_inputs(2, 8, 1030, 4, torch.bfloat16, device)
    inputs["delta"], inputs["B"] = inputs["delta"].float(), inputs["B"].float()
    check_parity(run("cuda"), reference, inputs, torch.bfloat16, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)
    inputs = make_inputs(2, 8, 1030, 4, torch.float32, device)
    for k in ("u", "delta", "z", "B", "C"):
        t = inputs[k]
        inputs[k] = torch.cat([torch.zeros_like(t[..., :1]), t], -1)[..., 1:]
    check_parity(run("cuda"), reference, inputs, torch.float32, ALL_GRADS, delta_softplus=True,
                 return_final_state=True)


def test_cuda_backward_is_bitwise_reproducible(deterministic_mode):
    """In torch's deterministic mode the CUDA backward sums dB / dC as per-block partials with torch: bitwise
    reproducible (outside it, fp32 atomics as mamba_ssm's)."""
    device = backend_device("cuda")
    inputs = make_inputs(2, 64, 1500, 16, torch.float32, device, bc="grouped")
    grads = []
    for _ in range(2):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        y, state = selective_scan(**leaves, delta_softplus=True, return_final_state=True, backend="cuda")
        torch.manual_seed(3)
        cotangents = (torch.randn_like(y), torch.randn_like(state))
        grads.append(torch.autograd.grad((y, state), list(leaves.values()), cotangents))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_cuda_atomic_bc_rule(monkeypatch):
    """Where the CUDA backward adds dB / dC with atomics: variable B or C, the partials' grid under one wave
    (ATOMIC_BC_BELOW_BLOCKS_PER_SM blocks per SM), outside deterministic mode, ATOMIC_BC on (no GPU needed)."""
    import importlib
    cuda_backend = importlib.import_module("ssm_kernels.selective_scan.cuda")

    class Properties:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    wave = cuda_backend.ATOMIC_BC_BELOW_BLOCKS_PER_SM * 132
    device = torch.device("cuda", 0)
    assert cuda_backend._atomic_bc(False, False, 64, device)  # (1, 1024, 2048): 64 blocks of 16 channels
    assert cuda_backend._atomic_bc(True, False, wave - 1, device)
    assert not cuda_backend._atomic_bc(False, False, wave, device)
    assert not cuda_backend._atomic_bc(False, False, 1024, device)  # (4, 4096, 4096)
    assert not cuda_backend._atomic_bc(True, True, 64, device)  # both fixed: no (B, groups, N, L) sums
    monkeypatch.setattr(cuda_backend, "ATOMIC_BC", False)
    assert not cuda_backend._atomic_bc(False, False, 64, device)
    monkeypatch.setattr(cuda_backend, "ATOMIC_BC", True)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        assert not cuda_backend._atomic_bc(False, False, 64, device)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("bc,dtype,transposed,complex_A", [
    ("variable", torch.bfloat16, False, False), ("grouped", torch.float32, False, False),
    ("variable", torch.float32, True, False), ("grouped", torch.bfloat16, True, False),
    ("variable", torch.float32, False, True)])
def test_cuda_dB_dC_atomic_equals_deterministic(bc, dtype, transposed, complex_A):
    """dB / dC added with atomics into (B, groups, N, L) (outside deterministic mode) equal the deterministic
    mode's per-block partials summed by torch: on the plain kernels (unit strides, L a multiple of 4: 16-byte
    vector atomics), the general ones (strided inputs, odd L: scalar atomics, a ragged last thread) and complex A
    (8-byte atomics)."""
    device = backend_device("cuda")
    length = 1203 if transposed else 1500
    inputs = make_inputs(2, 64, length, 16, dtype, device, bc=bc, groups=2, transposed=transposed,
                         complex_A=complex_A)
    grads = {}
    for deterministic in (False, True):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        try:
            y, state = selective_scan(**leaves, delta_softplus=True, return_final_state=True, backend="cuda")
            loss = y.float().square().sum() + torch.view_as_real(state).sum() if complex_A else \
                y.float().square().sum() + state.sum()
            grads[deterministic] = torch.autograd.grad(loss, list(leaves.values()))
        finally:
            torch.use_deterministic_algorithms(False)
    for name, atomic, partials in zip(inputs, grads[False], grads[True]):
        assert_close(atomic, partials, dtype, f"d{name}")
