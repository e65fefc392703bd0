"""ssm_universal.layers.S4ND: per-axis kernels against the explicit sum over modes, 1-D against S4D, 2-D / 3-D
against a direct fp64 N-D convolution with the outer-product kernel, bidirectional per axis, bandlimit (which
modes survive, the kernel spectrum), rate, step == forward (1-D causal) and its errors, 2-D bf16 autocast, bad
inputs of N-D layers. What S4ND shares with S4, S4D and DSS (shapes/grads, 1-D bf16 autocast, bad arguments,
1-D bad inputs) is in test_layer_family_s4.py."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from ssm_kernels.testing import assert_close
from ssm_universal.layers.s4d import S4D
from ssm_universal.layers.s4nd import S4ND
from tests.ssm_universal.layer_checks import perturbed, steps_and_forward

FP32 = torch.float32
SHAPES = {1: (2, 13), 2: (2, 7, 6), 3: (1, 4, 5, 3)}  # (B, *spatial)


def explicit_axis_kernel(axis, length, rate=1.0, bandlimit=None):
    """K[h, l] = sum over all N modes (the kept N/2 and their conjugates) of C dB dA^l in complex128, dA^l as a
    power, ZOH with dt * rate; with a band limit the modes with dt |Im A| / 2 pi >= bandlimit / 2 are dropped
    (dt at rate 1). (H, length), or (2, H, length) when bidirectional."""
    dt = torch.exp(axis.log_dt.double())[:, None]
    A = torch.complex(-torch.exp(axis.A_real_log.double()), axis.A_imag.double())
    B = torch.view_as_complex(axis.B.double())
    C = torch.view_as_complex(axis.C.double())
    if bandlimit is not None:
        C = C * (dt * A.imag.abs() / (2 * math.pi) < bandlimit / 2)
    dA, dB = torch.exp(dt * rate * A), (torch.exp(dt * rate * A) - 1) / A * B
    powers = dA.unsqueeze(-1) ** torch.arange(length, dtype=torch.float64)
    full_powers = torch.cat([powers, powers.conj()], 1)
    ks = [torch.einsum("hn,hnl->hl", torch.cat([c * dB, (c * dB).conj()], -1), full_powers)
          for c in (C if axis.bidirectional else [C])]
    K = torch.stack(ks) if axis.bidirectional else ks[0]
    assert K.imag.abs().max() < 1e-9 * (1 + K.real.abs().max())
    return K.real


def two_sided(k, bidirectional):
    """Weights over the offsets -Lk .. Lk-1 (index Lk + j for offset j: y_i += w[j] u_{i-j}). (H, 2 Lk)."""
    k0, k1 = (k[0], k[1]) if bidirectional else (k, torch.zeros_like(k))
    return torch.cat([k1.flip(-1), k0], -1)


def reference_forward(layer, x, rate=1.0):
    """The layer's math written out in fp64: the outer product of the explicit per-axis kernels as one
    (H, 2 Lk_1, ..., 2 Lk_d) kernel, the convolution as a direct sum over every offset (inputs outside the array
    are zero), D skip, GELU, Conv1d(H, 2H, 1) + GLU over the channels. x: (B, *spatial, H)."""
    u = x.double().movedim(-1, 1)  # (B, H, *S)
    spatial, d = u.shape[2:], layer.dim
    lengths = layer.kernel_lengths(spatial, rate)
    weights = [two_sided(explicit_axis_kernel(k, n, rate, layer.bandlimit), k.bidirectional)
               for k, n in zip(layer.kernels, lengths)]
    K = weights[0]
    for w in weights[1:]:
        K = K.unsqueeze(-1) * w.reshape(w.shape[0], *[1] * (K.dim() - 1), w.shape[-1])
    y = layer.D.double().reshape(-1, *[1] * d) * u
    for offset in itertools.product(*[range(-n, n) for n in lengths]):
        out = tuple(slice(max(j, 0), L + min(j, 0)) for j, L in zip(offset, spatial))
        inp = tuple(slice(max(-j, 0), L - max(j, 0)) for j, L in zip(offset, spatial))
        if all(s.stop > s.start for s in out):
            w = K[(slice(None), *(n + j for j, n in zip(offset, lengths)))]
            y[(Ellipsis, *out)] += w.reshape(-1, *[1] * d) * u[(Ellipsis, *inp)]
    conv = layer.output_linear[0]
    y = F.glu(F.conv1d(F.gelu(y).flatten(2), conv.weight.double(), conv.bias.double()), dim=-2)
    return y.unflatten(2, spatial).movedim(1, -1)


@pytest.mark.parametrize("bandlimit", [None, 0.3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("init", ["diag-lin", "diag-inv"])
def test_axis_kernel_equals_explicit_sum(init, bidirectional, bandlimit):
    torch.manual_seed(0)
    layer = perturbed(S4ND(5, d_state=8, dim=2, init=init, bidirectional=bidirectional, bandlimit=bandlimit,
                           dt_min=0.05, dt_max=0.5))
    for axis in layer.kernels:
        for rate in (1.0, 1.7):
            K = axis.kernel(21, rate)
            assert K.shape == ((2, 5, 21) if bidirectional else (5, 21)) and K.dtype == FP32
            assert_close(K, explicit_axis_kernel(axis, 21, rate, bandlimit), FP32, f"kernel at rate {rate}")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_1d_equals_s4d(bidirectional):
    """A 1-D S4ND is S4D (zoh) with the same parameters, and both equal the direct causal convolution."""
    torch.manual_seed(0)
    s4nd = perturbed(S4ND(6, d_state=8, dim=1, bidirectional=bidirectional))
    s4d = S4D(6, d_state=8, bidirectional=bidirectional)
    s4d.load_state_dict({k.replace("kernels.0.", ""): v for k, v in s4nd.state_dict().items()})
    x = torch.randn(2, 17, 6)
    with torch.no_grad():
        y = s4nd(x)
        assert_close(y, s4d(x), FP32, "S4D with the same parameters")
        assert_close(y, reference_forward(s4nd, x), FP32, "direct convolution")


@pytest.mark.parametrize("bidirectional", [False, True, "mixed"])
@pytest.mark.parametrize("dim", [2, 3])
def test_nd_forward_equals_direct_convolution(dim, bidirectional):
    torch.manual_seed(dim)
    if bidirectional == "mixed":  # e.g. a video: causal in time, two-sided in space
        bidirectional = (False,) + (True,) * (dim - 1)
    layer = perturbed(S4ND(3, d_state=6, dim=dim, bidirectional=bidirectional, init="diag-inv",
                           dt_min=0.05, dt_max=0.5))
    x = torch.randn(*SHAPES[dim], 3)
    with torch.no_grad():
        assert_close(layer(x), reference_forward(layer, x), FP32, f"{dim}-D bidirectional={bidirectional}")


def test_l_max_truncates_each_axis():
    torch.manual_seed(0)
    layer = perturbed(S4ND(3, d_state=6, dim=2, l_max=(None, 3), dt_min=0.05, dt_max=0.5))
    x = torch.randn(2, 7, 6, 3)
    with torch.no_grad():
        y = layer(x)
        assert layer.kernel_lengths((7, 6)) == [7, 3]
        assert_close(y, reference_forward(layer, x), FP32, "l_max = (None, 3)")
        layer.l_max = (None, None)
        assert (layer(x) - y).abs().max() > 1e-3  # the truncation matters
    assert S4ND(2, d_state=2, dim=3, l_max=4).l_max == (4, 4, 4)


def test_transposed_layout():
    torch.manual_seed(0)
    layer = S4ND(4, d_state=4, dim=2)
    x = torch.randn(2, 5, 6, 4)
    y = layer(x)
    layer.transposed = True
    yt = layer(x.movedim(-1, 1).contiguous())
    assert yt.shape == (2, 4, 5, 6)
    assert_close(yt.movedim(1, -1), y, FP32, "transposed")
    with pytest.raises(ValueError, match="d_model"):
        layer(x)


def test_bidirectional_per_axis_uses_future_inputs():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 8, 4, requires_grad=True)
    p = (3, 4)
    for bidirectional in ((False, False), (True, False), (False, True), (True, True)):
        layer = S4ND(4, d_state=8, dim=2, bidirectional=bidirectional)
        x.grad = None
        layer(x)[0, p[0], p[1]].sum().backward()
        g = x.grad[0].abs().sum(-1)
        assert g[:p[0] + 1, :p[1] + 1].sum() > 0
        for axis, later in ((0, g[p[0] + 1:, :].sum()), (1, g[:, p[1] + 1:].sum())):
            assert (later > 1e-3 * g.sum()) if bidirectional[axis] else (later < 1e-6 * g.sum())  # FFT rounding leaks
    # with the anti-causal C of every axis zeroed, the bidirectional layer is the causal one
    bi, causal = S4ND(4, d_state=8, dim=2, bidirectional=True), S4ND(4, d_state=8, dim=2, bidirectional=False)
    causal.load_state_dict({k: (v[0] if k.endswith(".C") else v) for k, v in bi.state_dict().items()})
    with torch.no_grad():
        assert (bi(x) - causal(x)).abs().max() > 1e-3
        for axis in bi.kernels:
            axis.C[1].zero_()
        assert_close(bi(x), causal(x), FP32, "bidirectional with C[1] = 0")


def test_bandlimit_zeroes_high_frequency_modes():
    H, N, dt = 3, 16, 0.1
    torch.manual_seed(0)
    layer = S4ND(H, d_state=N, dim=2, bandlimit=0.25, bidirectional=False)  # diag-lin: Im A = pi n
    with torch.no_grad():
        for axis in layer.kernels:
            axis.log_dt.fill_(math.log(dt))
            axis.A_real_log.fill_(math.log(0.01))  # slow decay: narrow spectral lines
            axis.C.copy_(torch.view_as_real(torch.ones(H, N // 2, dtype=torch.cfloat)))  # every mode weighs 1
    # mode n has frequency dt pi n / 2 pi = 0.05 n cycles per sample: n = 0, 1, 2 are below 0.25 / 2
    for axis in layer.kernels:
        assert torch.equal(axis.mode_mask(), (torch.arange(N // 2) < 3).expand(H, -1))
        C = axis.discretize()[2]
        assert (C[:, 3:] == 0).all() and (C[:, :3] != 0).all()

    def high_fraction(axis, rate=1.0):
        """Energy of the long kernel's spectrum 0.1 cycles per sample above the highest kept mode (at 0.1 rate),
        as a fraction of the total."""
        spectrum = torch.fft.rfft(axis.kernel(16384, rate).double()).abs() ** 2
        freqs = torch.fft.rfftfreq(16384, dtype=torch.float64)
        return (spectrum[:, freqs > 0.1 * rate + 0.1].sum() / spectrum.sum()).item()

    unlimited = S4ND(H, d_state=N, dim=2, bidirectional=False)
    unlimited.load_state_dict(layer.state_dict())
    for axis, free in zip(layer.kernels, unlimited.kernels):
        assert high_fraction(free) > 0.2 and high_fraction(axis) < 5e-3
        # the band is set at the training resolution: at rate 2 the same modes survive, at twice the frequency
        assert high_fraction(free, 2.0) > 0.03 and high_fraction(axis, 2.0) < 5e-3
    x = torch.randn(1, 6, 5, H, requires_grad=True)
    layer(x).square().sum().backward()
    for axis in layer.kernels:  # the zeroed modes take no gradient, the kept ones do
        assert (axis.C.grad[:, 3:] == 0).all() and (axis.C.grad[:, :3].abs().sum(-1) > 0).all()
    with torch.no_grad():
        assert_close(layer(x), reference_forward(layer, x), FP32, "band-limited forward")


def test_rate_scales_dt_and_the_kernel_length():
    torch.manual_seed(0)
    layer = perturbed(S4ND(3, d_state=6, dim=2, l_max=(6, None), dt_min=0.05, dt_max=0.5))
    shifted = S4ND(3, d_state=6, dim=2, l_max=(3, None))
    shifted.load_state_dict(layer.state_dict())
    with torch.no_grad():
        for axis in shifted.kernels:
            axis.log_dt.add_(math.log(2.0))
    x = torch.randn(2, 7, 5, 3)
    with torch.no_grad():
        assert layer.kernel_lengths((7, 5), rate=2.0) == [3, 5] and layer.kernel_lengths((7, 5), 0.5) == [7, 5]
        y2 = layer(x, rate=2.0)
        assert_close(y2, shifted(x), FP32, "rate 2 == dt doubled, l_max halved")
        assert_close(y2, reference_forward(layer, x, rate=2.0), FP32, "rate 2")
        assert_close(layer(x, rate=0.5), reference_forward(layer, x, rate=0.5), FP32, "rate 0.5")
        assert (y2 - layer(x)).abs().max() > 1e-3
    # a band-limited layer keeps the modes it was trained with at any rate
    limited = S4ND(3, d_state=8, dim=1, bandlimit=0.2, bidirectional=False, dt_min=0.1, dt_max=0.3)
    x1 = torch.randn(2, 11, 3)
    with torch.no_grad():
        for rate in (0.5, 3.0):
            assert_close(limited(x1, rate=rate), reference_forward(limited, x1, rate), FP32, f"rate {rate}")
    with pytest.raises(ValueError, match="rate"):
        layer(x, rate=0.0)


@pytest.mark.parametrize("kwargs", [dict(), dict(init="diag-inv", rate=1.5), dict(bandlimit=0.4, l_max=40)])
def test_step_equals_forward(kwargs):
    torch.manual_seed(0)
    rate = kwargs.pop("rate", 1.0)
    layer = perturbed(S4ND(8, d_state=8, dim=1, bidirectional=False, dt_min=0.05, dt_max=0.5, **kwargs))
    batch, length = 3, 29
    steps, y = steps_and_forward(layer, torch.randn(batch, length, 8), (batch, 8, 4), rate=rate)
    assert_close(steps, y, FP32, "steps")


def test_step_is_refused_without_a_causal_order():
    x_t = torch.randn(2, 4)
    state = torch.zeros(2, 4, 2, dtype=torch.complex64)
    for dim in (2, 3):
        layer = S4ND(4, d_state=4, dim=dim, bidirectional=False)
        with pytest.raises(RuntimeError, match="no causal order"):
            layer.step(x_t, state)
        with pytest.raises(RuntimeError, match="no causal order"):
            layer.default_state(2)
    with pytest.raises(RuntimeError, match="bidirectional"):
        S4ND(4, d_state=4, dim=1, bidirectional=True).step(x_t, state)


def test_init():
    H, N = 3, 8
    n = torch.arange(N // 2, dtype=torch.float64)
    for init, imag in (("diag-lin", math.pi * n), ("diag-inv", N / math.pi * (N / (2 * n + 1) - 1))):
        layer = S4ND(H, d_state=N, dim=3, init=init, dt_min=0.01, dt_max=0.05)
        assert len(layer.kernels) == 3
        for axis in layer.kernels:
            A = torch.complex(-torch.exp(axis.A_real_log.double()), axis.A_imag.double())
            assert_close(A, torch.complex(torch.full_like(n, -0.5), imag).expand(H, -1), FP32, init)
            assert torch.equal(torch.view_as_complex(axis.B), torch.ones(H, N // 2, dtype=torch.cfloat))
            dt = torch.exp(axis.log_dt)
            assert dt.min() >= 0.01 and dt.max() <= 0.05
            assert axis.log_dt._optim == {"weight_decay": 0.0}
    wide = S4ND(64, d_state=4, dim=2)
    assert not torch.equal(wide.kernels[0].log_dt, wide.kernels[1].log_dt), "each axis has its own dt"
    assert S4ND(4, d_state=4, dim=None, l_max=(8, None, 4)).dim == 3
    assert S4ND(4, d_state=4, dim=None, bidirectional=(False,)).dim == 1
    assert S4ND(4, d_state=4).bidirectional == (True, True)  # the reference's default: non-causal images


def test_dropout_is_tied_over_spatial_positions():
    torch.manual_seed(0)
    layer = S4ND(8, d_state=4, dim=2, dropout=0.5)
    seen = []
    layer.output_linear.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.randn(4, 5, 6, 8)
    layer.train()
    assert not torch.equal(layer(x), layer(x))
    dropped = seen[0] == 0  # (B, H, 30)
    assert dropped.any() and (dropped.all(-1) == dropped.any(-1)).all(), "whole (batch, channel) maps dropped"
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_gradients_match_the_direct_convolution():
    torch.manual_seed(0)
    layer = perturbed(S4ND(3, d_state=4, dim=2, bidirectional=(True, False), dt_min=0.05, dt_max=0.5))
    x = torch.randn(1, 5, 4, 3)
    cotangent = torch.randn(1, 5, 4, 3)
    (layer(x, rate=1.3) * cotangent).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    (reference_forward(layer, x, rate=1.3) * cotangent).sum().backward()
    for name, p in layer.named_parameters():
        assert_close(grads[name], p.grad, FP32, f"gradient of {name}")


def test_bf16_autocast_2d():
    torch.manual_seed(0)
    layer = S4ND(8, d_state=8, dim=2)
    x = torch.randn(2, 6, 5, 8)
    y32 = layer(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert_close(y.float(), y32, torch.bfloat16, "bf16 autocast 2-D forward")
    y.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_spatial_rank_and_empty_batch():
    layer = S4ND(4, d_state=4, dim=1, bidirectional=False)
    with pytest.raises(ValueError, match="spatial"):
        layer(torch.randn(2, 3, 4, 4))
    assert layer(torch.randn(0, 5, 4)).shape == (0, 5, 4)
