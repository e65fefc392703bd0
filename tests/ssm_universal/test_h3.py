"""ssm_universal.layers.H3: the forward against a direct float64 transcription of the reference's math
(HazyResearch/H3 h3.py: einops layouts, shift SSM as an explicit FIR filter, diagonal SSM as a direct causal
sum), step == forward (head_dim 1 and 2), l_max, L < d_state, shapes/grads, bf16 autocast, bad arguments."""
import copy

import pytest
import torch

from ssm_kernels.testing import assert_close
from ssm_universal.layers.h3 import H3
from tests.ssm_universal.layer_checks import check_shapes_and_grads

FP32 = torch.float32


def make(seed=0, **kwargs):
    torch.manual_seed(seed)
    layer = H3(**{"d_model": 4, "d_state": 8, **kwargs})
    with torch.no_grad():  # move B off one and A_imag off its grid so every parameter matters
        for p in layer.diag_ssm.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    return layer


def fir(u, taps, D):
    """Explicit causal FIR filter: y_t = sum_{j < taps.shape[-1]} taps[:, j] u_{t-j} + D u_t. u: (..., H, L)."""
    length = u.shape[-1]
    y = D[:, None] * u
    for j in range(min(taps.shape[-1], length)):
        y[..., j:] = y[..., j:] + taps[:, j, None] * u[..., :length - j]
    return y


def reference_forward(layer, x):
    """The reference's forward in float64, written with loops and explicit index maps. x: (B, L, d_model)."""
    d = lambda t: t.detach().double()  # noqa: E731
    x = d(x)
    batch, length, width = x.shape
    H, P = layer.H, layer.head_dim
    lin = lambda m: (x @ d(m.weight).T + d(m.bias)).transpose(1, 2)  # noqa: E731  (B, d_model, L)
    q, k, v = lin(layer.q_proj), lin(layer.k_proj), lin(layer.v_proj)
    kernel_len = length if layer.l_max is None else min(length, layer.l_max)
    k = fir(k, d(layer.shift_kernel)[:, :min(layer.d_state, kernel_len)], d(layer.shift_D))
    K = d(layer.diag_ssm.kernel(kernel_len))  # (H, L), checked against the explicit sum in test_s4d
    y = torch.zeros(batch, width, length, dtype=torch.float64)
    for h in range(H):
        for d1 in range(P):
            for d2 in range(P):
                kv = k[:, h * P + d1] * v[:, h * P + d2]  # 'b (h d1) l' and 'b (h d2) l'
                s = fir(kv[:, None], K[h:h + 1], d(layer.diag_ssm.D)[h:h + 1])[:, 0]
                y[:, d2 * H + h] += s * q[:, h * P + d1]  # summed over d1, flattened 'b (d h) l'
    y = y.transpose(1, 2)
    return y @ d(layer.output_linear.weight).T + d(layer.output_linear.bias)


@pytest.mark.parametrize("kwargs", [{}, {"head_dim": 2}, {"d_model": 6, "head_dim": 3},
                                    {"l_max": 5}, {"l_max": 12, "head_dim": 2}],
                         ids=["head_dim1", "head_dim2", "head_dim3", "l_max5", "l_max12_head_dim2"])
def test_forward_equals_reference(kwargs):
    layer = make(**kwargs)
    x = torch.randn(2, 17, layer.d_model)
    with torch.no_grad():
        assert_close(layer(x), reference_forward(layer, x), FP32, "forward")


def test_shift_ssm_is_causal_fir_filter():
    layer = make(d_state=6)
    for length in (3, 6, 20):  # shorter than, equal to and longer than d_state
        k = torch.randn(2, 4, length)
        with torch.no_grad():
            y = layer.shift(k)
        expected = fir(k.double(), layer.shift_kernel.detach().double(), layer.shift_D.detach().double())
        assert_close(y, expected, FP32, f"shift, L={length}")
    # the filter is causal with exactly d_state taps: an impulse at t=0 gives shift_kernel then zeros
    impulse = torch.zeros(1, 4, 20)
    impulse[..., 0] = 1.0
    with torch.no_grad():
        response = layer.shift(impulse)[0] - layer.shift_D.detach()[:, None] * impulse[0]
    assert_close(response[:, :6], layer.shift_kernel.detach(), FP32, "impulse response")
    assert response[:, 6:].abs().max() < 1e-5


@pytest.mark.parametrize("head_dim", [1, 2])
@pytest.mark.parametrize("length", [5, 23], ids=["L<d_state", "L>d_state"])
def test_step_equals_forward(head_dim, length):
    layer = make(head_dim=head_dim, d_state=8)
    x = torch.randn(2, length, 4)
    with torch.no_grad():
        y = layer(x)
        state = layer.default_state(2)
        shapes = [tuple(s.shape) for s in state]
        heads = (2,) if head_dim == 2 else ()
        assert shapes == [(2, 4 // head_dim, *heads, 7), (2, 4 // head_dim, *heads, *heads, 4)]
        assert state[1].dtype == torch.complex64
        first = state
        steps = []
        for t in range(length):
            y_t, state = layer.step(x[:, t], state)
            steps.append(y_t)
        assert all((s == 0).all() for s in first), "step modified the given state"
        assert_close(torch.stack(steps, 1), y, FP32, "steps")


def test_step_is_differentiable():
    layer = make(head_dim=2)
    x = torch.randn(2, 6, 4)
    state = layer.default_state(2)
    loss = 0
    for t in range(6):
        y_t, state = layer.step(x[:, t], state)
        loss = loss + y_t.square().sum()
    loss.backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kwargs", [{}, {"head_dim": 2}, {"l_max": 4}, {"d_state": 32}],
                         ids=["head_dim1", "head_dim2", "l_max", "L<d_state"])
def test_forward_backward_shapes_and_finite_grads(kwargs):
    layer = make(**kwargs)
    check_shapes_and_grads(layer, torch.randn(2, 11, 4), str(kwargs))


def test_bf16_autocast():
    layer = make(head_dim=2)
    x = torch.randn(2, 16, 4)
    with torch.no_grad():
        y32 = layer(x)
        y32_t, _ = layer.step(x[:, 0], layer.default_state(2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
            y_t, _ = layer.step(x[:, 0], layer.default_state(2))
    assert y.dtype == torch.bfloat16 and y_t.dtype == torch.bfloat16
    assert_close(y.float(), y32, torch.bfloat16, "bf16 autocast forward")
    assert_close(y_t.float(), y32_t, torch.bfloat16, "bf16 autocast step")


def test_bf16_weights_and_inputs():
    """A layer cast to bf16 (no autocast) runs forward and step in bf16, close to fp32 on the same weights."""
    layer = make(head_dim=2)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(p.bfloat16().float())
    layer_bf16 = copy.deepcopy(layer).bfloat16()
    x = torch.randn(2, 9, 4).bfloat16()
    with torch.no_grad():
        y32 = layer(x.float())
        y = layer_bf16(x)
        y_t, _ = layer_bf16.step(x[:, 0], layer_bf16.default_state(2))
    assert y.dtype == torch.bfloat16 and y_t.dtype == torch.bfloat16
    assert_close(y.float(), y32, torch.bfloat16, "bf16 forward")
    assert_close(y_t.float(), y32[:, 0], torch.bfloat16, "bf16 step")


def test_init_and_options_stored():
    layer = H3(8, d_state=16, head_dim=2, use_fast_fftconv=True, dropout=0.1, layer_idx=3)
    assert (layer.H, layer.head_dim, layer.layer_idx, layer.dropout) == (4, 2, 3, 0.1)
    assert layer.shift_kernel.shape == (8, 16) and layer.shift_D.shape == (8,)
    assert layer.diag_ssm.C.shape == (4, 8, 2) and layer.diag_ssm.D.shape == (4,)
    n = torch.arange(8, dtype=torch.float32)  # S4D-Lin: A = -1/2 + i pi n
    assert_close(layer.diag_ssm.A_imag, (torch.pi * n).expand(4, 8), FP32, "A_imag")
    assert_close(torch.exp(layer.diag_ssm.A_real_log), torch.full((4, 8), 0.5), FP32, "A_real")
    dt = torch.exp(layer.diag_ssm.log_dt)
    assert ((dt >= 0.001 - 1e-7) & (dt <= 0.1 + 1e-7)).all()


@pytest.mark.parametrize("kwargs, error", [
    ({"d_model": 0}, ValueError), ({"d_model": 4.0}, TypeError), ({"d_state": 7}, ValueError),
    ({"d_state": 0}, ValueError), ({"l_max": 0}, ValueError), ({"head_dim": 3}, ValueError),
    ({"head_dim": 0}, ValueError), ({"use_fast_fftconv": 1}, TypeError), ({"dropout": 1.0}, ValueError),
    ({"dropout": "0.1"}, TypeError), ({"layer_idx": -1}, ValueError), ({"layer_idx": 1.5}, TypeError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match="H3"):
        H3(**{"d_model": 4, "d_state": 8, **kwargs})


def test_step_refuses_part_of_its_state():
    """(The family's bad inputs: tests/ssm_universal/test_layer_family_s4.py.) H3's state is a pair."""
    layer = make(head_dim=2)
    with pytest.raises(ValueError, match="state"):
        layer.step(torch.randn(2, 4), layer.default_state(2)[0])
