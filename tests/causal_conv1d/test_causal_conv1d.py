"""causal_conv1d: every backend against the sequential fp32 reference, states, varlen, validation."""
import pytest
import torch

from ssm_kernels import _dispatch, causal_conv1d
from ssm_kernels.causal_conv1d._common import final_states
from ssm_kernels.causal_conv1d.reference import causal_conv1d_ref
from ssm_kernels.testing import assert_close
from tests.helpers import backend_device, check_parity

BACKENDS = list(_dispatch.implemented_backends("causal_conv1d"))
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference(x, weight, bias=None, activation=None, seq_idx=None, initial_states=None, return_final_states=False):
    y = causal_conv1d_ref(x, weight, bias, activation, seq_idx, initial_states)
    if return_final_states:
        return y, final_states(x, initial_states, seq_idx, weight.shape[1])
    return y


def make_inputs(batch, dim, length, width, dtype, device, *, bias=True, init=False, seq=False,
                transposed=False):
    if transposed:  # (B, L, D) memory viewed as (B, D, L): what Mamba's in_proj produces
        x = torch.randn(batch, length, dim, device=device).to(dtype).transpose(1, 2)
    else:
        x = torch.randn(batch, dim, length, device=device).to(dtype)
    inputs = {
        "x": x,
        "weight": (torch.randn(dim, width, device=device) / width ** 0.5).to(dtype),
        "bias": torch.randn(dim, device=device).to(dtype) if bias else None,
        "initial_states": torch.randn(batch, dim, width - 1, device=device).to(dtype) if init else None,
        "seq_idx": None,
    }
    if seq:  # 1 to 3 packed sequences per row, boundaries at random positions
        cuts = torch.randint(0, length, (batch, 2), device=device)
        positions = torch.arange(length, device=device)
        inputs["seq_idx"] = ((positions[None, None, :] >= cuts[:, :, None]).sum(1)).to(torch.int32)
    return inputs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width,length,activation", [(4, 63, "silu"), (1, 7, None), (2, 1, "silu"),
                                                       (3, 1025, None), (8, 200, "swish"), (5, 4, "silu")])
def test_matches_reference(backend, dtype, width, length, activation):
    device = backend_device(backend)
    inputs = make_inputs(2, 24, length, width, dtype, device, init=True)
    grads = ["x", "weight", "bias"] + (["initial_states"] if width > 1 else [])
    check_parity(lambda **kw: causal_conv1d(**kw, backend=backend), reference, inputs, dtype, grads,
                 activation=activation, return_final_states=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_seq_idx_noncontiguous_no_bias(backend, dtype):
    device = backend_device(backend)
    inputs = make_inputs(3, 40, 301, 4, dtype, device, bias=False, init=True, seq=True, transposed=True)
    assert not inputs["x"].is_contiguous()
    check_parity(lambda **kw: causal_conv1d(**kw, backend=backend), reference, inputs, dtype,
                 ["x", "weight", "initial_states"], activation="silu", return_final_states=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transposed_single_position(backend):
    """A one-token prompt from Mamba's in_proj: (B, 1, D) viewed as (B, D, 1), "contiguous" to torch while its
    stride along L is D (tensor.contiguous() then returns it as it is)."""
    device = backend_device(backend)
    inputs = make_inputs(2, 24, 1, 4, torch.float32, device, init=True, transposed=True)
    assert inputs["x"].stride(-1) == 24
    check_parity(lambda **kw: causal_conv1d(**kw, backend=backend), reference, inputs, torch.float32,
                 ["x", "weight", "bias", "initial_states"], activation="silu", return_final_states=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_equals_separate_sequences(backend):
    device = backend_device(backend)
    lengths = [5, 1, 17, 9]
    dim, width = 16, 4
    xs = [torch.randn(1, dim, n, device=device) for n in lengths]
    weight, bias = torch.randn(dim, width, device=device), torch.randn(dim, device=device)
    seq_idx = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lengths)])[None].to(device)
    packed, state = causal_conv1d(torch.cat(xs, -1), weight, bias, "silu", seq_idx=seq_idx,
                                  return_final_states=True, backend=backend)
    separate = [causal_conv1d(x, weight, bias, "silu", return_final_states=True, backend=backend) for x in xs]
    assert_close(packed, torch.cat([y for y, _ in separate], -1), torch.float32, "packed output")
    assert_close(state, separate[-1][1], torch.float32, "final state of the last sequence")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", [1, 2, 30])
def test_split_with_state_equals_whole(backend, split):
    device = backend_device(backend)
    x = torch.randn(2, 8, 31, device=device)
    weight = torch.randn(8, 4, device=device)
    whole, whole_state = causal_conv1d(x, weight, activation="silu", return_final_states=True, backend=backend)
    first, state = causal_conv1d(x[..., :split], weight, activation="silu", return_final_states=True, backend=backend)
    second, second_state = causal_conv1d(x[..., split:], weight, activation="silu", initial_states=state,
                                         return_final_states=True, backend=backend)
    assert_close(torch.cat([first, second], -1), whole, torch.float32, "split output")
    assert_close(second_state, whole_state, torch.float32, "final state")


def test_final_state_gradient_reaches_inputs():
    x = torch.randn(1, 4, 2, requires_grad=True)
    init = torch.randn(1, 4, 3, requires_grad=True)
    _, state = causal_conv1d(x, torch.randn(4, 4), initial_states=init, return_final_states=True)
    state.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # the last 3 positions: init[..., 2], x0, x1
    assert torch.equal(init.grad, torch.tensor([[[0.0, 0.0, 1.0]]]).expand(1, 4, 3))


def test_gradcheck_fp64():
    inputs = make_inputs(1, 3, 9, 3, torch.float64, "cpu", init=True, seq=True)
    args = [inputs[k].requires_grad_() for k in ("x", "weight", "bias", "initial_states")]

    def fn(x, w, b, init):
        return causal_conv1d(x, w, b, "silu", seq_idx=inputs["seq_idx"], initial_states=init,
                             return_final_states=True)
    assert torch.autograd.gradcheck(fn, args)


def test_empty_sequence():
    x = torch.randn(2, 3, 0, requires_grad=True)
    init = torch.randn(2, 3, 3)
    y, state = causal_conv1d(x, torch.randn(3, 4), initial_states=init, return_final_states=True)
    assert y.shape == (2, 3, 0) and torch.equal(state, init)


def test_compile_fullgraph():
    x, w, b = torch.randn(2, 8, 33), torch.randn(8, 4), torch.randn(8)
    compiled = torch.compile(lambda x, w, b: causal_conv1d(x, w, b, "silu"), fullgraph=True, backend="eager")
    assert_close(compiled(x, w, b), causal_conv1d_ref(x, w, b, "silu"), torch.float32)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=torch.randn(2, 8)), ValueError, r"x must have shape \(B, D, L\)"),
    (dict(weight=torch.randn(7, 4)), ValueError, r"weight must have shape \(D, W\) = \(8, W\), got \(7, 4\)"),
    (dict(weight=torch.randn(8, 0)), ValueError, "width W"),
    (dict(bias=torch.randn(9)), ValueError, r"bias must have shape \(D,\) = \(8,\)"),
    (dict(initial_states=torch.randn(2, 8, 4)), ValueError, r"initial_states must have shape \(B, D, 3\) = \(2, 8, 3\)"),
    (dict(initial_states=torch.randn(2, 8, 3, dtype=torch.float64)), TypeError, "initial_states must have dtype"),
    (dict(seq_idx=torch.zeros(2, 16)), TypeError, "seq_idx must have dtype in \\(int32, int64\\)"),
    (dict(x=torch.randint(0, 3, (2, 8, 16))), TypeError, "x must have dtype"),
    (dict(activation="relu"), ValueError, "activation must be one of"),
    (dict(x=[1.0]), TypeError, "x must be a torch.Tensor"),
    (dict(backend="cuda"), RuntimeError, "backend 'cuda' .* cannot run"),
    (dict(x=torch.randn(2, 8, 16, dtype=torch.float64), weight=torch.randn(8, 4, dtype=torch.float64),
          backend="triton"), RuntimeError, "backend 'triton' .* cannot run"),
    (dict(weight=torch.randn(8, 9), backend="triton"), RuntimeError, "backend 'triton' .* cannot run"),
    (dict(backend="jax"), ValueError, "unknown backend"),
])
def test_validation(kwargs, error, match):
    if kwargs.get("backend") == "cuda" and torch.cuda.is_available():
        pytest.skip("cuda can run here")
    args = dict(x=torch.randn(2, 8, 16), weight=torch.randn(8, 4))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        causal_conv1d(**args)


def test_triton_rejects_what_it_cannot_run():
    """fp64 and widths over 8 are refused with the reason (automatic choice falls back to torch)."""
    from ssm_kernels import _dispatch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    impl = _dispatch._REGISTRY["causal_conv1d"]["triton"]
    assert "float64" in impl.supports(torch.device(device), torch.float64, {"wide": False})
    assert "widths up to 8" in impl.supports(torch.device(device), torch.float32, {"wide": True})
    assert impl.supports(torch.device(device), torch.bfloat16, {"wide": False}) is None


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("layout", ["channel_first", "channel_last", "strided"])
def test_triton_widths_layouts_blocks(triton_device, width, layout):
    """Every width, both memory layouts and a strided view, D not a multiple of the channel block, several
    L tiles per backward program (partial dweight/dbias sums over chunks), seq_idx and states."""
    from ssm_kernels.causal_conv1d import triton as backend_module
    batch, dim, length = 2, 21, 100
    inputs = make_inputs(batch, dim, length, width, torch.float32, triton_device, init=True, seq=True,
                         transposed=layout == "channel_last")
    if layout == "strided":
        inputs["x"] = torch.randn(batch, 2 * dim, length + 5, device=triton_device)[:, ::2, 5:]
    grads = ["x", "weight", "bias"] + (["initial_states"] if width > 1 else [])
    with backend_module.configured(bwd_programs=2, max_block_l=32):
        check_parity(lambda **kw: causal_conv1d(**kw, backend="triton"), reference, inputs, torch.float32, grads,
                     activation="silu", return_final_states=True)


def test_triton_channel_last_output_layout(triton_device):
    """A channel-last x gets a channel-last y and dx (no copies), with the values of the reference."""
    inputs = make_inputs(2, 16, 40, 4, torch.float32, triton_device, transposed=True)
    x = inputs["x"].requires_grad_()
    y = causal_conv1d(x, inputs["weight"], inputs["bias"], "silu", backend="triton")
    assert y.stride(1) == 1
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert dx.stride(1) == 1
    assert_close(y, causal_conv1d_ref(x.detach(), inputs["weight"], inputs["bias"], "silu"), torch.float32)


def test_triton_compile_fullgraph(triton_device):
    x, w, b = (torch.randn(2, 8, 33, device=triton_device, requires_grad=True),
               torch.randn(8, 4, device=triton_device), torch.randn(8, device=triton_device))
    compiled = torch.compile(lambda x, w, b: causal_conv1d(x, w, b, "silu", backend="triton"), fullgraph=True,
                             backend="aot_eager")
    y = compiled(x, w, b)
    assert_close(y, causal_conv1d_ref(x.detach(), w, b, "silu"), torch.float32)
    y.sum().backward()
    x_ref = x.detach().requires_grad_()
    causal_conv1d_ref(x_ref, w, b, "silu").sum().backward()
    assert_close(x.grad, x_ref.grad, torch.float32, "dx")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", [1, 63, 2047, 4096, 65536])
def test_gpu_long_sequences(backend, dtype, length):
    """Long sequences on the GPU, against the torch backend in fp32 (itself checked against the
    sequential reference above; the Python-loop reference is too slow at these lengths)."""
    inputs = make_inputs(2, 64, length, 4, dtype, "cuda", init=True, seq=True)
    fast = lambda **kw: causal_conv1d(**kw, backend=backend)  # noqa: E731
    reference_fp32 = lambda **kw: causal_conv1d(**kw, backend="torch")  # noqa: E731
    check_parity(fast, reference_fp32, inputs, dtype, ["x", "weight", "bias", "initial_states"],
                 activation="silu", return_final_states=True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backward_is_deterministic(backend):
    inputs = make_inputs(4, 256, 3000, 4, torch.bfloat16, "cuda", init=True)
    leaves = [inputs[k].requires_grad_() for k in ("x", "weight", "bias", "initial_states")]
    dout = torch.randn(4, 256, 3000, device="cuda", dtype=torch.bfloat16)

    def grads():
        y = causal_conv1d(inputs["x"], inputs["weight"], inputs["bias"], "silu",
                          initial_states=inputs["initial_states"], backend=backend)
        return torch.autograd.grad(y, leaves, dout)
    first, second = grads(), grads()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_compile_fullgraph(backend):
    x, w, b = (torch.randn(2, 64, 1000, device="cuda"), torch.randn(64, 4, device="cuda"),
               torch.randn(64, device="cuda"))
    x.requires_grad_()
    compiled = torch.compile(lambda x, w, b: causal_conv1d(x, w, b, "silu", backend=backend), fullgraph=True)
    y = compiled(x, w, b)
    assert_close(y, causal_conv1d_ref(x.detach(), w, b, "silu"), torch.float32)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_validation_after_a_passed_signature():
    """Validation is skipped for a signature (shapes, dtypes, devices, activation) that passed before: a call
    differing in any of them is checked again."""
    x, w = torch.randn(2, 8, 16), torch.randn(8, 4)
    causal_conv1d(x, w, activation="silu")
    causal_conv1d(x, w, activation="silu")
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv1d(x, w, activation="relu")
    with pytest.raises(ValueError, match=r"bias must have shape \(D,\) = \(8,\)"):
        causal_conv1d(x, w, torch.randn(9), activation="silu")
    with pytest.raises(TypeError, match="initial_states must have dtype"):
        causal_conv1d(x, w, activation="silu", initial_states=torch.randn(2, 8, 3, dtype=torch.float64))
