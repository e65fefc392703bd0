"""ssm_universal.layers.GatedMLP against flash-attn's GatedMlp and mamba_ssm's GatedMLP, the SSM branch's parallel
gating, step == forward with and without an SSM branch, shapes/grads, bad inputs. What GatedMLP shares with the
Mamba-style blocks (bf16 autocast, bad arguments) is in test_layer_family_mamba.py.

References (each test runs against every one available):
* "flash_attn": FlashGatedMlpRef below, a transcription of flash_attn/modules/mlp.py GatedMlp (flash-attention
  v2.x, github.com/Dao-AILab/flash-attention) without its tensor-parallel and Triton SwiGLU paths (the fused
  swiglu computes the same silu(gate) * y): same parameter creation order, so the same seed gives the same
  weights.
* "mamba_ssm": mamba_ssm 2.3.2's mamba_ssm/modules/mlp.py GatedMLP (torch only), loaded from <repo>/peers when
  `../shared/tools/peer_packages.sh peers` has unpacked it; MambaGatedMLPRef, its transcription, otherwise too.
"""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_kernels.testing import assert_close
from ssm_universal.layers.gated_mlp import SSM_LAYERS, GatedMLP
from ssm_universal.layers.s4d import S4D
from tests.ssm_universal.layer_checks import (check_reference_checkpoint_loads, check_same_initialisation,
                                              check_shapes_and_grads, perturbed)

FP32 = torch.float32
PEER_MLP = Path(__file__).resolve().parents[2] / "peers" / "mamba" / "mamba_ssm" / "modules" / "mlp.py"


class FlashGatedMlpRef(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, activation=F.sigmoid, bias1=True,
                 bias2=True, multiple_of=256, return_residual=False, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        out_features = out_features if out_features is not None else in_features
        hidden_features = hidden_features if hidden_features is not None else int(8 * in_features / 3)
        hidden_features = (hidden_features + multiple_of - 1) // multiple_of * multiple_of
        self.return_residual = return_residual
        self.fc1 = nn.Linear(in_features, 2 * hidden_features, bias=bias1, **factory_kwargs)
        self.activation = activation
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias2, **factory_kwargs)

    def forward(self, x):
        y = self.fc1(x)
        if self.activation == F.sigmoid:  # Special case for GLU
            y = F.glu(y, dim=-1)
        else:
            y, gate = y.chunk(2, dim=-1)
            y = y * self.activation(gate)
        y = self.fc2(y)
        return y if not self.return_residual else (y, x)


class MambaGatedMLPRef(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, activation=F.silu, bias=False,
                 multiple_of=128, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        out_features = out_features if out_features is not None else in_features
        hidden_features = hidden_features if hidden_features is not None else int(8 * in_features / 3)
        hidden_features = (hidden_features + multiple_of - 1) // multiple_of * multiple_of
        self.fc1 = nn.Linear(in_features, 2 * hidden_features, bias=bias, **factory_kwargs)
        self.activation = activation
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, **factory_kwargs)

    def forward(self, x):
        y = self.fc1(x)
        y, gate = y.chunk(2, dim=-1)
        y = y * self.activation(gate)
        return self.fc2(y)


def load_peer_mamba_gated_mlp():
    if not PEER_MLP.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_peer_mamba_ssm_mlp", PEER_MLP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GatedMLP


MAMBA_REFERENCES = {"inline": MambaGatedMLPRef, "mamba_ssm": load_peer_mamba_gated_mlp()}
MAMBA_REFERENCES = {k: v for k, v in MAMBA_REFERENCES.items() if v is not None}

FLASH_CONFIGS = {
    "defaults-glu": dict(in_features=12),
    "silu-nobias1": dict(in_features=12, hidden_features=20, activation=F.silu, bias1=False, multiple_of=8),
    "gelu-out-nobias2": dict(in_features=8, out_features=5, activation=F.gelu, bias2=False, multiple_of=16),
    "residual-relu": dict(in_features=8, hidden_features=8, activation=F.relu, multiple_of=1, return_residual=True),
}


def assert_same_module(ours, ref, x):
    """Same state_dict (keys, shapes, values from the same seed); a perturbed reference state_dict loads with
    strict=True and gives the same outputs and parameter gradients."""
    check_same_initialisation(ours, ref)
    check_reference_checkpoint_loads(ours, perturbed(ref), x)


@pytest.mark.parametrize("config", list(FLASH_CONFIGS))
def test_matches_flash_attn_gated_mlp(config):
    cfg = FLASH_CONFIGS[config]
    torch.manual_seed(0)
    ref = FlashGatedMlpRef(**cfg)
    torch.manual_seed(0)
    ours = GatedMLP(**cfg)
    assert_same_module(ours, ref, torch.randn(2, 7, cfg["in_features"]))


@pytest.mark.parametrize("ref_name", list(MAMBA_REFERENCES))
def test_matches_mamba_ssm_gated_mlp(ref_name):
    torch.manual_seed(0)
    ref = MAMBA_REFERENCES[ref_name](16, hidden_features=40, out_features=8)
    torch.manual_seed(0)
    ours = GatedMLP(16, hidden_features=40, out_features=8, activation="silu", bias=False, multiple_of=128)
    assert ours.fc1.bias is None and ours.fc2.bias is None and ours.hidden_features == 128
    assert_same_module(ours, ref, torch.randn(2, 5, 16))


def test_hidden_features_default_and_rounding():
    assert GatedMLP(16).hidden_features == 256  # int(8 * 16 / 3) = 42, rounded up to flash-attn's 256
    assert GatedMLP(256, multiple_of=128).hidden_features == 768  # 682 -> 768
    assert GatedMLP(24, multiple_of=1).hidden_features == 64
    assert GatedMLP(8, hidden_features=100, multiple_of=8).hidden_features == 104  # explicit sizes round too
    layer = GatedMLP(8, hidden_features=16, out_features=3, multiple_of=16)
    assert layer.fc1.weight.shape == (32, 8) and layer.fc2.weight.shape == (3, 16)
    assert layer.activation is F.sigmoid and layer.fc1.bias is not None and not layer.return_residual
    assert GatedMLP(8, activation="swish").activation is F.silu


def test_position_wise_on_any_leading_shape():
    layer = GatedMLP(8, multiple_of=8)
    x = torch.randn(3, 4, 5, 8)
    with torch.no_grad():
        assert_close(layer(x), layer(x.reshape(-1, 8)).reshape(3, 4, 5, 8), FP32, "leading dims")


SSM_CASES = {  # in_features = 8
    "s4d": dict(ssm_kwargs=dict(d_state=4)),
    "dss": dict(ssm_kwargs=dict(d_state=4)),
    "s5": dict(ssm_kwargs=dict(d_state=4)),
    "h3": dict(ssm_kwargs=dict(d_state=4, head_dim=2)),
    "mamba": dict(ssm_kwargs=dict(d_state=4)),
    "mamba2": dict(ssm_kwargs=dict(d_state=4, headdim=4, chunk_size=4)),
    "mamba2_sequential": dict(ssm_kwargs=dict(d_state=4, headdim=4, chunk_size=4)),
}


def make_with_ssm(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    layer = GatedMLP(8, hidden_features=12, multiple_of=4, ssm=name, **SSM_CASES[name], **kwargs)
    return perturbed(layer)


@pytest.mark.parametrize("name", list(SSM_CASES))
def test_ssm_branch_gates_in_parallel(name):
    """y = fc2(value * act(gate) * ssm_proj(ssm(x))), with value, gate = fc1(x).chunk(2) and the named layer
    built with ssm_kwargs, checked in float64 from the parameters; the branch changes the output."""
    layer = make_with_ssm(name, activation="silu")
    assert isinstance(layer.ssm, SSM_LAYERS[name]) and layer.ssm.d_state == 4 and layer.ssm.d_model == 8
    assert layer.ssm_proj.weight.shape == (12, 8) and layer.ssm_proj.bias is not None
    x = torch.randn(2, 11, 8)
    with torch.no_grad():
        y = layer(x)
        s = layer.ssm(x).double()
        d = lambda m, t: t @ m.weight.double().T + m.bias.double()  # noqa: E731
        value, gate = d(layer.fc1, x.double()).chunk(2, dim=-1)
        expected = d(layer.fc2, value * F.silu(gate) * d(layer.ssm_proj, s))
        assert_close(y, expected, FP32, "parallel gating")
        plain = GatedMLP(8, hidden_features=12, multiple_of=4, activation="silu")
        plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k.startswith(("fc1", "fc2"))})
        assert (plain(x) - y).abs().max() > 1e-3


def test_ssm_instance_and_its_parameters():
    ssm = S4D(8, d_state=6)
    layer = GatedMLP(8, multiple_of=8, ssm=ssm)
    assert layer.ssm is ssm
    names = {n for n, _ in layer.named_parameters()}
    assert {f"ssm.{n}" for n, _ in ssm.named_parameters()} <= names and {"ssm_proj.weight", "fc1.weight"} <= names


@pytest.mark.parametrize("name", [None, "s4d", "s5", "h3", "mamba", "mamba2_sequential"])
def test_step_equals_forward(name):
    """Token by token from default_state == the full forward, with the SSM branch (in-place and functional
    state updates) and without it (state None); return_residual gives (y_t, x_t)."""
    if name is None:
        torch.manual_seed(0)
        layer = perturbed(GatedMLP(8, hidden_features=12, multiple_of=4, return_residual=True))
    else:
        layer = make_with_ssm(name, return_residual=True)
    batch, length = 2, 13
    x = torch.randn(batch, length, 8)
    with torch.no_grad():
        y, residual = layer(x)
        assert residual is x
        state = layer.default_state(batch)
        assert (state is None) == (name is None)
        steps = []
        for t in range(length):
            (y_t, x_t), state = layer.step(x[:, t], state)
            assert x_t is not None and torch.equal(x_t, x[:, t])
            steps.append(y_t)
    assert_close(torch.stack(steps, 1), y, FP32, "steps")


def test_forward_backward_shapes_and_finite_grads():
    torch.manual_seed(0)
    check_shapes_and_grads(GatedMLP(8, hidden_features=12, multiple_of=4), torch.randn(2, 9, 8), "no ssm")
    for name in ("s4d", "mamba2_sequential"):
        check_shapes_and_grads(make_with_ssm(name), torch.randn(2, 9, 8), name)
    layer = GatedMLP(8, hidden_features=12, out_features=5, multiple_of=4)
    y = layer(torch.randn(2, 9, 8))
    assert y.shape == (2, 9, 5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="in_features"):
        GatedMLP(8)(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match=r"\(B, L, in_features\)"):
        GatedMLP(8, ssm="s4d", ssm_kwargs=dict(d_state=4))(torch.randn(3, 8))
    with pytest.raises(ValueError, match="x_t"):
        GatedMLP(8).step(torch.randn(2, 3, 8), None)
