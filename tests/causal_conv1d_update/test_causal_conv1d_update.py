"""causal_conv1d_update: every backend against the sequential reference, and stepping equals the scan."""
import pytest
import torch

from ssm_kernels import _dispatch, causal_conv1d
from ssm_kernels.causal_conv1d_update import causal_conv1d_update
from ssm_kernels.causal_conv1d_update.reference import causal_conv1d_update_ref
from ssm_kernels.testing import assert_close
from ssm_kernels._dispatch import BackendUnavailableError
from tests.helpers import backend_device, check_parity

BACKENDS = list(_dispatch.implemented_backends("causal_conv1d_update"))
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def with_new_state(update):
    """Wrap an update so that it works on a copy of conv_state and returns (y, new conv_state)."""
    def run(x, conv_state, weight, bias=None, **kwargs):
        state = conv_state.clone()
        return update(x, state, weight, bias, **kwargs), state
    return run


def make_inputs(batch, dim, steps, width, state_len, dtype, device, *, bias=True):
    x = torch.randn(batch, dim, device=device).to(dtype) if steps is None else \
        torch.randn(batch, dim, steps, device=device).to(dtype)
    return {
        "x": x,
        "conv_state": torch.randn(batch, dim, state_len, device=device).to(dtype),
        "weight": (torch.randn(dim, width, device=device) / width ** 0.5).to(dtype),
        "bias": torch.randn(dim, device=device).to(dtype) if bias else None,
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width,state_len,steps,activation", [
    (4, 3, None, "silu"), (4, 3, 1, None), (4, 6, 7, "swish"), (1, 0, 5, "silu"), (1, 2, None, None),
    (3, 2, 130, "silu"), (8, 7, 3, None), (2, 4, 9, "silu"),
])
def test_matches_reference(backend, dtype, width, state_len, steps, activation):
    device = backend_device(backend)
    inputs = make_inputs(2, 24, steps, width, state_len, dtype, device)
    if backend == "triton" and dtype == torch.float64:
        with pytest.raises(BackendUnavailableError, match="cannot run: the GPU kernels take .*float64"):
            causal_conv1d_update(**inputs, activation=activation, backend=backend)
        return
    check_parity(with_new_state(lambda *a, **kw: causal_conv1d_update(*a, **kw, backend=backend)),
                 with_new_state(causal_conv1d_update_ref), inputs, dtype, [], activation=activation)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_state_updated_in_place(backend):
    device = backend_device(backend)
    batch, dim, width = 3, 16, 4
    storage = torch.randn(batch, width - 1, dim, device=device)  # vLLM's (B, W-1, D) cache layout
    conv_state = storage.transpose(1, 2)
    x = torch.randn(dim, batch, device=device).t()
    weight, bias = torch.randn(dim, width, device=device), torch.randn(dim, device=device)
    expected_state = conv_state.clone()
    expected = causal_conv1d_update_ref(x, expected_state, weight, bias, "silu")
    y = causal_conv1d_update(x, conv_state, weight, bias, "silu", backend=backend)
    assert_close(y, expected, torch.float32, "output")
    assert_close(storage.transpose(1, 2), expected_state, torch.float32, "state written into its storage")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokens_per_call", [1, 3])
@pytest.mark.parametrize("initial", [False, True])
def test_steps_equal_causal_conv1d(backend, tokens_per_call, initial):
    device = backend_device(backend)
    batch, dim, length, width = 2, 8, 13, 4
    x = torch.randn(batch, dim, length, device=device)
    weight, bias = torch.randn(dim, width, device=device), torch.randn(dim, device=device)
    init = torch.randn(batch, dim, width - 1, device=device) if initial else None
    whole, final = causal_conv1d(x, weight, bias, "silu", initial_states=init, return_final_states=True)

    state = init.clone() if initial else torch.zeros(batch, dim, width - 1, device=device)
    outputs = []
    for start in range(0, length, tokens_per_call):
        chunk = x[..., start:start + tokens_per_call]
        if tokens_per_call == 1:
            outputs.append(causal_conv1d_update(chunk[..., 0], state, weight, bias, "silu", backend=backend)[..., None])
        else:
            outputs.append(causal_conv1d_update(chunk, state, weight, bias, "silu", backend=backend))
    assert_close(torch.cat(outputs, -1), whole, torch.float32, "stepped output")
    assert_close(state, final, torch.float32, "conv_state after the last step")


@pytest.mark.parametrize("backend", BACKENDS)
def test_longer_state_keeps_last_inputs(backend):
    device = backend_device(backend)
    batch, dim, length, width, state_len = 2, 8, 11, 3, 6
    x = torch.randn(batch, dim, length, device=device)
    weight = torch.randn(dim, width, device=device)
    state = torch.zeros(batch, dim, state_len, device=device)
    ys = [causal_conv1d_update(x[..., t], state, weight, backend=backend) for t in range(length)]
    assert_close(torch.stack(ys, -1), causal_conv1d(x, weight), torch.float32, "stepped output")
    assert torch.equal(state, x[..., -state_len:])


def test_no_new_tokens_leaves_state():
    state = torch.randn(2, 4, 3)
    before = state.clone()
    y = causal_conv1d_update(torch.randn(2, 4, 0), state, torch.randn(4, 4))
    assert y.shape == (2, 4, 0) and torch.equal(state, before)


def test_compile_fullgraph():
    x, weight, bias = torch.randn(2, 8), torch.randn(8, 4), torch.randn(8)
    state = torch.randn(2, 8, 3)
    ref_state = state.clone()
    compiled = torch.compile(lambda x, s, w, b: causal_conv1d_update(x, s, w, b, "silu"), fullgraph=True,
                             backend="aot_eager")
    y = compiled(x, state, weight, bias)
    expected = causal_conv1d_update_ref(x, ref_state, weight, bias, "silu")
    assert_close(y, expected, torch.float32)
    assert torch.equal(state, ref_state)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=torch.randn(2, 8, 1, 1)), ValueError, r"x must have shape \(B, D\) or \(B, D, T\)"),
    (dict(conv_state=torch.randn(2, 8, 2)), ValueError, r"state length S\) must be in \[3, inf\], got 2"),
    (dict(conv_state=torch.randn(3, 8, 3)), ValueError, r"conv_state must have shape \(B, D, S\) = \(2, 8, S\)"),
    (dict(conv_state=torch.randn(2, 8, 3, dtype=torch.float64)), TypeError, "conv_state must have dtype"),
    (dict(weight=torch.randn(7, 4)), ValueError, r"weight must have shape \(D, W\) = \(8, W\), got \(7, 4\)"),
    (dict(weight=torch.randn(8, 0)), ValueError, "width W"),
    (dict(bias=torch.randn(9)), ValueError, r"bias must have shape \(D,\) = \(8,\)"),
    (dict(x=torch.randint(0, 3, (2, 8))), TypeError, "x must have dtype"),
    (dict(activation="relu"), ValueError, "activation must be one of"),
    (dict(conv_state=None), TypeError, "conv_state is required"),
    (dict(x=torch.randn(2, 8, dtype=torch.float64), conv_state=torch.randn(2, 8, 3, dtype=torch.float64),
          backend="triton"), RuntimeError, "backend 'triton' .* cannot run"),
])
def test_validation(kwargs, error, match):
    args = dict(x=torch.randn(2, 8), conv_state=torch.randn(2, 8, 3), weight=torch.randn(8, 4))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        causal_conv1d_update(**args)


@pytest.mark.parametrize("steps,state_len,dim", [(None, 3, 300), (40, 3, 5), (5, 70, 9), (33, 40, 17)])
def test_triton_blocks(triton_device, steps, state_len, dim):
    """Triton block edges: D over one channel block, T over one token block, S over one state chunk,
    T shorter and longer than S (the in-place shift reads state and new tokens across chunks)."""
    inputs = make_inputs(2, dim, steps, 4, state_len, torch.float32, triton_device)
    check_parity(with_new_state(lambda *a, **kw: causal_conv1d_update(*a, **kw, backend="triton")),
                 with_new_state(causal_conv1d_update_ref), inputs, torch.float32, [], activation="silu")


def test_triton_compile_fullgraph(triton_device):
    x, weight, bias = (torch.randn(2, 8, device=triton_device), torch.randn(8, 4, device=triton_device),
                       torch.randn(8, device=triton_device))
    state = torch.randn(2, 8, 3, device=triton_device)
    ref_state = state.clone()
    compiled = torch.compile(lambda x, s, w, b: causal_conv1d_update(x, s, w, b, "silu", backend="triton"),
                             fullgraph=True, backend="aot_eager")
    y = compiled(x, state, weight, bias)
    expected = causal_conv1d_update_ref(x, ref_state, weight, bias, "silu")
    assert_close(y, expected, torch.float32)
    assert_close(state, ref_state, torch.float32, "state")
