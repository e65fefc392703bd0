"""ssm_universal.layers.DSS: the kernel against the reference code's formula and the paper's (exp: ZOH,
softmax: W / Lambda times the softmax over positions), step == forward, l_max, the HiPPO init. What DSS shares
with S4, S4D and S4ND (bidirectional, layout, step gradients, shapes/grads, bf16 autocast, bad arguments) is in
test_layer_family_s4.py."""
import pytest
import torch

from ssm_kernels.testing import assert_close
from ssm_universal.layers.dss import DSS
from tests.ssm_universal.layer_checks import check_kernel_and_forward, perturbed, reference_forward, steps_and_forward

FP32 = torch.float32
CASES = [dict(version="exp"), dict(version="exp", sep_dt_re_im=True), dict(version="softmax"),
         dict(version="softmax", lambda_init="randn", sep_dt_re_im=True)]
IDS = ["exp", "exp-sep-dt", "softmax", "softmax-randn-sep-dt"]


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
    check_kernel_and_forward(layer, length, code_kernel)  # the reference code's kernel
    with torch.no_grad():
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
    steps, y = steps_and_forward(layer, torch.randn(batch, length, 6), (batch, 6, 8))
    assert_close(steps, y, FP32, "steps")


def test_softmax_step_needs_l_max_and_bidirectional_has_no_step():
    with pytest.raises(RuntimeError, match="l_max"):
        DSS(4, d_state=4, version="softmax").default_state(1)
    with pytest.raises(RuntimeError, match="l_max"):
        DSS(4, d_state=4, version="softmax").step(torch.randn(1, 4), torch.zeros(1, 4, 4, dtype=torch.complex64))
    for version in ("exp", "softmax"):
        with pytest.raises(RuntimeError, match="bidirectional"):
            DSS(4, d_state=4, version=version, l_max=5, bidirectional=True).default_state(1)


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
