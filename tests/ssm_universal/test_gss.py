"""ssm_universal GSS family (layers/gss.py, layers/gss_ema.py, models/gss_lm.py) against
gated-state-spaces-pytorch 0.1.0: an inline transcription of the package's forward (no package needed) and,
when the package is installed, strict state_dict loads with equal outputs; step == forward; every option;
shapes and gradients; bf16 autocast; init; argument validation."""
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from ssm_kernels.testing import assert_close
from ssm_universal.layers.gss import GSS, GSSDSS, EfficientDsConv, GatedDsConv
from ssm_universal.layers.gss_ema import MHESA, GatedMHESA
from ssm_universal.models.gss_lm import GatedDsConvLM, GatedExponentialSmoothingLM, GatedStateSpacesLM
from tests.ssm_universal.layer_checks import check_shapes_and_grads

FP32 = torch.float32
DIM, LENGTH, BATCH = 12, 23, 2


# ---- the package's forward, transcribed (gated_state_spaces_pytorch 0.1.0: gss.py, dsconv.py, mhesa.py) ----

def package_conv1d_fft(x, weights, dim=-2, weight_dim=-1):
    """dsconv.py / mhesa.py conv1d_fft; fast_len = N + M - 1 instead of scipy's next_fast_len(N + M - 1)
    (any length >= N + M - 1 gives the same result)."""
    N, M = x.shape[dim], weights.shape[weight_dim]
    fast_len = N + M - 1
    f_x = torch.fft.rfft(x, n=fast_len, dim=dim)
    f_weight = torch.fft.rfft(weights, n=fast_len, dim=weight_dim)
    f_weight = f_weight.conj()
    f_weight = f_weight.view(*f_weight.shape, *((1,) * (weight_dim - dim)))
    out = torch.fft.irfft(f_x * f_weight, fast_len, dim=dim).roll(-1, dims=(dim,))
    return out.index_select(dim, torch.arange(fast_len - N, fast_len))


def package_dss(m, x):
    seq_len = x.shape[1]
    u = norm(m, x)
    residual = u * m.param_D
    Lambda_imag = m.Lambda_imag.exp() if m.dss_kernel_lambda_imag_exp else m.Lambda_imag
    Lambda = -m.Lambda_real.exp() + 1j * Lambda_imag
    C = m.C_real + 1j * m.C_imag
    S = (Lambda[:, None] * torch.arange(seq_len)[None, :]).exp()
    C = C * (Lambda.exp() - 1) / Lambda
    K = torch.einsum("hn,nl->lh", C, S).real
    u_f = torch.fft.rfft(u, n=seq_len * 2, dim=-2)
    K_f = torch.fft.rfft(K, n=seq_len * 2, dim=-2)
    return torch.fft.irfft(u_f * K_f, seq_len * 2, dim=-2)[..., :seq_len, :] + residual


def package_dsconv(m, x):
    u = norm(m, x)
    residual = u * m.param_D
    K = torch.flip(F.linear(x, m.to_weight.weight), dims=(1,))
    u = u.reshape(*u.shape[:-1], m.heads, -1)
    out = package_conv1d_fft(u, K, dim=-3, weight_dim=-2)
    return out.reshape(*out.shape[:-2], -1) + residual


def package_mhesa(m, x):
    if m.reverse_seq:
        x = torch.flip(x, dims=(1,))
    seq_len = x.shape[1]
    u = norm(m, x)
    residual = u * m.param_D
    alphas, dampen_factors = m.alphas.sigmoid(), m.dampen_factors.sigmoid()
    reversed_powers = torch.arange(seq_len - 1, -1, -1)
    K = alphas * (((1 - alphas) * dampen_factors) ** reversed_powers[:, None])
    u = u.reshape(*u.shape[:-1], m.heads, -1)
    out = package_conv1d_fft(u, K, dim=-3, weight_dim=-2)
    out = out.reshape(*out.shape[:-2], -1) + residual
    return torch.flip(out, dims=(1,)) if m.reverse_seq else out


def norm(m, x):
    """nn.LayerNorm(dim) of the package, from m.norm's parameters."""
    return F.layer_norm(x, x.shape[-1:], m.norm.weight, m.norm.bias)


def dense_gelu(seq, x):
    """nn.Sequential(nn.Linear(.., bias=False), nn.GELU()) of the package, from seq's weight."""
    return F.gelu(F.linear(x, seq[0].weight))


PACKAGE_INNER = {GSSDSS: package_dss, EfficientDsConv: package_dsconv, MHESA: package_mhesa}


def package_block(block, x):
    """GSS / GatedDsConv / GatedMHESA forward (GatedMHESA's reverse_seq is ours: the same flips)."""
    if block.reverse_seq:
        x = torch.flip(x, dims=(1,))
    residual, x = x.clone(), norm(block, x)
    u, v = dense_gelu(block.to_u, x), dense_gelu(block.to_v, x)
    v = PACKAGE_INNER[type(block.inner)](block.inner, v)
    uc = F.linear(v, block.to_gate.weight)
    out = F.linear(uc * u, block.to_out.weight, block.to_out.bias) + residual
    return torch.flip(out, dims=(1,)) if block.reverse_seq else out


def package_lm(lm, ids, labels=None):
    x = F.embedding(ids, lm.token_emb.weight)
    for layer in lm.layers:
        x = package_block(layer, x)
    logits = F.linear(x, lm.to_logits.weight)
    return logits if labels is None else F.cross_entropy(logits.transpose(1, 2), labels)


# ---- helpers ----

INNER_CASES = {
    "dss": lambda: GSSDSS(DIM, kernel_N=6),
    "dss-no-imag-exp": lambda: GSSDSS(DIM, kernel_N=6, dss_kernel_lambda_imag_exp=False),
    "dsconv": lambda: EfficientDsConv(DIM, heads=3),
    "mhesa": lambda: MHESA(DIM, heads=3),
    "mhesa-reverse": lambda: MHESA(DIM, heads=3, reverse_seq=True),
}
BLOCK_CASES = {
    "gss": lambda: GSS(DIM, dss_kernel_N=6, dss_kernel_H=8),
    "gss-options": lambda: GSS(DIM, dim_expansion_factor=1.5, dss_kernel_N=5, dss_kernel_H=7, reverse_seq=True,
                               dss_kernel_lambda_imag_exp=False),
    "dsconv": lambda: GatedDsConv(DIM, heads=2, dim_dsconv=8),
    "dsconv-options": lambda: GatedDsConv(DIM, heads=4, dim_dsconv=8, dim_expansion_factor=2, reverse_seq=True),
    "mhesa": lambda: GatedMHESA(DIM, heads=2, dim_mhesa=8),
    "mhesa-options": lambda: GatedMHESA(DIM, heads=4, dim_mhesa=8, dim_expansion_factor=3, reverse_seq=True),
}
CAUSAL = [k for k in list(INNER_CASES) + list(BLOCK_CASES) if "reverse" not in k and "options" not in k] + [
    "gss-imag"]
LM_CASES = {
    "gss": lambda: GatedStateSpacesLM(num_tokens=40, dim=DIM, depth=2, dim_expansion_factor=2, dss_kernel_N=6,
                                      dss_kernel_H=8, dss_kernel_lambda_imag_exp=False),
    "dsconv": lambda: GatedDsConvLM(num_tokens=40, dim=DIM, depth=2, heads=2, dim_dsconv=8, max_seq_len=30,
                                    dim_expansion_factor=2),
    "mhesa": lambda: GatedExponentialSmoothingLM(num_tokens=40, dim=DIM, depth=2, heads=2, dim_mhesa=8,
                                                 dim_expansion_factor=2),
}


def make(name):
    if name == "gss-imag":
        return GSS(DIM, dss_kernel_N=6, dss_kernel_H=8, dss_kernel_lambda_imag_exp=False)
    return {**INNER_CASES, **BLOCK_CASES}[name]()


def run_steps(module, xs):
    """Step through xs[:, t] from default_state; checks that the given state is never modified."""
    state, ys = module.default_state(xs.shape[0]), []
    for t in range(xs.shape[1]):
        before = [s.clone() for s in (state if isinstance(state, (list, tuple)) else [state])
                  if isinstance(s, torch.Tensor)]
        y, new_state = module.step(xs[:, t], state)
        after = [s for s in (state if isinstance(state, (list, tuple)) else [state]) if isinstance(s, torch.Tensor)]
        assert all(torch.equal(a, b) for a, b in zip(before, after)), "step modified the given state"
        ys.append(y)
        state = new_state
    return torch.stack(ys, 1), state


# ---- parity with the package ----

@pytest.mark.parametrize("name", list(INNER_CASES))
def test_inner_modules_equal_package_transcription(name):
    torch.manual_seed(0)
    m = INNER_CASES[name]()
    x = torch.randn(BATCH, LENGTH, DIM)
    with torch.no_grad():
        assert_close(m(x), package_dss(m, x) if isinstance(m, GSSDSS) else PACKAGE_INNER[type(m)](m, x), FP32, name)


@pytest.mark.parametrize("name", list(BLOCK_CASES))
def test_blocks_equal_package_transcription(name):
    torch.manual_seed(0)
    block = BLOCK_CASES[name]()
    x = torch.randn(BATCH, LENGTH, DIM)
    with torch.no_grad():
        # compare the residual-free part so that an error in the mixing is not hidden by the skip
        assert_close(block(x) - x, package_block(block, x) - x, FP32, name)


@pytest.mark.parametrize("name", list(LM_CASES))
def test_lms_equal_package_transcription(name):
    torch.manual_seed(0)
    lm = LM_CASES[name]()
    ids, labels = torch.randint(0, 40, (BATCH, LENGTH)), torch.randint(0, 40, (BATCH, LENGTH))
    with torch.no_grad():
        logits = lm(ids)
        assert logits.shape == (BATCH, LENGTH, 40)
        assert_close(logits, package_lm(lm, ids), FP32, "logits")
        loss = lm(ids, labels=labels)
        assert loss.dim() == 0
        assert_close(loss, package_lm(lm, ids, labels), FP32, "loss")


def package_pairs(G):
    from gated_state_spaces_pytorch.dsconv import EfficientDsConv as PDsConv
    from gated_state_spaces_pytorch.gss import DSS as PDSS
    from gated_state_spaces_pytorch.mhesa import MHESA as PMHESA
    return [
        (PDSS, GSSDSS, dict(dim=DIM, kernel_N=6, dss_kernel_lambda_imag_exp=False), False),
        (PDsConv, EfficientDsConv, dict(dim=DIM, heads=3), False),
        (PMHESA, MHESA, dict(dim=DIM, heads=3, reverse_seq=True), False),
        (G.GSS, GSS, dict(dim=DIM, dim_expansion_factor=2, dss_kernel_N=6, dss_kernel_H=8, reverse_seq=True), False),
        (G.GSS, GSS, dict(dim=DIM, dss_kernel_N=6, dss_kernel_H=8, dss_kernel_lambda_imag_exp=False), False),
        (G.GatedDsConv, GatedDsConv, dict(dim=DIM, heads=2, dim_dsconv=8, reverse_seq=True), False),
        (G.GatedMHESA, GatedMHESA, dict(dim=DIM, heads=2, dim_mhesa=8, dim_expansion_factor=2), False),
        (G.GatedStateSpacesLM, GatedStateSpacesLM, dict(num_tokens=40, dim=DIM, depth=2, dss_kernel_N=6,
                                                        dss_kernel_H=8), True),
        (G.GatedDsConvLM, GatedDsConvLM, dict(num_tokens=40, dim=DIM, depth=2, heads=2, dim_dsconv=8,
                                              max_seq_len=30), True),
        (G.GatedExponentialSmoothingLM, GatedExponentialSmoothingLM, dict(num_tokens=40, dim=DIM, depth=2,
                                                                          heads=2, dim_mhesa=8), True),
    ]


def test_package_state_dicts_load_strictly_and_give_the_same_outputs():
    G = pytest.importorskip("gated_state_spaces_pytorch")
    torch.manual_seed(0)
    x, ids = torch.randn(BATCH, LENGTH, DIM), torch.randint(0, 40, (BATCH, LENGTH))
    for package_cls, ours_cls, kwargs, is_lm in package_pairs(G):
        theirs, ours = package_cls(**kwargs), ours_cls(**kwargs)
        # the same constructor arguments with the same defaults (ours may add some)
        for p in inspect.signature(package_cls).parameters.values():
            assert inspect.signature(ours_cls).parameters[p.name].default == p.default, (package_cls, p.name)
        assert {k: v.shape for k, v in theirs.state_dict().items()} == \
            {k: v.shape for k, v in ours.state_dict().items()}, package_cls
        ours.load_state_dict(theirs.state_dict(), strict=True)
        theirs.load_state_dict(ours.state_dict(), strict=True)
        with torch.no_grad():
            if is_lm:
                assert_close(ours(ids), theirs(ids), FP32, package_cls.__name__)
                assert_close(ours(ids, labels=ids), theirs(ids, labels=ids), FP32, package_cls.__name__)
            else:
                skip = 0 if ours_cls in PACKAGE_INNER else x
                assert_close(ours(x) - skip, theirs(x) - skip, FP32, package_cls.__name__)


# ---- step == forward ----

@pytest.mark.parametrize("name", CAUSAL)
def test_step_equals_forward(name):
    torch.manual_seed(0)
    m = make(name)
    x = torch.randn(3, 29, DIM)
    with torch.no_grad():
        y = m(x)
        steps, _ = run_steps(m, x)
    skip = 0 if type(m) in PACKAGE_INNER else x
    assert_close(steps - skip, y - skip, FP32, name)


@pytest.mark.parametrize("name", list(LM_CASES))
def test_lm_step_equals_forward(name):
    torch.manual_seed(0)
    lm = LM_CASES[name]()
    ids = torch.randint(0, 40, (3, 25))
    with torch.no_grad():
        logits = lm(ids)
        steps, state = run_steps(lm, ids)
    assert len(state) == 2
    assert_close(steps, logits, FP32, name)


def test_states():
    torch.manual_seed(0)
    gss, dsconv, mhesa = make("gss"), make("dsconv"), make("mhesa")
    s = gss.default_state(3)
    assert s.shape == (3, 8, 6) and s.dtype == torch.complex64 and not s.any()
    s = mhesa.default_state(3)
    assert s.shape == (3, 8) and s.dtype == FP32 and not s.any()
    u, k = dsconv.default_state(3)
    assert u.shape == (3, 0, 8) and k.shape == (3, 0, 2)
    _, (u, k) = run_steps(dsconv, torch.randn(3, 5, DIM))
    assert u.shape == (3, 5, 8) and k.shape == (3, 5, 2), "the data-dependent kernel keeps the whole history"


def test_step_is_differentiable_and_matches_forward_gradients():
    torch.manual_seed(0)
    for name in ("gss", "dsconv", "mhesa"):
        m = make(name)
        x, cotangent = torch.randn(2, 9, DIM), torch.randn(2, 9, DIM)
        (m(x) * cotangent).sum().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        m.zero_grad()
        steps, _ = run_steps(m, x)
        (steps * cotangent).sum().backward()
        for n, p in m.named_parameters():
            assert_close(p.grad, grads[n], FP32, f"{name}: gradient of {n} through the steps")


# ---- options ----

@pytest.mark.parametrize("name", ["gss-options", "dsconv-options", "mhesa-options"])
def test_reverse_seq_is_anticausal_and_has_no_step(name):
    torch.manual_seed(0)
    block = BLOCK_CASES[name]()
    forward_twin = type(block)(**{**_kwargs(block), "reverse_seq": False})
    forward_twin.load_state_dict(block.state_dict())
    x = torch.randn(1, 16, DIM, requires_grad=True)
    t0 = 7
    block(x)[0, t0].sum().backward()
    assert x.grad[0, :t0].abs().sum() < 1e-6 * x.grad[0, t0:].abs().sum(), "reverse_seq sees only the future"
    assert x.grad[0, t0 + 1:].abs().sum() > 0
    with torch.no_grad():  # reversing the sequence turns it into the causal twin
        assert_close(block(x.flip(1)).flip(1), forward_twin(x), FP32, "reverse_seq = flipped causal block")
    with pytest.raises(RuntimeError, match="reverse_seq"):
        block.default_state(1)
    with pytest.raises(RuntimeError, match="reverse_seq"):
        block.step(x[:, 0].detach(), None)


def _kwargs(block):
    if isinstance(block, GSS):
        return dict(dim=DIM, dim_expansion_factor=block.dim_hidden / DIM, dss_kernel_N=block.dss.kernel_N,
                    dss_kernel_H=block.dss.dim, dss_kernel_lambda_imag_exp=block.dss.dss_kernel_lambda_imag_exp)
    inner = block.inner
    width = "dim_dsconv" if isinstance(block, GatedDsConv) else "dim_mhesa"
    return dict(dim=DIM, heads=inner.heads, dim_expansion_factor=block.dim_hidden / DIM, **{width: inner.dim})


def test_dsconv_kernel_is_data_dependent_and_causal():
    torch.manual_seed(0)
    m = EfficientDsConv(DIM, heads=3)
    x = torch.randn(1, 12, DIM, requires_grad=True)
    m(x)[0, 5].sum().backward()
    past, later = x.grad[0, :6].abs().sum(), x.grad[0, 6:].abs().sum()
    assert x.grad[0, 0].abs().sum() > 0 and later < 1e-6 * past  # FFT rounding leaks
    # tap m of the kernel is to_weight(x_m): y_t = sum_m k_m u_{t-m}, written out
    with torch.no_grad():
        u, k = m.norm(x), m.to_weight(x).repeat_interleave(DIM // 3, -1)
        y = torch.stack([sum(k[:, j] * u[:, t - j] for j in range(t + 1)) for t in range(12)], 1)
        assert_close(m(x), y + m.param_D * u, FP32, "explicit sum")


def test_dsconv_lm_max_seq_len():
    lm = GatedDsConvLM(num_tokens=10, dim=8, depth=1, heads=2, dim_dsconv=4, max_seq_len=3)
    lm(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        lm(torch.zeros(1, 4, dtype=torch.long))
    state = lm.default_state(1)
    for _ in range(3):
        _, state = lm.step(torch.zeros(1, dtype=torch.long), state)
    with pytest.raises(ValueError, match="max_seq_len"):
        lm.step(torch.zeros(1, dtype=torch.long), state)


# ---- shapes, gradients, autocast ----

@pytest.mark.parametrize("name", list(BLOCK_CASES) + list(INNER_CASES))
def test_forward_backward_shapes_and_finite_grads(name):
    torch.manual_seed(0)
    m = {**INNER_CASES, **BLOCK_CASES}[name]()
    check_shapes_and_grads(m, torch.randn(BATCH, 17, DIM), name)


@pytest.mark.parametrize("name", list(LM_CASES))
def test_lm_loss_backward(name):
    torch.manual_seed(0)
    lm = LM_CASES[name]()
    ids = torch.randint(0, 40, (BATCH, 17))
    lm(ids[:, :-1], labels=ids[:, 1:]).backward()
    for n, p in lm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", ["gss", "dsconv", "mhesa"])
def test_bf16_autocast(name):
    """The residual stream keeps x's dtype (fp32); the mixing runs in bf16 and stays within bf16 tolerance."""
    torch.manual_seed(0)
    block = BLOCK_CASES[name]()
    x = torch.randn(BATCH, 17, DIM)
    y32 = block(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
        y_t, state = block.step(x[:, 0], block.default_state(BATCH))
    assert y.dtype == FP32 and y_t.dtype == FP32
    assert_close(y - x, y32 - x, torch.bfloat16, "bf16 autocast forward")
    assert_close(y_t - x[:, 0], y32[:, 0] - x[:, 0], torch.bfloat16, "bf16 autocast step")
    y.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


def test_lm_bf16_autocast():
    torch.manual_seed(0)
    lm = LM_CASES["gss"]()
    ids = torch.randint(0, 40, (BATCH, 17))
    logits32 = lm(ids).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lm(ids)
    assert logits.dtype == torch.bfloat16
    assert_close(logits.float(), logits32, torch.bfloat16, "bf16 logits")


# ---- init and kernels ----

def test_init_and_dss_kernel():
    torch.manual_seed(0)
    m = GSSDSS(64, kernel_N=512)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"norm.weight": (64,), "norm.bias": (64,), "Lambda_real": (512,), "Lambda_imag": (512,),
                      "C_real": (64, 512), "C_imag": (64, 512), "param_D": (64,)}
    for name in ("Lambda_real", "Lambda_imag", "C_real", "C_imag", "param_D"):  # N(0, 1), as the package
        p = getattr(m, name).detach()
        assert abs(p.mean()) < 0.3 and abs(p.std() - 1) < 0.3, name
    assert abs(m.C_real.std() - 1) < 0.02
    _, Lambda = m.modes()
    assert (Lambda.real < 0).all() and (Lambda.imag > 0).all()
    # K[h, l] = Re sum_n C (exp(Lambda) - 1) / Lambda exp(Lambda)^l, in complex128 with powers
    small = GSSDSS(4, kernel_N=5, dss_kernel_lambda_imag_exp=False)
    Lam = torch.complex(-small.Lambda_real.double().exp(), small.Lambda_imag.double())
    C = torch.complex(small.C_real.double(), small.C_imag.double()) * (Lam.exp() - 1) / Lam
    K = torch.einsum("hn,nl->hl", C, Lam.exp()[:, None] ** torch.arange(40, dtype=torch.float64)).real
    assert_close(small.kernel(40), K, FP32, "DSS kernel")

    e = MHESA(8, heads=4)
    alpha, g = e.alphas.double().sigmoid(), (1 - e.alphas.double().sigmoid()) * e.dampen_factors.double().sigmoid()
    K = (alpha[:, None] * g[:, None] ** torch.arange(30, dtype=torch.float64)).repeat_interleave(2, 0)
    assert_close(e.kernel(30), K, FP32, "MHESA kernel")

    gss = GSS(16)  # the package's defaults
    assert gss.dim_hidden == 64 and gss.dss.kernel_N == 512 and gss.dss.dim == 256
    assert gss.to_u[0].bias is None and gss.to_gate.bias is None and gss.to_out.bias is not None
    lm = GatedDsConvLM(num_tokens=5, dim=16, depth=3)
    assert lm.max_seq_len == 2048 and len(lm.layers) == 3 and lm.layers[0].dsconv.heads == 8
    assert lm.layers[0].dsconv.dim == 512 and lm.to_logits.bias is None


# ---- validation ----

@pytest.mark.parametrize("cls, kwargs, error", [
    (GSS, dict(dim=0), ValueError), (GSS, dict(dim=8.0), TypeError), (GSS, dict(dss_kernel_N=0), ValueError),
    (GSS, dict(dss_kernel_H=0), ValueError), (GSS, dict(reverse_seq=1), TypeError),
    (GSS, dict(dss_kernel_lambda_imag_exp="yes"), TypeError), (GSS, dict(dim_expansion_factor=0), ValueError),
    (GSS, dict(dim_expansion_factor=math.inf), ValueError), (GSS, dict(dim_expansion_factor=0.01), ValueError),
    (GatedDsConv, dict(heads=3, dim_dsconv=8), ValueError), (GatedDsConv, dict(heads=0), ValueError),
    (GatedMHESA, dict(heads=3, dim_mhesa=8), ValueError), (GatedMHESA, dict(dim_mhesa=-1), ValueError),
    (MHESA, dict(heads=5), ValueError), (EfficientDsConv, dict(heads=5), ValueError),
    (GSSDSS, dict(kernel_N=0), ValueError),
    (GatedStateSpacesLM, dict(num_tokens=0, depth=1), ValueError), (GatedDsConvLM, dict(num_tokens=5, depth=0),
                                                                   ValueError),
    (GatedDsConvLM, dict(num_tokens=5, depth=1, max_seq_len=0), ValueError),
])
def test_bad_arguments(cls, kwargs, error):
    base = dict(dim=8) if cls not in (MHESA, EfficientDsConv) else dict(dim=8, heads=2)
    with pytest.raises(error, match=cls.__name__):
        cls(**{**base, **kwargs})


def test_bad_inputs():
    block = GSS(DIM, dss_kernel_N=4, dss_kernel_H=4)
    with pytest.raises(ValueError, match="dim"):
        block(torch.randn(2, 5, DIM + 1))
    with pytest.raises(ValueError, match="x_t"):
        block.step(torch.randn(2, 5, DIM), block.default_state(2))
    with pytest.raises(ValueError, match="state"):
        block.step(torch.randn(2, DIM), block.default_state(3))
    with pytest.raises(ValueError, match="state"):
        make("mhesa").step(torch.randn(2, DIM), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="state"):
        make("dsconv").step(torch.randn(2, DIM), (torch.zeros(2, 1, 8), torch.zeros(2, 2, 2)))
    lm = LM_CASES["mhesa"]()
    with pytest.raises(ValueError, match="token ids"):
        lm(torch.randn(2, 5))
    with pytest.raises(ValueError, match="labels"):
        lm(torch.zeros(2, 5, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="layer states"):
        lm.step(torch.zeros(2, dtype=torch.long), [])
