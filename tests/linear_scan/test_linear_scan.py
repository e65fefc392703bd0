"""linear_scan: the fast path against the sequential reference, gradients, states, dtypes, validation."""
import pytest
import torch

from ssm_kernels import _dispatch
from ssm_kernels.linear_scan import linear_scan
from ssm_kernels.linear_scan.reference import linear_scan_ref
from ssm_kernels.testing import assert_close
from tests.helpers import HAS_CUDA, backend_device, check_parity

BACKENDS = list(_dispatch.implemented_backends("linear_scan"))  # torch (any device), cpp (CPU), triton


@pytest.fixture
def device(backend):
    return backend_device(backend)


def make_inputs(batch, dim, length, device, *, gate_shape="full", dtype=torch.float32,
                gate_dtype=None, complex_gates=False, init=True, zeros=True, transposed=False):
    """Gates around |a| ~ 0.9 with some exact zeros (resets) and some |a| > 1."""
    shape = {"full": (batch, dim, length), "DL": (dim, length), "D": (dim,)}[gate_shape]
    gates = 0.6 + 0.5 * torch.rand(shape, device=device)
    if complex_gates:
        gates = torch.polar(gates, torch.randn(shape, device=device))
    if zeros:
        gates = gates * (torch.rand(shape, device=device) > 0.1)
    drawn = dtype if dtype.is_complex else torch.float32
    if transposed:  # (B, L, D) memory seen as (B, D, L)
        tokens = torch.randn(batch, length, dim, device=device, dtype=drawn).to(dtype).transpose(1, 2)
    else:
        tokens = torch.randn(batch, dim, length, device=device, dtype=drawn).to(dtype)
    gate_dtype = gate_dtype or (torch.complex64 if complex_gates else dtype)
    initial = torch.randn(batch, dim, device=device, dtype=drawn).to(dtype) if init else None
    return {"gates": gates.to(gate_dtype), "tokens": tokens, "initial_state": initial}


def run(backend):
    return lambda **kw: linear_scan(**kw, backend=backend)


def _reference_cases():
    """(backend, dtype, length): the Triton backend at length 1025 in 16 bits (about 24 s each in the CPU
    interpreter) is slow on a CPU, where fp32 keeps that length; natively every case runs."""
    for backend in BACKENDS:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for length in (1, 7, 63, 130, 1025):
                slow = backend == "triton" and length == 1025 and dtype != torch.float32
                yield pytest.param(backend, dtype, length, marks=[pytest.mark.slow] if slow else [],
                                   id=f"{backend}-{str(dtype).replace('torch.', '')}-{length}")


@pytest.mark.parametrize("backend,dtype,length", _reference_cases())
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_reference(backend, device, dtype, length, reverse):
    inputs = make_inputs(2, 8, length, device, dtype=dtype)
    check_parity(run(backend), linear_scan_ref, inputs, dtype, ["gates", "tokens", "initial_state"],
                 reverse=reverse, return_final_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gate_shape", ["DL", "D"])
@pytest.mark.parametrize("reverse", [False, True])
def test_broadcast_gates(backend, device, gate_shape, reverse):
    inputs = make_inputs(3, 8, 130, device, gate_shape=gate_shape)
    check_parity(run(backend), linear_scan_ref, inputs, torch.float32, ["gates", "tokens", "initial_state"],
                 reverse=reverse, return_final_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokens_dtype,complex_gates", [(torch.complex64, True), (torch.complex64, False),
                                                         (torch.float32, True)])
def test_complex(backend, device, tokens_dtype, complex_gates):
    device = device
    inputs = make_inputs(2, 8, 130, device, complex_gates=complex_gates)
    tokens = torch.randn(2, 8, 130, device=device, dtype=tokens_dtype)
    inputs["tokens"], inputs["initial_state"] = tokens, torch.randn(2, 8, device=device, dtype=tokens_dtype)
    assert linear_scan(**inputs).dtype == torch.complex64
    check_parity(run(backend), linear_scan_ref, inputs, torch.complex64, ["gates", "tokens", "initial_state"],
                 reverse=True, return_final_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_precision_gates(backend, device):
    """fp32 gates (parameters) with bf16 tokens: the output stays bf16, the gates' gradient fp32."""
    inputs = make_inputs(2, 8, 63, device, dtype=torch.bfloat16, gate_dtype=torch.float32,
                         gate_shape="D")
    assert linear_scan(**inputs).dtype == torch.bfloat16
    check_parity(run(backend), linear_scan_ref, inputs, torch.bfloat16, ["gates", "tokens", "initial_state"],
                 return_final_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
@pytest.mark.parametrize("reverse", [False, True])
def test_noncontiguous(backend, device, dtype, reverse):
    inputs = make_inputs(2, 16, 257, device, transposed=True, dtype=dtype, complex_gates=dtype.is_complex)
    inputs["gates"] = inputs["gates"].transpose(0, 2).contiguous().transpose(0, 2)
    assert not inputs["tokens"].is_contiguous() and not inputs["gates"].is_contiguous()
    check_parity(run(backend), linear_scan_ref, inputs, dtype, ["gates", "tokens", "initial_state"],
                 reverse=reverse, return_final_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("split", [1, 64, 129])
def test_split_with_state_equals_whole(backend, device, reverse, split):
    inputs = make_inputs(2, 8, 130, device)
    a, b, h = inputs["gates"], inputs["tokens"], inputs["initial_state"]
    whole, whole_state = linear_scan(a, b, h, reverse=reverse, return_final_state=True, backend=backend)
    first, second = (slice(split, None), slice(None, split)) if reverse else (slice(None, split), slice(split, None))
    x1, state = linear_scan(a[..., first], b[..., first], h, reverse=reverse, return_final_state=True,
                            backend=backend)
    x2, state2 = linear_scan(a[..., second], b[..., second], state, reverse=reverse, return_final_state=True,
                             backend=backend)
    parts = [x2, x1] if reverse else [x1, x2]
    assert_close(torch.cat(parts, -1), whole, torch.float32, "split output")
    assert_close(state2, whole_state, torch.float32, "final state")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", ["real", "complex", "complex_tokens"])
@pytest.mark.parametrize("block_l,tile", [(16, 16), (16, 64)])
def test_triton_segments(monkeypatch, kind, reverse, block_l, tile):
    """Few rows, long sequences: the two-pass segmented scan (small blocks force many segments), every
    gradient, with rows tiles that leave channels masked (tile 64: 4 rows per tile, D = 3)."""
    device = backend_device("triton")
    from ssm_kernels.linear_scan import triton as scan_triton
    monkeypatch.setattr(scan_triton, "MAX_BLOCK_L", block_l)
    monkeypatch.setattr(scan_triton, "TILE", tile)
    assert scan_triton.plan(1, 3, 261, device)[2] > 1
    inputs = make_inputs(1, 3, 261, device, complex_gates=kind == "complex")
    dtype = torch.float32
    if kind != "real":
        inputs["tokens"] = torch.randn(1, 3, 261, device=device, dtype=torch.complex64)
        inputs["initial_state"] = torch.randn(1, 3, device=device, dtype=torch.complex64)
        dtype = torch.complex64
    check_parity(run("triton"), linear_scan_ref, inputs, dtype, ["gates", "tokens", "initial_state"],
                 reverse=reverse, return_final_state=True)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_triton_segments_packed(monkeypatch, kind, reverse):
    """Packed sequences in segments: tiles at multiples of BLOCK_L in memory, so sequences start and end inside
    tiles (one more tile than their length needs), an empty sequence among them."""
    device = backend_device("triton")
    from ssm_kernels.linear_scan import triton as scan_triton
    monkeypatch.setattr(scan_triton, "MAX_BLOCK_L", 16)
    monkeypatch.setattr(scan_triton, "TILE", 16)
    lengths = [37, 0, 100, 5]
    assert scan_triton.plan(len(lengths), 3, max(lengths), device, packed=True)[2] > 1
    inputs = make_inputs(1, 3, sum(lengths), device, complex_gates=kind == "complex", init=False)
    inputs["initial_state"] = torch.randn(len(lengths), 3, device=device)
    dtype = torch.float32
    if kind == "complex":
        inputs["tokens"] = torch.randn(1, 3, sum(lengths), device=device, dtype=torch.complex64)
        dtype = torch.complex64
    inputs["cu_seqlens"] = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
    check_parity(run("triton"), linear_scan_ref, inputs, dtype, ["gates", "tokens", "initial_state"],
                 reverse=reverse, return_final_state=True)


@pytest.mark.skipif(not HAS_CUDA, reason="the kernels' sizes natively (the interpreter compiles nothing)")
@pytest.mark.parametrize("n_segments", [2, 3, 5])
def test_triton_few_segments_at_real_block_sizes(n_segments):
    """Two to five segments of 2048-position blocks (few rows): Triton 3.6 failed to compile the scan over two
    segment summaries (BLOCK_S 2) at lengths divisible by 16, which only the GPU compiler sees."""
    from ssm_kernels.linear_scan import triton as scan_triton
    length = n_segments * scan_triton.MAX_BLOCK_L - 16  # a multiple of 16 (Triton specialises on it), one short tile
    assert scan_triton.plan(1, 3, length, torch.device("cuda"))[2] == n_segments
    inputs = make_inputs(1, 3, length, "cuda", zeros=False)
    inputs["gates"] = inputs["gates"].abs().clamp(max=1.0)
    check_parity(lambda **kw: linear_scan(**kw, return_final_state=True, backend="triton"),
                 lambda **kw: _torch_fp64(**kw), inputs, torch.float32, ["gates", "tokens", "initial_state"],
                 reverse=False)


def _torch_fp64(**inputs):
    """The torch backend in fp64 (complex128): the yardstick for lengths the sequential reference is too slow
    for; itself checked against the reference above."""
    wide = {k: None if v is None else v.to(torch.complex128 if v.is_complex() else torch.float64)
            for k, v in inputs.items() if k in ("gates", "tokens", "initial_state")}
    x, state = linear_scan(**wide, reverse=inputs["reverse"], return_final_state=True, backend="torch")
    out = torch.complex64 if x.is_complex() else torch.float32
    return x.to(out), state.to(out)


@pytest.mark.skipif(not HAS_CUDA, reason="long sequences natively on the GPU (the interpreter would take hours)")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("length", [4095, 65536, 2**20])
@pytest.mark.parametrize("batch,dim,kind", [(1, 4, "real"), (2, 64, "complex")])
def test_long_sequences(backend, length, batch, dim, kind):
    """Few long rows: both GPU backends split them into segments scanned apart and joined (the dispatch table
    sends such calls to the CUDA backend)."""
    problem = _dispatch.backend_problem(backend, torch.device("cuda"), "linear_scan")
    if problem:
        pytest.skip(problem)
    inputs = make_inputs(batch, dim, length, "cuda", complex_gates=kind == "complex", zeros=False)
    inputs["gates"] = inputs["gates"].abs().clamp(max=1.0)  # bounded states over 2**20 steps
    if kind == "complex":
        inputs["gates"] = torch.polar(inputs["gates"], torch.randn_like(inputs["gates"]))
    for reverse in (False, True):
        check_parity(lambda **kw: linear_scan(**kw, return_final_state=True, backend=backend),
                     lambda **kw: _torch_fp64(**kw), inputs, torch.complex64 if kind == "complex" else torch.float32,
                     ["gates", "tokens", "initial_state"], reverse=reverse)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("gate_shape,kind", [("full", "real"), ("DL", "complex"), ("D", "real_bf16")])
def test_packed_sequences(backend, device, reverse, gate_shape, kind):
    """cu_seqlens: every packed sequence its own scan from its own initial state (empty ones pass it through),
    against the reference on each sequence alone; every gradient and the per-sequence final states."""
    lengths = [5, 0, 130, 1, 64]
    dtype = torch.bfloat16 if kind == "real_bf16" else torch.float32
    inputs = make_inputs(1, 6, sum(lengths), device, gate_shape=gate_shape, dtype=dtype,
                         complex_gates=kind == "complex", init=False)
    inputs["initial_state"] = torch.randn(len(lengths), 6, device=device).to(dtype)
    if kind == "complex":
        inputs["tokens"] = torch.randn(1, 6, sum(lengths), device=device, dtype=torch.complex64)
        dtype = torch.complex64
    inputs["cu_seqlens"] = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
    check_parity(run(backend), linear_scan_ref, inputs, dtype, ["gates", "tokens", "initial_state"],
                 reverse=reverse, return_final_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_sequences_equal_separate_calls(backend, device):
    lengths = [70, 3, 129]
    inputs = make_inputs(1, 8, sum(lengths), device, init=False)
    initial = torch.randn(3, 8, device=device)
    cu = torch.tensor([0, 70, 73, 202], device=device)
    x, final = linear_scan(inputs["gates"], inputs["tokens"], initial, cu_seqlens=cu, return_final_state=True,
                           backend=backend)
    for n, (start, end) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        alone, state = linear_scan(inputs["gates"][..., start:end], inputs["tokens"][..., start:end],
                                   initial[n:n + 1], return_final_state=True, backend=backend)
        assert_close(x[..., start:end], alone, torch.float32, f"sequence {n}")
        assert_close(final[n:n + 1], state, torch.float32, f"final state {n}")


def test_zero_gate_resets_and_large_gates():
    """A zero gate forgets everything before it exactly; |a| > 1 grows without any log/division trouble."""
    gates = torch.full((1, 2, 200), 1.05)
    gates[..., 100] = 0.0
    tokens = torch.randn(1, 2, 200)
    x = linear_scan(gates, tokens)
    tail = linear_scan(gates[..., 100:], tokens[..., 100:])
    assert_close(x[..., 100:], tail, torch.float32, "after the reset")
    assert_close(x, linear_scan_ref(gates, tokens), torch.float32)


def test_final_state_gradient_reaches_inputs():
    gates = torch.tensor([[[0.5, 2.0, 3.0]]], requires_grad=True)
    tokens = torch.randn(1, 1, 3, requires_grad=True)
    init = torch.randn(1, 1, requires_grad=True)
    _, state = linear_scan(gates, tokens, init, return_final_state=True)
    state.sum().backward()
    assert torch.allclose(tokens.grad, torch.tensor([[[6.0, 3.0, 1.0]]]))  # d x_2 / d b_t = a_{t+1}...a_2
    assert torch.allclose(init.grad, torch.tensor([[3.0]]))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("gate_shape,complex_gates", [("full", True), ("DL", False), ("D", True)])
def test_gradcheck(reverse, gate_shape, complex_gates):
    inputs = make_inputs(2, 3, 11, "cpu", gate_shape=gate_shape, complex_gates=complex_gates, dtype=torch.float64,
                         gate_dtype=torch.complex128 if complex_gates else torch.float64)
    tokens = torch.randn(2, 3, 11, dtype=torch.complex128).requires_grad_()
    args = [inputs["gates"].requires_grad_(), tokens, torch.randn(2, 3, dtype=torch.complex128).requires_grad_()]

    def fn(a, b, h):
        return linear_scan(a, b, h, reverse=reverse, return_final_state=True)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b.real, reverse=reverse), args[:2])


def test_empty_sequence():
    init = torch.randn(2, 3, requires_grad=True)
    x, state = linear_scan(torch.rand(3), torch.randn(2, 3, 0), init, return_final_state=True)
    assert x.shape == (2, 3, 0) and torch.equal(state, init)
    _, zeros = linear_scan(torch.rand(3), torch.randn(2, 3, 0), return_final_state=True)
    assert torch.equal(zeros, torch.zeros(2, 3))


def test_compile_fullgraph():
    inputs = make_inputs(2, 8, 70, "cpu")
    compiled = torch.compile(lambda a, b, h: linear_scan(a, b, h, return_final_state=True), fullgraph=True,
                             backend="aot_eager")
    leaves = [inputs[k].requires_grad_() for k in ("gates", "tokens", "initial_state")]
    x, state = compiled(*leaves)
    ref, ref_state = linear_scan_ref(*leaves, return_final_state=True)
    assert_close(x, ref, torch.float32)
    (x.sum() + state.sum()).backward()
    assert leaves[0].grad is not None and leaves[2].grad is not None


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(tokens=torch.randn(2, 8)), ValueError, r"tokens must have shape \(B, D, L\)"),
    (dict(cu_seqlens=torch.tensor([0, 16])), ValueError, "needs batch size B = 1"),
    (dict(gates=torch.rand(2, 8, 15)), ValueError, r"gates must have shape \(B, D, L\) = \(2, 8, 16\)"),
    (dict(gates=torch.rand(7, 16)), ValueError, r"gates must have shape \(D, L\) = \(8, 16\)"),
    (dict(gates=torch.rand(9)), ValueError, r"gates must have shape \(D,\) = \(8,\)"),
    (dict(gates=torch.rand(1, 2, 8, 16)), ValueError, r"gates must have shape \(B, D, L\) = \(2, 8, 16\), \(D, L\)"),
    (dict(initial_state=torch.randn(2, 7)), ValueError, r"initial_state must have shape \(B, D\) = \(2, 8\)"),
    (dict(tokens=torch.randint(0, 3, (2, 8, 16))), TypeError, "tokens must have dtype"),
    (dict(gates=[0.5]), TypeError, "gates must be a torch.Tensor"),
    (dict(initial_state=torch.zeros(2, 8, dtype=torch.int64)), TypeError, "initial_state must have dtype"),
    (dict(backend="cuda"), RuntimeError, "needs CUDA tensors"),
    (dict(tokens=torch.randn(1, 8, 16), gates=torch.rand(8), cu_seqlens=torch.tensor([0, 9, 7, 16])), ValueError,
     "cu_seqlens must be non-decreasing"),
    (dict(tokens=torch.randn(1, 8, 16), gates=torch.rand(8), cu_seqlens=torch.tensor([0, 9, 15])), ValueError,
     "cu_seqlens must start at 0 and end at L = 16"),
    (dict(tokens=torch.randn(1, 8, 16), gates=torch.rand(8), cu_seqlens=torch.tensor([0.0, 16.0])), TypeError,
     "cu_seqlens must have dtype"),
    (dict(tokens=torch.randn(1, 8, 16), gates=torch.rand(8), cu_seqlens=torch.tensor([0, 16]),
          initial_state=torch.randn(2, 8)), ValueError, r"initial_state must have shape \(S, D\) = \(1, 8\)"),
    (dict(backend="jax"), ValueError, "unknown backend"),
])
def test_validation(kwargs, error, match):
    args = dict(gates=torch.rand(2, 8, 16), tokens=torch.randn(2, 8, 16))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        linear_scan(**args)
