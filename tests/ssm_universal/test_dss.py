"""ssm_universal.layers.DSS: the kernel against the reference code's formula and the paper's (exp: ZOH,
softmax: W / Lambda times the softmax over positions), step == forward, bidirectional, l_max, the HiPPO init,
shapes/grads, bf16 autocast, bad arguments."""
import math

import pytest
import torch

from ssm_kernels.testing import assert_close
from ssm_universal.layers.dss import DSS
from tests.ssm_universal.layer_checks import (check_bf16_autocast_with_complex_state, check_shapes_and_grads,
                                              reference_forward)

FP32 = torch.float32
CASES = [dict(version="exp"), dict(version="exp", sep_dt_re_im=True), dict(version="softmax"),
         dict(version="softmax", lambda_init="randn", sep_dt_re_im=True)]
IDS = ["exp", "exp-sep-dt", "softmax", "softmax-randn-sep-dt"]


def perturbed(layer, scale=0.1, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return layer


def parameters64(layer):
    """(Lambda (N,), P = Delta Lambda (H, N), W (H, N) or (2, H, N)) in complex128."""
    if layer.version == "exp":
        Lambda = torch.complex(-torch.exp(layer.Lambda_log_neg_re.double()), layer.Lambda_im.double())
    else:
        Lambda = torch.view_as_complex(layer.Lambda.double())
    dt = torch.exp(layer.log_dt.double())
    P = dt[:, None] * Lambda if dt.dim() == 1 else torch.complex(dt[:, :1] * Lambda.real, dt[:, 1:] * Lambda.imag)
    return Lambda, P, torch.view_as_complex(layer.W.double())


def code_kernel(layer, length):
    """ag1988/dss DSSKernel.forward written out in complex128 (max-shift for Re Lambda > 0, bounded reciprocals)."""
    Lambda, P, W = parameters64(layer)
    eps = layer.epsilon
    Pl = P.unsqueeze(-1) * torch.arange(length, dtype=torch.float64)  # (H, N, L)
    if layer.version == "softmax":
        pos = Lambda.real > 0
        Pl = Pl - (P * (pos * (length - 1))).unsqueeze(-1)
        P_neg = P * (1 - 2 * pos.double())
        x = (torch.exp(P_neg * length) - 1) * Lambda
        W = W * (torch.exp(P_neg) - 1) * x.conj() / ((x * x.conj()).real + eps)
    else:
        W = W * (torch.exp(P) - 1) * Lambda.conj() / (Lambda * Lambda.conj()).real.clamp(min=eps)
    return torch.einsum("...hn,hnl->...hl", W, torch.exp(Pl)).real


def paper_kernel(layer, length):
    """The paper's Proposition 1 without the epsilon: exp: Re W (exp(P) - 1) / Lambda exp(P l); softmax:
    Re W / Lambda softmax_l(P l) with the softmax as an explicit quotient."""
    Lambda, P, W = parameters64(layer)
    S = torch.exp(P.unsqueeze(-1) * torch.arange(length, dtype=torch.float64))  # (H, N, L)
    if layer.version == "softmax":
        S, W = S / S.sum(-1, keepdim=True), W / Lambda
    else:
        W = W * (torch.exp(P) - 1) / Lambda
    return torch.einsum("...hn,hnl->...hl", W, S).real


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
def test_kernel_and_forward_equal_explicit_formulas(kwargs, bidirectional):
    torch.manual_seed(0)
    layer = perturbed(DSS(5, d_state=8, bidirectional=bidirectional, dt_min=0.01, **kwargs))
    if kwargs.get("lambda_init") == "randn":
        assert (layer.lambda_().real > 0).any() and (layer.lambda_().real < 0).any()  # both softmax branches
    length = 31
    K = layer.kernel(length)
    assert K.shape == ((2, 5, length) if bidirectional else (5, length)) and K.dtype == FP32
    with torch.no_grad():
        assert_close(K, code_kernel(layer, length), FP32, "kernel vs the reference code")
        x = torch.randn(2, length, 5)
        assert_close(layer(x), reference_forward(layer, x, code_kernel(layer, length)), FP32, "forward")
        layer.epsilon = 1e-30
        assert_close(layer.kernel(length), paper_kernel(layer, length), FP32, "kernel vs the paper")


def test_softmax_kernel_is_stable_and_exactly_differentiated_for_growing_modes():
    torch.manual_seed(0)
    layer = DSS(3, d_state=4, version="softmax", lambda_init="randn", dt_min=0.1, dt_max=0.1, epsilon=1e-30)
    with torch.no_grad():
        layer.Lambda[:2, 0] = torch.tensor([30.0, -30.0])  # P L = +-120: exp(P l) overflows fp32 unshifted
    length = 40
    K = layer.kernel(length)
    cotangent = torch.randn(3, length, dtype=torch.float64)
    (K.double() * cotangent).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    layer.zero_grad()
    layer.double()
    expected = paper_kernel(layer, length)
    (expected * cotangent).sum().backward()
    assert_close(K, expected, FP32, "kernel")
    for name in ("log_dt", "Lambda", "W"):
        assert_close(grads[name], getattr(layer, name).grad, FP32, f"gradient of {name}")


def test_softmax_kernel_depends_on_length_and_exp_does_not():
    torch.manual_seed(0)
    exp, soft = perturbed(DSS(4, d_state=6)), perturbed(DSS(4, d_state=6, version="softmax"))
    with torch.no_grad():
        assert_close(exp.kernel(12)[:, :8], exp.kernel(8), FP32, "exp kernel prefix")
        assert (soft.kernel(12)[:, :8] - soft.kernel(8)).abs().max() > 1e-3


@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
def test_step_equals_forward(kwargs):
    torch.manual_seed(0)
    batch, length = 3, 23
    layer = perturbed(DSS(6, d_state=8, l_max=None if kwargs["version"] == "exp" else length, **kwargs))
    x = torch.randn(batch, length, 6)
    with torch.no_grad():
        y = layer(x)
        state = layer.default_state(batch)
        assert state.shape == (batch, 6, 8) and state.dtype == torch.complex64 and not state.any()
        steps = []
        for t in range(length):
            y_t, new_state = layer.step(x[:, t], state)
            assert t > 0 or not state.any(), "step must not modify the given state"
            steps.append(y_t)
            state = new_state
    assert_close(torch.stack(steps, 1), y, FP32, "steps")


def test_step_gradients_match_forward():
    torch.manual_seed(0)
    layer = perturbed(DSS(4, d_state=6, version="softmax", lambda_init="randn", l_max=9))
    x, cotangent = torch.randn(2, 9, 4), torch.randn(2, 9, 4)
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


def test_softmax_step_needs_l_max_and_bidirectional_has_no_step():
    with pytest.raises(RuntimeError, match="l_max"):
        DSS(4, d_state=4, version="softmax").default_state(1)
    with pytest.raises(RuntimeError, match="l_max"):
        DSS(4, d_state=4, version="softmax").step(torch.randn(1, 4), torch.zeros(1, 4, 4, dtype=torch.complex64))
    for version in ("exp", "softmax"):
        with pytest.raises(RuntimeError, match="bidirectional"):
            DSS(4, d_state=4, version=version, l_max=5, bidirectional=True).default_state(1)


def test_bidirectional_uses_future_inputs():
    torch.manual_seed(0)
    bi, causal = DSS(4, d_state=8, bidirectional=True), DSS(4, d_state=8)
    assert bi.W.shape == (2, 4, 8, 2) and bi.kernel(10).shape == (2, 4, 10)
    x = torch.randn(1, 16, 4, requires_grad=True)
    t0 = 7
    for layer, future in ((bi, True), (causal, False)):
        x.grad = None
        layer(x)[0, t0].sum().backward()
        past, later = x.grad[0, :t0 + 1].abs().sum(), x.grad[0, t0 + 1:].abs().sum()
        assert past > 0 and (later > 1e-2 * past if future else later < 1e-6 * past)
    causal.load_state_dict({**bi.state_dict(), "W": bi.W[0].detach()})
    with torch.no_grad():
        assert (bi(x) - causal(x)).abs().max() > 1e-3
        bi.W[1].zero_()
        assert_close(bi(x), causal(x), FP32, "bidirectional with W[1] = 0")


@pytest.mark.parametrize("version", ["exp", "softmax"])
def test_l_max_truncates_the_kernel(version):
    torch.manual_seed(0)
    layer = perturbed(DSS(4, d_state=6, l_max=7, version=version))
    x = torch.randn(2, 20, 4)
    with torch.no_grad():
        assert_close(layer(x), reference_forward(layer, x, code_kernel(layer, 7)), FP32, "l_max = 7")
        assert (layer(x) - reference_forward(layer, x, code_kernel(layer, 20))).abs().max() > 1e-3


def test_init():
    H, N = 3, 8
    layer = DSS(H, d_state=N)
    # the reference's hippo_skew_pos_imag: eigenvalues of the skew part of HiPPO (2N), largest imag first, - 1/2
    r = torch.sqrt(2 * torch.arange(2 * N, dtype=torch.float64) + 1)
    hippo = (r[:, None] * r[None, :]).tril(-1)
    evals = torch.linalg.eigvals((hippo - hippo.T) / 2)
    expected = evals[evals.imag.argsort(descending=True)][:N] - 0.5
    assert_close(layer.lambda_(), expected, FP32, "hippo Lambda")
    assert layer.Lambda_log_neg_re.shape == layer.Lambda_im.shape == (N,) and layer.W.shape == (H, N, 2)
    soft = DSS(H, d_state=N, version="softmax")
    assert soft.Lambda.shape == (N, 2)
    assert_close(soft.lambda_(), expected, FP32, "hippo Lambda (softmax)")
    wide = DSS(64, d_state=4, dt_min=0.01, dt_max=0.05)
    dt = torch.exp(wide.log_dt)
    assert wide.log_dt.shape == (64,) and dt.min() >= 0.01 and dt.max() <= 0.05 and dt.max() / dt.min() > 2
    sep = DSS(4, d_state=4, sep_dt_re_im=True)
    assert sep.log_dt.shape == (4, 2) and torch.equal(sep.log_dt[:, 0], sep.log_dt[:, 1])
    assert all(p._optim == {"weight_decay": 0.0} for p in layer.ssm_parameters())


def test_transposed_layout():
    torch.manual_seed(0)
    layer = DSS(5, d_state=4)
    x = torch.randn(2, 11, 5)
    y = layer(x)
    layer.transposed = True
    yt = layer(x.transpose(1, 2).contiguous())
    assert yt.shape == (2, 5, 11)
    assert_close(yt.transpose(1, 2), y, FP32, "transposed")


def test_forward_backward_shapes_and_finite_grads():
    for kwargs in (dict(), dict(version="softmax", lambda_init="randn", bidirectional=True, sep_dt_re_im=True),
                   dict(dropout=0.2, bidirectional=True)):
        torch.manual_seed(0)
        check_shapes_and_grads(DSS(8, d_state=6, **kwargs), torch.randn(2, 17, 8), str(kwargs))


@pytest.mark.parametrize("version", ["exp", "softmax"])
def test_bf16_autocast(version):
    torch.manual_seed(0)
    layer = DSS(16, d_state=8, version=version, l_max=17)
    x = torch.randn(2, 17, 16)
    check_bf16_autocast_with_complex_state(layer, x)


@pytest.mark.parametrize("kwargs, error", [
    (dict(d_model=0), ValueError), (dict(d_model=4.0), TypeError), (dict(d_state=0), ValueError),
    (dict(l_max=0), ValueError), (dict(version="clip"), ValueError), (dict(lambda_init="legs"), ValueError),
    (dict(lambda_init="randn"), ValueError), (dict(dt_min=0.0), ValueError),
    (dict(dt_min=0.2, dt_max=0.1), ValueError), (dict(dt_max=math.inf), ValueError),
    (dict(epsilon=0.0), ValueError), (dict(bidirectional=1), TypeError), (dict(transposed="no"), TypeError),
    (dict(sep_dt_re_im=None), TypeError), (dict(dropout=1.0), ValueError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match="DSS"):
        DSS(**{"d_model": 4, **kwargs})


def test_bad_inputs():
    layer = DSS(4, d_state=4)
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="x_t"):
        layer.step(torch.randn(2, 5), layer.default_state(2))
    with pytest.raises(ValueError, match="state"):
        layer.step(torch.randn(2, 4), layer.default_state(3))
