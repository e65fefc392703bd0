"""ssm_universal.layers.Mamba2Sequential: the forward and every gradient against a direct float64 transcription of
the sequential block of the Mamba-2 paper (Section 7.1, Figure 6 left: dt, B, C projected from the conv output),
step == forward, seq_idx, inference_params decoding, init, shapes/grads, bad inputs. What Mamba2Sequential shares
with the other Mamba-style blocks (bf16 autocast, bad arguments) is in test_layer_family_mamba.py."""
import types

import pytest
import torch
import torch.nn.functional as F

from ssm_kernels.testing import assert_close
from ssm_universal.layers.mamba2_sequential import Mamba2Sequential
from tests.ssm_universal.layer_checks import check_in_place_steps_equal_forward, check_shapes_and_grads

FP32 = torch.float32

CONFIGS = {  # small shapes; chunk_size below L so that several chunks are scanned
    "default": dict(d_model=16, d_state=8, headdim=8, chunk_size=8),
    "ngroups2-hdimD-normfirst": dict(d_model=16, d_state=4, headdim=4, ngroups=2, D_has_hdim=True,
                                     norm_before_gate=True, chunk_size=5),
    "nonorm-bias-conv3": dict(d_model=12, d_state=6, d_conv=3, headdim=4, rmsnorm=False, bias=True,
                              conv_init=0.3, A_init_range=(2, 4), chunk_size=7),
    "dt_limit-noconvbias-expand1": dict(d_model=16, d_state=8, headdim=4, expand=1, ngroups=4, conv_bias=False,
                                        dt_limit=(0.02, 0.05), chunk_size=4),
}


def make(seed=0, **config):
    """A layer moved away from its init so that every parameter matters (D off one, norm weight off one)."""
    torch.manual_seed(seed)
    layer = Mamba2Sequential(**config, layer_idx=0)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def reference_forward(layer, u):
    """The block written out in float64 with loops, from the paper's description and the parameters:
    in_proj -> x, z; X = silu(causal depthwise conv(x)); x_proj(X) -> dt, B, C; per head h the scalar-A SSM
    state_t = exp(dt_t A_h) state_{t-1} + dt_t X_t B_t^T, y_t = state_t C_t + D X_t; gate / grouped RMSNorm."""
    p = {n: t.double() for n, t in layer.named_parameters()}
    lin = lambda t, name: t @ p[f"{name}.weight"].T + (p[f"{name}.bias"] if f"{name}.bias" in p else 0)  # noqa
    batch, length, _ = u.shape
    H, P, G, N, W = layer.nheads, layer.headdim, layer.ngroups, layer.d_state, layer.d_conv
    x, z = lin(u.double(), "in_proj").chunk(2, dim=-1)  # (B, L, d_inner)
    weight = p["conv1d.weight"][:, 0]  # (d_inner, W)
    conv = torch.zeros_like(x) + (p["conv1d.bias"] if "conv1d.bias" in p else 0)
    for k in range(W):  # tap k multiplies x_{t - (W - 1 - k)}
        lag = W - 1 - k
        conv[:, lag:] += weight[:, k] * x[:, :length - lag]
    X = F.silu(conv)
    proj = X @ p["x_proj.weight"].T
    dt, B, C = proj[..., :H], proj[..., H:H + G * N], proj[..., H + G * N:]
    dt = F.softplus(dt + p["dt_bias"]).clamp(*layer.dt_limit)
    A = -torch.exp(p["A_log"])
    D = p["D"].reshape(H, P) if layer.D_has_hdim else p["D"][:, None].expand(H, P)
    Xh = X.reshape(batch, length, H, P)
    y = torch.zeros_like(Xh)
    for h in range(H):
        g = h // (H // G)
        state = torch.zeros(batch, P, N, dtype=torch.float64)
        for t in range(length):
            Bt, Ct = B[:, t, g * N:(g + 1) * N], C[:, t, g * N:(g + 1) * N]
            state = torch.exp(dt[:, t, h] * A[h])[:, None, None] * state \
                + (dt[:, t, h, None] * Xh[:, t, h])[:, :, None] * Bt[:, None, :]
            y[:, t, h] = (state * Ct[:, None, :]).sum(-1) + D[h] * Xh[:, t, h]
    y = y.reshape(batch, length, -1)
    if layer.rmsnorm:
        gate = F.silu(z)
        if not layer.norm_before_gate:
            y = y * gate
        yg = y.reshape(batch, length, G, -1)
        y = (yg / torch.sqrt(yg.square().mean(-1, keepdim=True) + 1e-5)).reshape(y.shape) * p["norm.weight"]
        if layer.norm_before_gate:
            y = y * gate
    else:
        y = y * F.silu(z)
    return lin(y, "out_proj")


def test_parameter_list():
    """Names and shapes for d_model=16, d_state=4, d_conv=3, expand=2, headdim=4, ngroups=2, D_has_hdim, bias:
    d_inner 32, nheads 8, x_proj rows = nheads + 2 ngroups d_state = 24."""
    layer = Mamba2Sequential(d_model=16, d_state=4, d_conv=3, headdim=4, ngroups=2, D_has_hdim=True, bias=True)
    expected = [("dt_bias", (8,)), ("A_log", (8,)), ("D", (32,)), ("in_proj.weight", (64, 16)),
                ("in_proj.bias", (64,)), ("conv1d.weight", (32, 1, 3)), ("conv1d.bias", (32,)),
                ("x_proj.weight", (24, 32)), ("norm.weight", (32,)), ("out_proj.weight", (16, 32)),
                ("out_proj.bias", (16,))]
    assert [(k, tuple(v.shape)) for k, v in layer.state_dict().items()] == expected
    assert layer.norm.group_size == 16 and layer.norm.eps == 1e-5
    plain = Mamba2Sequential(d_model=16, headdim=8, rmsnorm=False, conv_bias=False)
    assert not {"norm.weight", "conv1d.bias", "in_proj.bias", "out_proj.bias"} & set(plain.state_dict())
    assert plain.D.shape == (4,) and plain.d_state == 128  # Mamba2's defaults


@pytest.mark.parametrize("config", list(CONFIGS))
def test_forward_and_gradients_equal_reference(config):
    layer = make(**CONFIGS[config])
    u = torch.randn(2, 13, layer.d_model)
    y = layer(u)
    expected = reference_forward(layer, u)
    assert_close(y, expected, FP32, "forward")
    cotangent = torch.randn_like(y)
    (y * cotangent).sum().backward()
    params = dict(layer.named_parameters())
    ref_params = {n: p.detach().double().requires_grad_() for n, p in params.items()}
    # the reference reads named_parameters(): give it float64 leaves and differentiate it
    layer_view = types.SimpleNamespace(**{k: getattr(layer, k) for k in (
        "nheads", "headdim", "ngroups", "d_state", "d_conv", "dt_limit", "D_has_hdim", "rmsnorm",
        "norm_before_gate")}, named_parameters=lambda: ref_params.items())
    (reference_forward(layer_view, u) * cotangent.double()).sum().backward()
    for name, p in params.items():
        assert_close(p.grad, ref_params[name].grad, FP32, f"gradient of {name}")


def test_ssm_parameters_come_from_the_conv_output():
    """What makes the block sequential: changing the conv weights changes dt, B and C (x_proj reads the conv
    output), and zeroing x_proj's B rows leaves only the D skip of the SSM."""
    layer = make(**CONFIGS["default"])
    seen = []
    layer.x_proj.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    u = torch.randn(2, 9, 16)
    with torch.no_grad():
        layer(u)
        x = layer.in_proj(u).chunk(2, dim=-1)[0].transpose(1, 2)
        conv = F.conv1d(x, layer.conv1d.weight, layer.conv1d.bias, padding=layer.d_conv - 1, groups=layer.d_inner)
        assert_close(seen[0], F.silu(conv[..., :9]).transpose(1, 2), FP32, "x_proj input")
        H, GN = layer.nheads, layer.ngroups * layer.d_state
        layer.x_proj.weight[H:H + GN].zero_()
        X = seen[0].reshape(2, 9, layer.nheads, layer.headdim)
        skip = (X * layer.D[:, None]).reshape(2, 9, -1)
        z = layer.in_proj(u).chunk(2, dim=-1)[1]
        assert_close(layer(u), layer.out_proj(layer.norm(skip, z)), FP32, "B = 0: D skip only")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_step_equals_forward(config):
    """Token by token from default_state == the full forward; forward(state=) leaves the stepped state; a forward
    continuing from a stepped state == the rest of the forward."""
    layer = make(**CONFIGS[config])
    batch, length = 3, 19
    state = layer.default_state(batch)
    assert state[0].shape == (batch, layer.d_inner, layer.d_conv) and state[0].dtype == FP32
    assert state[1].shape == (batch, layer.nheads, layer.headdim, layer.d_state) and state[1].dtype == FP32
    check_in_place_steps_equal_forward(layer, torch.randn(batch, length, layer.d_model), split=7)


def test_inference_params_prefill_and_decode():
    """mamba_ssm's generation protocol: a prefill (shorter than d_conv) then one token at a time through
    inference_params equals the full forward; allocate_inference_cache gives default_state's shapes."""
    layer = make(**CONFIGS["nonorm-bias-conv3"])
    x = torch.randn(2, 11, layer.d_model)
    params = types.SimpleNamespace(seqlen_offset=0, key_value_memory_dict={})
    with torch.no_grad():
        y = layer(x)
        outs = [layer(x[:, :2], inference_params=params)]
        for t in range(2, x.shape[1]):
            params.seqlen_offset = t
            outs.append(layer(x[:, t:t + 1], inference_params=params))
    assert_close(torch.cat(outs, 1), y, FP32, "prefill + decode")
    cache = layer.allocate_inference_cache(2, 100)
    assert [c.shape for c in cache] == [s.shape for s in layer.default_state(2)]


@pytest.mark.parametrize("config", ["default", "ngroups2-hdimD-normfirst"])
def test_packed_sequences_equal_separate_runs(config):
    """Sequences packed along L with seq_idx give the outputs of separate runs, and forward(state=) on the packed
    input leaves the state of the last sequence alone (also when it is shorter than d_conv)."""
    layer = make(**CONFIGS[config])
    lengths = (9, 14, 2)
    seqs = [torch.randn(1, n, layer.d_model) for n in lengths]
    packed = torch.cat(seqs, dim=1)
    seq_idx = torch.cat([torch.full((1, n), i, dtype=torch.int32) for i, n in enumerate(lengths)], dim=1)
    with torch.no_grad():
        states = [layer.default_state(1) for _ in seqs]
        separate = torch.cat([layer(s, state=st) for s, st in zip(seqs, states)], dim=1)
        assert_close(layer(packed, seq_idx=seq_idx), separate, FP32, "seq_idx")
        assert (layer(packed) - separate).abs().max() > 1e-4, "packing without seq_idx must differ"
        state = layer.default_state(1)
        layer(packed, seq_idx=seq_idx, state=state)
        for i, name in enumerate(("conv_state", "ssm_state")):
            assert_close(state[i], states[-1][i], FP32, f"{name} after a packed forward")


def test_init():
    layer = Mamba2Sequential(d_model=64, d_state=4, headdim=4, dt_min=0.01, dt_max=0.05, A_init_range=(2, 8))
    dt = F.softplus(layer.dt_bias)
    assert dt.shape == (32,) and dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.05 + 1e-6 and dt.max() / dt.min() > 2
    A = torch.exp(layer.A_log)
    assert A.min() >= 2 - 1e-5 and A.max() <= 8 + 1e-5 and A.max() - A.min() > 1
    assert torch.all(layer.D == 1) and torch.all(layer.norm.weight == 1)
    assert layer.A_log._no_weight_decay and layer.D._no_weight_decay and layer.dt_bias._no_weight_decay
    floor = Mamba2Sequential(d_model=16, d_state=4, headdim=4, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-3)
    assert_close(F.softplus(floor.dt_bias), torch.full((8,), 1e-3), FP32, "dt_init_floor")
    conv = Mamba2Sequential(d_model=16, d_state=4, headdim=4, conv_init=0.01)
    assert conv.conv1d.weight.abs().max() <= 0.01


def test_forward_backward_shapes_and_finite_grads():
    for name in ("ngroups2-hdimD-normfirst", "nonorm-bias-conv3"):
        check_shapes_and_grads(make(**CONFIGS[name]), torch.randn(2, 17, CONFIGS[name]["d_model"]), name)


def test_bad_inputs():
    layer = Mamba2Sequential(d_model=16, d_state=4, headdim=8)
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(2, 6, 15))
    with pytest.raises(ValueError, match="x_t"):
        layer.step(torch.randn(2, 6, 16), layer.default_state(2))
    with pytest.raises(ValueError, match="layer_idx"):
        layer(torch.randn(1, 6, 16), inference_params=types.SimpleNamespace(seqlen_offset=0, key_value_memory_dict={}))
