"""ssm_universal.layers.S5 against a transcription of S5's reference code, step == forward, and its init.

Reference: `s5_reference` below transcribes lindermanlab/S5 s5/ssm.py (discretize_zoh, discretize_bilinear,
apply_ssm, S5SSM.__call__) as a sequential loop in complex128 on our parameters; a (B, L) step scale
discretises each position with its own step (the time-varying extension S5's per-call step_rescale implies).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from ssm_kernels.testing import assert_close
from ssm_universal.layers.s5 import S5, hippo_legs_normal, hippo_n

FP32 = torch.float32
F64 = torch.float64


def s5_reference(layer, u, step_scale=1.0):
    """u (B, L, H) -> (B, L, H), float64; step_scale a float or a (B, L) tensor."""
    d = lambda t: t.detach().to(F64)  # noqa: E731
    batch, length, _ = u.shape
    u = d(u)
    lam_re = d(layer.Lambda_re).clamp(max=-1e-4) if layer.clip_eigs else d(layer.Lambda_re)
    Lambda = torch.complex(lam_re, d(layer.Lambda_im))
    B_tilde = torch.view_as_complex(d(layer.B))
    if layer.bidirectional and layer.C_init != "complex_normal":
        C_tilde = torch.cat([torch.view_as_complex(d(layer.C1)), torch.view_as_complex(d(layer.C2))], dim=-1)
    else:
        C_tilde = torch.view_as_complex(d(layer.C))
    scale = torch.full((batch, length), float(step_scale), dtype=F64) if not torch.is_tensor(step_scale) \
        else d(step_scale).expand(batch, length)

    def discretize(b, t):
        delta = scale[b, t] * torch.exp(d(layer.log_step))
        if layer.discretization == "zoh":
            Lambda_bar = torch.exp(Lambda * delta)
            return Lambda_bar, (1 / Lambda * (Lambda_bar - 1))[..., None] * B_tilde
        BL = 1 / (1 - (delta / 2.0) * Lambda)
        return BL * (1 + (delta / 2.0) * Lambda), (BL * delta)[..., None] * B_tilde

    out = torch.empty(batch, length, layer.d_model, dtype=F64)
    for b in range(batch):
        disc = [discretize(b, t) for t in range(length)]
        xs, x = [], torch.zeros(layer.n_modes, dtype=torch.complex128)
        for t in range(length):
            x = disc[t][0] * x + disc[t][1] @ u[b, t].to(torch.complex128)
            xs.append(x)
        if layer.bidirectional:
            xs2, x = [None] * length, torch.zeros(layer.n_modes, dtype=torch.complex128)
            for t in reversed(range(length)):
                x = disc[t][0] * x + disc[t][1] @ u[b, t].to(torch.complex128)
                xs2[t] = x
            xs = [torch.cat([a, c]) for a, c in zip(xs, xs2)]
        for t in range(length):
            y = (C_tilde @ xs[t]).real * (2 if layer.conj_sym else 1)
            out[b, t] = y + d(layer.D) * u[b, t]
    if layer.activation == "gelu":
        return F.gelu(out)
    return F.gelu(out, approximate="tanh") if layer.activation == "gelu_tanh" else out


def perturbed(layer, seed=1):
    """Move every parameter away from its init (Lambda_re partly positive, so clip_eigs matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        layer.Lambda_re[::3] = 1.0
    return layer


CONFIGS = {
    "zoh": dict(),
    "bilinear": dict(discretization="bilinear"),
    "zoh-noconj-blocks2": dict(conj_sym=False, blocks=2),
    "bilinear-blocks2-clip": dict(discretization="bilinear", blocks=2, clip_eigs=True),
    "bidirectional": dict(bidirectional=True, activation="gelu_tanh"),
    "bidirectional-complex_normal-noconj": dict(bidirectional=True, C_init="complex_normal", conj_sym=False),
    "trunc_standard_normal-none": dict(C_init="trunc_standard_normal", activation="none", clip_eigs=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_s5_reference(name):
    torch.manual_seed(0)
    layer = perturbed(S5(6, d_state=8, **CONFIGS[name]))
    x = torch.randn(2, 11, 6)
    assert_close(layer(x), s5_reference(layer, x).float(), FP32, "forward")
    scale = 0.5 + torch.rand(2, 11)
    assert_close(layer(x, step_scale=scale), s5_reference(layer, x, scale).float(), FP32, "(B, L) step_scale")


def test_clip_eigs_clips():
    torch.manual_seed(0)
    layer = perturbed(S5(6, d_state=8, clip_eigs=True))
    x = torch.randn(2, 11, 6)
    clipped = layer(x)
    layer.clip_eigs = False
    assert (clipped - layer(x)).abs().max() > 1e-2, "clip_eigs changed nothing with Re(Lambda) > 0"


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("conj_sym", [True, False])
@pytest.mark.parametrize("blocks", [1, 2])
def test_step_equals_forward(discretization, conj_sym, blocks):
    """Token by token from default_state == forward (scalar and (B, L) step_scale); forward's final state ==
    the stepped state; a forward continuing from a stepped state == the rest of the forward."""
    torch.manual_seed(0)
    layer = perturbed(S5(6, d_state=8, blocks=blocks, discretization=discretization, conj_sym=conj_sym))
    batch, length, split = 3, 19, 7
    x = torch.randn(batch, length, 6)
    scale = 0.3 + 2 * torch.rand(batch, length)
    with torch.no_grad():
        for s in (1.0, 1.7, scale):
            y, final = layer(x, step_scale=s, return_final_state=True)
            state = layer.default_state(batch)
            assert state.shape == (batch, layer.n_modes) and state.dtype == torch.complex64
            steps = []
            for t in range(length):
                y_t, state = layer.step(x[:, t], state, step_scale=s[:, t] if torch.is_tensor(s) else s)
                steps.append(y_t)
            assert_close(torch.stack(steps, 1), y, FP32, f"steps, step_scale {type(s).__name__}")
            assert_close(state, final, FP32, "state after the steps vs forward's final state")

        state = layer.default_state(batch)
        for t in range(split):
            _, state = layer.step(x[:, t], state)
        assert_close(layer(x[:, split:], initial_state=state), layer(x)[:, split:], FP32, "continued forward")


def test_step_does_not_modify_the_state_and_backpropagates():
    torch.manual_seed(0)
    layer = S5(4, d_state=4)
    state = layer.default_state(2)
    x = torch.randn(2, 3, 4)
    _, s1 = layer.step(x[:, 0], state)
    assert (state == 0).all()
    y, _ = layer.step(x[:, 1], s1)
    y.sum().backward()
    assert layer.log_step.grad.abs().sum() > 0


@pytest.mark.parametrize("d_state, blocks", [(8, 1), (12, 2), (16, 4)])
@pytest.mark.parametrize("conj_sym", [True, False])
def test_hippo_n_init(d_state, blocks, conj_sym):
    """Re(Lambda) = -1/2 (the LegS normal part's diagonal); Vinv V = I; the (kept) eigenpairs rebuild the
    block-diagonal normal part of HiPPO-LegS; the layer starts from them, with B_tilde = V^-1 B for a real B."""
    Lambda, V, Vinv = hippo_n(d_state, blocks, conj_sym)
    n_modes = d_state // 2 if conj_sym else d_state
    assert Lambda.shape == (n_modes,) and V.shape == (d_state, n_modes) and Vinv.shape == (n_modes, d_state)
    assert torch.allclose(Lambda.real, torch.full_like(Lambda.real, -0.5), atol=1e-12)
    assert torch.allclose(Vinv @ V, torch.eye(n_modes, dtype=V.dtype), atol=1e-10)
    S = torch.block_diag(*([hippo_legs_normal(d_state // blocks)] * blocks))
    assert torch.allclose(S.diagonal(), torch.full((d_state,), -0.5, dtype=F64))
    rebuilt = V @ torch.diag(Lambda) @ Vinv
    rebuilt = 2 * rebuilt.real if conj_sym else rebuilt  # the dropped half are the conjugate pairs
    assert torch.allclose(rebuilt.real if rebuilt.is_complex() else rebuilt, S.to(rebuilt.dtype).real, atol=1e-9)
    if conj_sym:
        assert (Lambda.imag < 0).all(), "conj_sym keeps one mode of each conjugate pair"
    # the normal part is A + p p^T for HiPPO-LegS A = -(tril(sqrt(2n+1) sqrt(2k+1)) - diag(n)), p = sqrt(n + 1/2)
    n = d_state // blocks
    k = torch.arange(n, dtype=F64)
    A = hippo_legs_normal(n) - torch.outer(torch.sqrt(k + 0.5), torch.sqrt(k + 0.5))
    r = torch.sqrt(2 * k + 1)
    assert_close(A, -torch.tril(torch.outer(r, r), -1) - torch.diag(k + 1), F64, "HiPPO-LegS A")

    torch.manual_seed(0)
    layer = S5(5, d_state=d_state, blocks=blocks, conj_sym=conj_sym)
    assert torch.allclose(layer.Lambda_re.double(), Lambda.real, atol=1e-6)
    assert torch.allclose(layer.Lambda_im.double(), Lambda.imag, atol=1e-6)
    B_real = V @ torch.view_as_complex(layer.B.detach().double())  # V V^-1 B = B when nothing is dropped
    if not conj_sym:
        assert B_real.imag.abs().max() < 1e-5 and B_real.real.abs().max() > 1e-2
    dt = torch.exp(layer.log_step)
    assert dt.min() >= 0.001 - 1e-7 and dt.max() <= 0.1 + 1e-7 and dt.std() > 0
    assert layer.Lambda_re._no_weight_decay and layer.B._no_weight_decay and layer.log_step._no_weight_decay


@pytest.mark.parametrize("C_init, expected", [("lecun_normal", lambda P, H: 2 / (P * H)),
                                              ("trunc_standard_normal", lambda P, H: 2 / P),
                                              ("complex_normal", lambda P, H: 1.0)])
def test_init_scales(C_init, expected):
    """S5's variances: B real lecun_normal (fan_in P) so E|V^-1 B|^2 = 1/P; C complex lecun_normal over an
    (H, P, 2) shape (fan_in P H) or row by row (fan_in P), times the unit-norm columns of V; complex_normal
    with std sqrt(1/2) per part; D standard normal."""
    torch.manual_seed(0)
    H, P = 48, 32
    layer = S5(H, d_state=P, blocks=2, C_init=C_init)
    mean_square = lambda p: p.detach().double().square().sum(-1).mean().item()  # noqa: E731
    assert mean_square(layer.B) == pytest.approx(1 / P, rel=0.15)
    assert mean_square(layer.C) == pytest.approx(expected(P, H), rel=0.15)
    assert layer.D.detach().square().mean().item() == pytest.approx(1.0, rel=0.5)


def test_conj_sym_equals_the_full_conjugate_system():
    """conj_sym with N modes == conj_sym=False with the 2N modes [Lambda, conj Lambda], [B, conj B],
    [C, conj C]: 2 Re(C x) is the full real system's output."""
    torch.manual_seed(0)
    half = perturbed(S5(5, d_state=8, conj_sym=True))
    full = S5(5, d_state=8, conj_sym=False)
    conj_pairs = torch.tensor([1.0, -1.0])  # (re, im) -> (re, -im)
    with torch.no_grad():
        full.Lambda_re.copy_(half.Lambda_re.repeat(2))
        full.Lambda_im.copy_(torch.cat([half.Lambda_im, -half.Lambda_im]))
        full.log_step.copy_(half.log_step.repeat(2))
        full.B.copy_(torch.cat([half.B, half.B * conj_pairs], dim=0))
        full.C.copy_(torch.cat([half.C, half.C * conj_pairs], dim=1))
        full.D.copy_(half.D)
    x = torch.randn(2, 13, 5)
    assert_close(full(x), half(x), FP32, "full conjugate system")


def test_bidirectional_uses_future_inputs():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 6)
    x2 = x.clone()
    x2[:, -1] += 1.0
    for bidirectional in (False, True):
        layer = S5(6, d_state=8, bidirectional=bidirectional)
        change = (layer(x2)[:, 0] - layer(x)[:, 0]).abs().max()
        assert (change > 1e-4) if bidirectional else (change == 0)
    with pytest.raises(RuntimeError, match="no causal step"):
        layer.step(x[:, 0], layer.default_state(2))
    with pytest.raises(ValueError, match="bidirectional"):
        layer(x, return_final_state=True)


def test_step_scale_tensor_and_scalar_agree():
    torch.manual_seed(0)
    layer = perturbed(S5(6, d_state=8))
    x = torch.randn(3, 10, 6)
    with torch.no_grad():
        y = layer(x, step_scale=1.5)
        assert_close(layer(x, step_scale=torch.full((3,), 1.5)), y, FP32, "constant (B,)")
        assert_close(layer(x, step_scale=torch.full((3, 10), 1.5)), y, FP32, "constant (B, L)")
        assert_close(layer(x, step_scale=torch.tensor(1.5)), y, FP32, "0-d tensor")
        per_seq = torch.tensor([0.5, 1.0, 3.0])
        y_seq = layer(x, step_scale=per_seq)
        for b in range(3):
            assert_close(y_seq[b], layer(x[b:b + 1], step_scale=float(per_seq[b]))[0], FP32, f"sequence {b}")
        assert (layer(x, step_scale=2.0) - y).abs().max() > 1e-3
        layer.log_step.add_(math.log(2.0))  # dt * 2 either way
        assert_close(layer(x, step_scale=0.75), y, FP32, "step_scale scales exp(log_step)")


def test_forward_backward_shapes_and_finite_grads():
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        layer = S5(8, d_state=8, **config)
        x = torch.randn(2, 17, 8, requires_grad=True)
        scale = torch.full((2, 17), 1.2, requires_grad=True)
        y = layer(x, step_scale=scale)
        assert y.shape == x.shape and y.dtype == x.dtype
        y.square().sum().backward()
        assert x.grad.shape == x.shape and torch.isfinite(x.grad).all()
        assert torch.isfinite(scale.grad).all() and scale.grad.abs().sum() > 0
        for pname, p in layer.named_parameters():
            assert p.grad is not None and p.grad.shape == p.shape, f"{name}: {pname}"
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: {pname} grad {p.grad}"


def test_bf16_autocast():
    """Under CPU bf16 autocast: the B and C projections run in bf16, the scan in complex64; the output is
    bf16 within the bf16 tolerance of the fp32 forward; backward and a step run."""
    torch.manual_seed(0)
    layer = S5(16, d_state=16, blocks=2)
    x = torch.randn(2, 17, 16)
    y32 = layer(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        y_t, state = layer.step(x[:, 0], layer.default_state(2))
    assert y.dtype == torch.bfloat16 and state.dtype == torch.complex64
    assert_close(y.float(), y32, torch.bfloat16, "bf16 autocast forward")
    assert_close(y_t.float(), y32[:, 0], torch.bfloat16, "bf16 autocast step")
    y.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_bad_arguments():
    for kwargs, error in [
        (dict(d_state=6, blocks=4), ValueError), (dict(d_state=6, blocks=2), ValueError),
        (dict(discretization="euler"), ValueError), (dict(C_init="zeros"), ValueError),
        (dict(activation="relu"), ValueError), (dict(dt_min=0.1, dt_max=0.01), ValueError),
        (dict(dt_min=0.0), ValueError), (dict(conj_sym=1), TypeError), (dict(d_state=0), ValueError),
    ]:
        with pytest.raises(error):
            S5(4, **kwargs)
    S5(4, d_state=6, blocks=2, conj_sym=False)  # odd blocks are fine without conjugate symmetry
    layer = S5(4, d_state=4)
    x = torch.randn(2, 5, 4)
    for bad, error in [(torch.ones(3), ValueError), (torch.ones(2, 4), ValueError), (-1.0, ValueError),
                       ("1", TypeError), (torch.ones(2, dtype=torch.complex64), TypeError)]:
        with pytest.raises(error):
            layer(x, step_scale=bad)
    with pytest.raises(ValueError):
        layer(torch.randn(2, 5, 3))
    with pytest.raises(ValueError):
        layer.step(x[:, 0], torch.zeros(2, 2))
    with pytest.raises(ValueError):
        layer.step(x[:, 0], layer.default_state(2), step_scale=torch.ones(2, 5))
