"""ssm_universal.layers.S4D: step == forward, the kernel against the explicit sum over modes (conjugates
included), the documented init spectra, bidirectional, l_max, lr, dropout, shapes/grads, bf16 autocast."""
import math

import pytest
import torch

from ssm_kernels.testing import assert_close
from ssm_universal.layers.s4d import S4D, INITS
from tests.ssm_universal.layer_checks import (check_bf16_autocast_with_complex_state, check_shapes_and_grads,
                                              reference_forward)

FP32 = torch.float32
DISCRETIZATIONS = ("zoh", "bilinear")


def perturbed(layer, scale=0.1, seed=1):
    """Move every parameter away from its init (e.g. A_imag of diag-real off zero, B off one)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return layer


def explicit_kernel(layer, length):
    """K[h, l] = sum over all N modes (the N/2 kept ones and their conjugates) of C dB dA^l, in complex128
    with dA^l as a power (no logarithm), from the layer's parameters by the formulas of the S4D paper."""
    dt = torch.exp(layer.log_dt.double())[:, None]
    A = torch.complex(-torch.exp(layer.A_real_log.double()), layer.A_imag.double())
    B = torch.view_as_complex(layer.B.double())
    C = torch.view_as_complex(layer.C.double())
    if layer.discretization == "zoh":
        dA, dB = torch.exp(dt * A), (torch.exp(dt * A) - 1) / A * B
    else:
        dA, dB = (1 + dt * A / 2) / (1 - dt * A / 2), dt * B / (1 - dt * A / 2)
    powers = dA.unsqueeze(-1) ** torch.arange(length, dtype=torch.float64)  # (H, N/2, L)
    full = lambda c: torch.cat([c * dB, (c * dB).conj()], -1)  # noqa: E731
    full_powers = torch.cat([powers, powers.conj()], 1)
    ks = [torch.einsum("hn,hnl->hl", full(c), full_powers) for c in (C if layer.bidirectional else [C])]
    K = torch.stack(ks) if layer.bidirectional else ks[0]
    assert K.imag.abs().max() < 1e-9 * (1 + K.real.abs().max())  # conjugate pairs cancel the imaginary part
    return K.real


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
@pytest.mark.parametrize("init", INITS)
def test_kernel_and_forward_equal_explicit_sum(init, discretization, bidirectional):
    torch.manual_seed(0)
    layer = perturbed(S4D(6, d_state=8, init=init, discretization=discretization, bidirectional=bidirectional))
    length = 33
    K = layer.kernel(length)
    assert K.shape == ((2, 6, length) if bidirectional else (6, length)) and K.dtype == FP32
    with torch.no_grad():
        assert_close(K, explicit_kernel(layer, length), FP32, "kernel")
        x = torch.randn(2, length, 6)
        assert_close(layer(x), reference_forward(layer, x, explicit_kernel(layer, x.shape[1])), FP32, "forward")


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
@pytest.mark.parametrize("init", INITS)
def test_step_equals_forward(init, discretization):
    torch.manual_seed(0)
    layer = perturbed(S4D(8, d_state=8, init=init, discretization=discretization))
    batch, length = 3, 29
    x = torch.randn(batch, length, 8)
    with torch.no_grad():
        y = layer(x)
        state = layer.default_state(batch)
        assert state.shape == (batch, 8, 4) and state.dtype == torch.complex64 and not state.any()
        steps = []
        for t in range(length):
            y_t, new_state = layer.step(x[:, t], state)
            assert not state.any() or t > 0, "step must not modify the given state"
            steps.append(y_t)
            state = new_state
    assert_close(torch.stack(steps, 1), y, FP32, "steps")


def test_step_is_differentiable_and_matches_forward_gradients():
    torch.manual_seed(0)
    layer = perturbed(S4D(4, d_state=6))
    x = torch.randn(2, 9, 4)
    cotangent = torch.randn(2, 9, 4)
    (layer(x) * cotangent).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    state, ys = layer.default_state(2), []
    for t in range(9):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    (torch.stack(ys, 1) * cotangent).sum().backward()
    for name, p in layer.named_parameters():
        assert_close(p.grad, grads[name], FP32, f"gradient of {name} through the steps")


def test_init_spectra():
    H, N = 3, 16
    n = torch.arange(N // 2, dtype=torch.float64)

    def spectrum(init):
        layer = S4D(H, d_state=N, init=init)
        assert layer.A_real_log.shape == layer.A_imag.shape == (H, N // 2)
        A = torch.complex(-torch.exp(layer.A_real_log.double()), layer.A_imag.double())
        assert torch.equal(A, A[:1].expand(H, -1)), "every channel starts from the same spectrum"
        return A[0]

    half = torch.full((N // 2,), -0.5, dtype=torch.float64)
    assert_close(spectrum("diag-lin"), torch.complex(half, math.pi * n), FP32, "diag-lin")
    assert_close(spectrum("diag-inv"), torch.complex(half, N / math.pi * (N / (2 * n + 1) - 1)), FP32, "diag-inv")
    assert_close(spectrum("diag-real"), torch.complex(-(n + 1), torch.zeros_like(n)), FP32, "diag-real")

    # HiPPO-LegS from its definition; its normal part S = A + P P^T has the diag-legs spectrum (and conjugates)
    i, k = torch.meshgrid(n.new_tensor(range(N)), n.new_tensor(range(N)), indexing="ij")
    A = torch.where(i > k, -torch.sqrt((2 * i + 1) * (2 * k + 1)), torch.where(i == k, -(i + 1), 0.0))
    P = torch.sqrt(n.new_tensor(range(N)) + 0.5)
    eigs = torch.linalg.eigvals(A + P[:, None] * P[None, :])
    upper = eigs[eigs.imag > 0]
    upper = upper[upper.imag.argsort()]
    assert upper.numel() == N // 2
    assert_close(spectrum("diag-legs"), upper, FP32, "diag-legs")

    layer = S4D(64, d_state=4, dt_min=0.01, dt_max=0.05)
    dt = torch.exp(layer.log_dt)
    assert dt.min() >= 0.01 and dt.max() <= 0.05 and dt.max() / dt.min() > 2  # log-uniform in [min, max]
    assert torch.equal(torch.view_as_complex(layer.B), torch.ones(64, 2, dtype=torch.cfloat))


def test_bidirectional_uses_future_inputs():
    torch.manual_seed(0)
    bi = S4D(4, d_state=8, bidirectional=True)
    causal = S4D(4, d_state=8)
    assert bi.C.shape == (2, 4, 4, 2) and bi.kernel(10).shape == (2, 4, 10)
    x = torch.randn(1, 16, 4, requires_grad=True)
    t0 = 7
    for layer, future in ((bi, True), (causal, False)):
        x.grad = None
        layer(x)[0, t0].sum().backward()
        past, later = x.grad[0, :t0 + 1].abs().sum(), x.grad[0, t0 + 1:].abs().sum()
        assert past > 0 and (later > 1e-2 * past if future else later < 1e-6 * past)  # FFT rounding leaks
    # with the anti-causal C zeroed, the bidirectional layer is the causal layer with the same parameters
    causal.load_state_dict({**bi.state_dict(), "C": bi.C[0].detach()})
    with torch.no_grad():
        assert (bi(x) - causal(x)).abs().max() > 1e-3
        bi.C[1].zero_()
        assert_close(bi(x), causal(x), FP32, "bidirectional with C[1] = 0")
    with pytest.raises(RuntimeError, match="bidirectional"):
        bi.step(x[:, 0].detach(), torch.zeros(1, 4, 4, dtype=torch.complex64))
    with pytest.raises(RuntimeError, match="bidirectional"):
        bi.default_state(1)


def test_l_max_truncates_the_kernel():
    torch.manual_seed(0)
    layer = perturbed(S4D(4, d_state=8, l_max=6))
    x = torch.randn(2, 20, 4)
    with torch.no_grad():
        K = explicit_kernel(layer, 20)
        assert_close(layer(x), reference_forward(layer, x, K[:, :6]), FP32, "l_max = 6")
        assert_close(layer(x[:, :6]), reference_forward(layer, x[:, :6], K[:, :6]), FP32, "L = l_max")
        assert (layer(x) - reference_forward(layer, x, K)).abs().max() > 1e-3


def test_transposed_layout():
    torch.manual_seed(0)
    layer = S4D(5, d_state=4)
    x = torch.randn(2, 11, 5)
    y = layer(x)
    layer.transposed = True
    yt = layer(x.transpose(1, 2).contiguous())
    assert yt.shape == (2, 5, 11)
    assert_close(yt.transpose(1, 2), y, FP32, "transposed")
    with pytest.raises(ValueError, match="d_model"):
        layer(x)


def test_lr_registration():
    frozen = S4D(4, d_state=4, lr=0.0)
    buffers = dict(frozen.named_buffers())
    assert set(buffers) == {"log_dt", "A_real_log", "A_imag", "B"}
    assert {n for n, _ in frozen.named_parameters()} == {"C", "D", "output_linear.0.weight", "output_linear.0.bias"}
    tuned = S4D(4, d_state=4, lr=1e-3)
    for name in ("log_dt", "A_real_log", "A_imag", "B"):
        assert getattr(tuned, name)._optim == {"weight_decay": 0.0, "lr": 1e-3}
    assert S4D(4, d_state=4).log_dt._optim == {"weight_decay": 0.0}
    assert not hasattr(tuned.C, "_optim")
    frozen(torch.randn(1, 5, 4)).sum().backward()  # buffers take no gradient; the rest trains
    assert frozen.C.grad is not None


def test_dropout_is_tied_over_the_sequence():
    torch.manual_seed(0)
    layer = S4D(8, d_state=4, dropout=0.5)
    seen = []
    layer.output_linear.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.randn(4, 12, 8)
    layer.train()
    y1, y2 = layer(x), layer(x)
    assert not torch.equal(y1, y2)
    dropped = seen[0] == 0
    assert dropped.any() and (dropped.all(-1) == dropped.any(-1)).all(), "whole (batch, channel) rows dropped"
    layer.eval()
    reference = S4D(8, d_state=4)
    reference.load_state_dict(layer.state_dict())
    assert torch.equal(layer(x), reference(x))


def test_forward_backward_shapes_and_finite_grads():
    for kwargs in (dict(), dict(bidirectional=True, discretization="bilinear", init="diag-legs")):
        torch.manual_seed(0)
        check_shapes_and_grads(S4D(8, d_state=6, **kwargs), torch.randn(2, 17, 8), str(kwargs))


def test_bf16_autocast():
    torch.manual_seed(0)
    layer = S4D(16, d_state=8)
    x = torch.randn(2, 17, 16)
    check_bf16_autocast_with_complex_state(layer, x)


@pytest.mark.parametrize("kwargs, error", [
    (dict(d_model=0), ValueError), (dict(d_model=4.0), TypeError), (dict(d_state=7), ValueError),
    (dict(d_state=0), ValueError), (dict(l_max=0), ValueError), (dict(init="legs"), ValueError),
    (dict(discretization="euler"), ValueError), (dict(dt_min=0.0), ValueError),
    (dict(dt_min=0.2, dt_max=0.1), ValueError), (dict(dt_max=math.inf), ValueError),
    (dict(bidirectional=1), TypeError), (dict(transposed="no"), TypeError), (dict(dropout=1.0), ValueError),
    (dict(lr=-1.0), ValueError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match="S4D"):
        S4D(**{"d_model": 4, **kwargs})


def test_bad_inputs():
    layer = S4D(4, d_state=4)
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="x_t"):
        layer.step(torch.randn(2, 5), layer.default_state(2))
    with pytest.raises(ValueError, match="state"):
        layer.step(torch.randn(2, 4), layer.default_state(3))
