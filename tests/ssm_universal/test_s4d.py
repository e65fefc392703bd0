"""ssm_universal.layers.S4D: step == forward, the kernel against the explicit sum over modes (conjugates
included), the documented init spectra, l_max. What S4D shares with S4, DSS and S4ND (bidirectional, layout, lr,
dropout, step gradients, shapes/grads, bf16 autocast, bad arguments) is in test_layer_family_s4.py."""
import math

import pytest
import torch

from ssm_kernels.testing import assert_close
from ssm_universal.layers.s4d import S4D, INITS
from tests.ssm_universal.layer_checks import check_kernel_and_forward, perturbed, reference_forward, steps_and_forward

FP32 = torch.float32
DISCRETIZATIONS = ("zoh", "bilinear")


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
    check_kernel_and_forward(layer, 33, explicit_kernel)


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
@pytest.mark.parametrize("init", INITS)
def test_step_equals_forward(init, discretization):
    torch.manual_seed(0)
    layer = perturbed(S4D(8, d_state=8, init=init, discretization=discretization))
    batch, length = 3, 29
    steps, y = steps_and_forward(layer, torch.randn(batch, length, 8), (batch, 8, 4))
    assert_close(steps, y, FP32, "steps")


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


def test_l_max_truncates_the_kernel():
    torch.manual_seed(0)
    layer = perturbed(S4D(4, d_state=8, l_max=6))
    x = torch.randn(2, 20, 4)
    with torch.no_grad():
        K = explicit_kernel(layer, 20)
        assert_close(layer(x), reference_forward(layer, x, K[:, :6]), FP32, "l_max = 6")
        assert_close(layer(x[:, :6]), reference_forward(layer, x[:, :6], K[:, :6]), FP32, "L = l_max")
        assert (layer(x) - reference_forward(layer, x, K)).abs().max() > 1e-3
