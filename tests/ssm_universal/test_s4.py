"""ssm_universal.layers.S4: the NPLR form of HiPPO-LegS, the Cauchy/Woodbury/FFT kernel against powers of the
dense bilinear transition in fp64, C~ <-> C, step == forward, gradients, l_max. What S4 shares with S4D, DSS and
S4ND (bidirectional, layout, lr, dropout, shapes/grads, bf16 autocast, bad arguments) is in
test_layer_family_s4.py."""
import pytest
import torch

from ssm_kernels.testing import assert_close
from ssm_universal.layers._hippo import hippo_legs, nplr_legs
from ssm_universal.layers.s4 import S4
from ssm_universal.layers.s4d import hippo_legs_normal_eigenvalues
from tests.ssm_universal.layer_checks import gradients_through_steps, perturbed, reference_forward, steps_and_forward

FP32 = torch.float32


def full(t):
    """All N modes from the kept half (..., N/2): [t, conj(t)]."""
    return torch.cat([t, t.conj()], -1)


def dense_system(layer):
    """(dA (H, N, N), dB (H, N)) complex128: the bilinear discretisation of A = diag(Lambda) - P P^* with dense
    inverses, from the layer's parameters by the S4 paper's formulas."""
    dt = torch.exp(layer.log_dt.double())[:, None, None]
    Lambda = full(torch.complex(-torch.exp(layer.A_real_log.double()), layer.A_imag.double()))
    P, B = full(torch.view_as_complex(layer.P.double())), full(torch.view_as_complex(layer.B.double()))
    A = torch.diag_embed(Lambda) - P[:, :, None] * P.conj()[:, None, :]
    eye = torch.eye(layer.d_state, dtype=torch.complex128)
    inverse = torch.linalg.inv(eye - dt / 2 * A)
    return inverse @ (eye + dt / 2 * A), (inverse @ (dt * B[:, :, None]))[..., 0]


def true_C(layer, dA):
    """C over all N modes, (c, H, N): the parameter itself when l_max is None, else C~ (I - dA^l_max)^{-1}."""
    C = full(torch.view_as_complex(layer.C.double()))
    C = C if layer.bidirectional else C[None]
    if layer.l_max is not None:
        factor = torch.eye(layer.d_state, dtype=dA.dtype) - torch.linalg.matrix_power(dA, layer.l_max)
        C = (C.unsqueeze(-2) @ torch.linalg.inv(factor)).squeeze(-2)  # row vectors times (H, N, N)
    return C


def dense_kernel(layer, length):
    """K[c, h, l] = C^T dA^l dB by repeated dense matrix-vector products in complex128 (real: conjugate pairs)."""
    dA, dB = dense_system(layer)
    C = true_C(layer, dA)
    taps, x = [], dB
    for _ in range(length):
        taps.append((C * x).sum(-1))
        x = (dA @ x[..., None])[..., 0]
    K = torch.stack(taps, -1)
    assert K.imag.abs().max() < 1e-9 * (1 + K.real.abs().max())
    return K.real if layer.bidirectional else K.real[0]


def test_hippo_legs_nplr_reconstructs_legs():
    N = 10
    A, B, P = hippo_legs(N)
    n = torch.arange(N, dtype=torch.float64)
    assert_close(B, torch.sqrt(2 * n + 1), torch.float64, "B")
    assert_close(P, torch.sqrt(n + 0.5), torch.float64, "P")
    r = torch.sqrt(2 * n + 1)
    expected_A = torch.where(n[:, None] > n[None, :], -r[:, None] * r[None, :], 0.0) - torch.diag(n + 1)
    assert_close(A, expected_A, torch.float64, "A")
    Lambda, Pt, Bt, V = nplr_legs(N)
    assert Lambda.shape == Pt.shape == Bt.shape == (N // 2,) and V.shape == (N, N // 2)
    assert_close(Lambda.real, torch.full_like(Lambda.real, -0.5), torch.float64, "Re Lambda")
    assert torch.all(Lambda.imag < 0)
    assert torch.all(Lambda.imag[1:] > Lambda.imag[:-1])
    assert_close(Lambda.conj().flip(0), hippo_legs_normal_eigenvalues(N), torch.float64, "spectrum as S4D's")
    Vf = torch.cat([V, V.conj()], 1)
    assert_close(Vf.conj().T @ Vf, torch.eye(N, dtype=torch.complex128), torch.float64, "V unitary")
    reconstructed = Vf @ (torch.diag(full(Lambda)) - full(Pt)[:, None] * full(Pt).conj()[None]) @ Vf.conj().T
    assert_close(reconstructed, A.to(torch.complex128), torch.float64, "V (Lambda - P P^*) V^* = A")
    assert_close(Vf @ full(Bt), B.to(torch.complex128), torch.float64, "V B = B")
    assert_close(Vf @ full(Pt), P.to(torch.complex128), torch.float64, "V P = P")
    with pytest.raises(ValueError, match="even"):
        nplr_legs(7)


def test_layer_init():
    H, N = 3, 8
    torch.manual_seed(0)
    layer = S4(H, d_state=N)
    Lambda, P, B, _ = nplr_legs(N)
    B = torch.complex(B.real, B.imag.clamp(-2, 2))
    assert (B.imag.abs() == 2).any(), "the clip is exercised"
    for name, value in (("P", P), ("B", B)):
        got = torch.view_as_complex(getattr(layer, name))
        assert got.shape == (H, N // 2)
        assert_close(got, value.to(torch.complex64).expand(H, -1), FP32, name)
    A = torch.complex(-torch.exp(layer.A_real_log.double()), layer.A_imag.double())
    assert_close(A, Lambda.expand(H, -1), FP32, "Lambda")

    layer = S4(64, d_state=4, dt_min=0.01, dt_max=0.05)
    dt = torch.exp(layer.log_dt)
    assert dt.min() >= 0.01 and dt.max() <= 0.05 and dt.max() / dt.min() > 2

    # with l_max, the stored C is C~ = (I - dA^l_max)^T C of the C that l_max=None stores (same random draws)
    torch.manual_seed(5)
    plain = S4(4, d_state=6)
    torch.manual_seed(5)
    tilde = S4(4, d_state=6, l_max=12)
    dA, _ = dense_system(plain)
    C = full(torch.view_as_complex(plain.C.double())).unsqueeze(-2)
    expected = (C @ (torch.eye(6) - torch.linalg.matrix_power(dA, 12))).squeeze(-2)
    assert_close(torch.view_as_complex(tilde.C), expected[..., :3], FP32, "C~ at init")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("l_max", [None, 24, 40])
@pytest.mark.parametrize("length", [1, 2, 7, 24])
def test_kernel_equals_dense_reference(length, l_max, bidirectional):
    torch.manual_seed(0)
    layer = perturbed(S4(5, d_state=8, l_max=l_max, dt_min=0.01, dt_max=0.2, bidirectional=bidirectional))
    K = layer.kernel(length)
    assert K.shape == ((2, 5, length) if bidirectional else (5, length)) and K.dtype == FP32
    assert_close(K, dense_kernel(layer, length), FP32, "kernel")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("l_max", [None, 6, 64])
def test_forward_equals_reference(l_max, bidirectional):
    torch.manual_seed(0)
    layer = perturbed(S4(6, d_state=8, l_max=l_max, bidirectional=bidirectional))
    x = torch.randn(2, 21, 6)
    with torch.no_grad():
        K = dense_kernel(layer, 21)[..., : l_max or 21]
        assert_close(layer(x), reference_forward(layer, x, K), FP32, "forward")


@pytest.mark.parametrize("l_max", [None, 40, 29, 12])
def test_step_equals_forward(l_max):
    torch.manual_seed(0)
    layer = perturbed(S4(8, d_state=8, l_max=l_max, dt_min=0.01, dt_max=0.2))
    batch, length = 3, 29
    steps, y = steps_and_forward(layer, torch.randn(batch, length, 8), (batch, 8, 4))
    valid = min(length, l_max or length)  # forward truncates the kernel at l_max, the recurrence does not
    assert_close(steps[:, :valid], y[:, :valid], FP32, "steps")
    if valid < length:
        assert (steps[:, valid:] - y[:, valid:]).abs().max() > 1e-4


@pytest.mark.parametrize("l_max", [None, 16])
def test_forward_and_step_gradients_equal_dense_fp64_gradients(l_max):
    """Both paths against autograd through the fp64 dense reference. dt in [0.05, 0.2]: for dt near 1e-3 the
    fp32 Cauchy path's gradients drift to ~7e-5 (z_k - dt Lambda cancels when a node is within dt/2 of an
    eigenvalue: a precision property of the complex64 kernel, measured and reported, not a tolerance)."""
    torch.manual_seed(0)
    layer = perturbed(S4(4, d_state=6, l_max=l_max, dt_min=0.05, dt_max=0.2))
    x = torch.randn(2, 9, 4)
    cotangent = torch.randn(2, 9, 4)
    (reference_forward(layer, x, dense_kernel(layer, 9)) * cotangent).sum().backward()
    expected = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    (layer(x) * cotangent).sum().backward()
    for name, p in layer.named_parameters():
        assert_close(p.grad, expected[name], FP32, f"gradient of {name} through forward")
    for name, grad in gradients_through_steps(layer, x, cotangent).items():
        assert_close(grad, expected[name], FP32, f"gradient of {name} through the steps")


def test_step_follows_parameter_updates():
    """The C converted from C~ is reused without gradients, but not after a parameter changes in place."""
    torch.manual_seed(0)
    layer = S4(4, d_state=6, l_max=10)
    x = torch.randn(2, 4)
    with torch.no_grad():
        layer.step(x, layer.default_state(2))
        layer.P.mul_(1.5)
        layer.C.add_(0.3)
        y_t, _ = layer.step(x, layer.default_state(2))
    assert_close(y_t, layer(x[:, None])[:, 0], FP32, "step after in-place updates")


def test_l_max_shorter_and_longer_than_input():
    torch.manual_seed(0)
    x = torch.randn(2, 20, 4)
    with torch.no_grad():
        short = perturbed(S4(4, d_state=8, l_max=6))
        K = dense_kernel(short, 20)
        assert_close(short(x), reference_forward(short, x, K[:, :6]), FP32, "l_max = 6 < L")
        assert_close(short(x[:, :6]), reference_forward(short, x[:, :6], K[:, :6]), FP32, "L = l_max")
        assert (short(x) - reference_forward(short, x, K)).abs().max() > 1e-3
        long = perturbed(S4(4, d_state=8, l_max=50))
        assert_close(long(x), reference_forward(long, x, dense_kernel(long, 20)), FP32, "l_max = 50 > L")
