"""ssm_universal.layers.Mamba2 against mamba_ssm's Mamba2 (modules/mamba2.py), and step == forward. What Mamba2
shares with the other Mamba-style blocks (shapes/grads, bf16 autocast, bad arguments) is in
test_layer_family_mamba.py.

References (each test runs against every one available, so a clean clone still checks something real):
* "inline": Mamba2Ref below, a transcription of mamba_ssm 2.3.2 mamba_ssm/modules/mamba2.py
  (github.com/state-spaces/mamba, tag v2.3.2) restricted to the path it takes without causal_conv1d
  (use_mem_eff_path=False: nn.Conv1d, the unfused scan), with ops/triton/layernorm_gated.py's rms_norm_ref
  for its RMSNorm, a sequential fp32 SSD scan for mamba_chunk_scan_combined, and the math of
  ops/triton/selective_state_update.py's selective_state_update_ref for its decoding step: same parameter
  creation order, so the same seed gives the same weights.
* "mamba_ssm": the published file itself, when `../shared/tools/peer_packages.sh peers` has unpacked it into
  <repo>/peers/mamba/mamba_ssm and Triton can be imported; its RMSNorm runs rms_norm_ref, its step runs
  selective_state_update_ref and its scan the sequential scan below, all on the CPU.
"""
import importlib
import math
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_kernels.testing import assert_close
from ssm_universal.layers.mamba2 import Mamba2
from tests.ssm_universal.layer_checks import (check_in_place_steps_equal_forward,
                                              check_prefill_and_decode_match_reference,
                                              check_reference_checkpoint_loads, check_same_initialisation)
from tests.ssm_universal.peer_sources import PEER_MAMBA, peer_mamba_ssm

FP32 = torch.float32


def ssd_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
            initial_state=None):
    """Sequential fp32 SSD: x, z (b, l, h, p); dt (b, l, h); A (h,); B, C (b, l, g, n); D (h,) or (h, p)."""
    dtype_in = x.dtype
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    heads = x.shape[2]
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    dt = dt.clamp(*dt_limit)
    B = B.repeat_interleave(heads // B.shape[2], dim=2)
    C = C.repeat_interleave(heads // C.shape[2], dim=2)
    state = x.new_zeros(x.shape[0], heads, x.shape[3], B.shape[-1]) if initial_state is None else initial_state
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D).float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype_in), state


def mamba_chunk_scan_combined_ref(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                                  seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                                  return_final_states=False, return_varlen_states=False):
    """mamba_ssm's mamba_chunk_scan_combined signature on ssd_ref (no seq_idx / varlen: not used here)."""
    assert seq_idx is None and not return_varlen_states
    y, state = ssd_ref(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_states)
    return (y, state) if return_final_states else y


def rms_norm_ref(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    """layernorm_gated.rms_norm_ref (upcast=True)."""
    dtype = x.dtype
    x, weight = x.float(), weight.float()
    z = z.float() if z is not None else z
    if z is not None and not norm_before_gate:
        x = x * F.silu(z)
    group_size = x.shape[-1] if group_size is None else group_size
    x_group = x.unflatten(-1, (-1, group_size))
    out = (x_group * torch.rsqrt(x_group.square().mean(dim=-1, keepdim=True) + eps)).flatten(-2) * weight
    if z is not None and norm_before_gate:
        out = out * F.silu(z)
    return out.to(dtype)


class RMSNormGatedRef(nn.Module):
    def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=True):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.register_parameter("bias", None)

    def forward(self, x, z=None):
        return rms_norm_ref(x, self.weight, None, z, self.eps, self.group_size, self.norm_before_gate)


class Mamba2Ref(nn.Module):
    """mamba2.Mamba2 (mamba_ssm 2.3.2), use_mem_eff_path=False, no causal_conv1d, process_group=None."""

    def __init__(self, d_model, d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, d_ssm=None,
                 ngroups=1, A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False,
                 dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), bias=False,
                 conv_bias=True, chunk_size=256, use_mem_eff_path=True, layer_idx=None):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = self.expand * self.d_model
        self.headdim = headdim
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        self.ngroups = ngroups
        self.nheads = self.d_ssm // self.headdim
        self.D_has_hdim, self.rmsnorm, self.dt_limit, self.chunk_size = D_has_hdim, rmsnorm, dt_limit, chunk_size
        self.layer_idx = layer_idx
        d_in_proj = 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads
        self.in_proj = nn.Linear(self.d_model, d_in_proj, bias=bias)
        conv_dim = self.d_ssm + 2 * self.ngroups * self.d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, bias=conv_bias, kernel_size=d_conv, groups=conv_dim,
                                padding=d_conv - 1)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = torch.clamp(dt, min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        A = torch.empty(self.nheads, dtype=torch.float32).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_ssm if self.D_has_hdim else self.nheads))
        if self.rmsnorm:
            self.norm = RMSNormGatedRef(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                        group_size=self.d_ssm // ngroups)
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias)

    def _split(self, zxbcdt):
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - 2 * self.ngroups * self.d_state - self.nheads) // 2
        return torch.split(zxbcdt, [d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * self.ngroups * self.d_state,
                                    self.nheads], dim=-1)

    def _finish(self, y, z, z0, x0):
        if self.rmsnorm:
            y = self.norm(y, z)
        if z0.shape[-1] > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)

    def forward(self, u, inference_params=None):
        batch, seqlen, _ = u.shape
        conv_state = ssm_state = None
        if inference_params is not None:
            cache = inference_params.key_value_memory_dict
            if self.layer_idx not in cache:
                cache[self.layer_idx] = (torch.zeros(batch, self.d_conv, self.conv1d.weight.shape[0]).transpose(1, 2),
                                         torch.zeros(batch, self.nheads, self.headdim, self.d_state))
            conv_state, ssm_state = cache[self.layer_idx]
            if inference_params.seqlen_offset > 0:
                return self.step(u, conv_state, ssm_state)[0]
        z0, x0, z, xBC, dt = self._split(self.in_proj(u))
        A = -torch.exp(self.A_log.float())
        if conv_state is not None:
            xBC_t = xBC.transpose(1, 2)
            conv_state.copy_(F.pad(xBC_t, (self.d_conv - xBC_t.shape[-1], 0)))
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2)).transpose(1, 2)[:, :-(self.d_conv - 1)])
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        heads, groups = (batch, seqlen, self.nheads, self.headdim), (batch, seqlen, self.ngroups, self.d_state)
        y, last_state = ssd_ref(x.reshape(heads), dt, A, B.reshape(groups), C.reshape(groups),
                                D=self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D,
                                z=None if self.rmsnorm else z.reshape(heads), dt_bias=self.dt_bias,
                                dt_softplus=True, dt_limit=self.dt_limit)
        if ssm_state is not None:
            ssm_state.copy_(last_state)
        return self._finish(y.reshape(batch, seqlen, self.d_ssm), z, z0, x0)

    def step(self, hidden_states, conv_state, ssm_state):
        """The selective_state_update path of mamba2.py's step, with selective_state_update_ref's math."""
        z0, x0, z, xBC, dt = self._split(self.in_proj(hidden_states.squeeze(1)))
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = xBC
        xBC = F.silu(torch.sum(conv_state * self.conv1d.weight[:, 0], dim=-1) + self.conv1d.bias)
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        A = -torch.exp(self.A_log.float())
        dt = F.softplus(dt + self.dt_bias)  # (b, h); selective_state_update has no dt_limit
        x = x.reshape(-1, self.nheads, self.headdim)
        B = B.reshape(-1, self.ngroups, self.d_state).repeat_interleave(self.nheads // self.ngroups, dim=1)
        C = C.reshape(-1, self.ngroups, self.d_state).repeat_interleave(self.nheads // self.ngroups, dim=1)
        dA = torch.exp(dt * A)[..., None, None]
        ssm_state.copy_(ssm_state * dA + (dt[..., None] * x)[..., None] * B[:, :, None])
        y = torch.einsum("bhpn,bhn->bhp", ssm_state, C) + self.D[:, None] * x
        if not self.rmsnorm:
            y = y * F.silu(z.reshape(x.shape))
        y = self._finish(y.reshape(-1, self.d_ssm), z, z0, x0)
        return y.unsqueeze(1), conv_state, ssm_state


def load_mamba_ssm_mamba2():
    """mamba_ssm 2.3.2's Mamba2 class from <repo>/peers, or None when the peer sources or Triton are absent.

    sys.modules is restored afterwards, so other tests that import the real packages are not affected."""
    if not (PEER_MAMBA / "modules" / "mamba2.py").is_file():
        return None
    try:
        import triton  # noqa: F401  (layernorm_gated and selective_state_update define Triton kernels)
    except ImportError:
        return None
    hub = types.ModuleType("huggingface_hub")
    hub.PyTorchModelHubMixin = type("PyTorchModelHubMixin", (), {})
    ssd = types.ModuleType("mamba_ssm.ops.triton.ssd_combined")
    ssd.mamba_chunk_scan_combined = mamba_chunk_scan_combined_ref
    ssd.mamba_split_conv1d_scan_combined = None
    stubs = {"huggingface_hub": hub, "causal_conv1d": None, "causal_conv1d.causal_conv1d_varlen": None,
             "mamba_ssm.ops.triton.ssd_combined": ssd}
    with peer_mamba_ssm(stubs, ("causal_conv1d", "huggingface_hub")):
        norm = importlib.import_module("mamba_ssm.ops.triton.layernorm_gated")
        ssu = importlib.import_module("mamba_ssm.ops.triton.selective_state_update")
        mamba2 = importlib.import_module("mamba_ssm.modules.mamba2")
    assert mamba2.causal_conv1d_fn is None and mamba2.causal_conv1d_update is None
    norm.rmsnorm_fn = lambda x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True: \
        norm.rms_norm_ref(x, weight, bias, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate)
    mamba2.selective_state_update = ssu.selective_state_update_ref
    return mamba2.Mamba2


REFERENCES = {"inline": Mamba2Ref, "mamba_ssm": load_mamba_ssm_mamba2()}
REFERENCES = {name: cls for name, cls in REFERENCES.items() if cls is not None}

CONFIGS = {  # small shapes; chunk_size below L so that several chunks are scanned
    "default": dict(d_model=16, d_state=8, headdim=8, chunk_size=8),
    "ngroups2-hdimD-normfirst": dict(d_model=16, d_state=4, headdim=4, ngroups=2, D_has_hdim=True,
                                     norm_before_gate=True, chunk_size=5),
    "mlp-nonorm-bias": dict(d_model=12, d_state=6, d_conv=3, headdim=4, expand=2, d_ssm=16, rmsnorm=False,
                            bias=True, conv_init=0.3, A_init_range=(2, 4), chunk_size=7),
    "mlp-norm-ngroups2": dict(d_model=16, d_state=4, headdim=4, d_ssm=24, ngroups=2, chunk_size=6),
}
STEP_CONFIGS = dict(CONFIGS, dt_limit=dict(d_model=16, d_state=8, headdim=8, chunk_size=4, dt_limit=(0.02, 0.05)))


def make_pair(reference, seed=0, **config):
    """(reference, ours) built from the same seed."""
    torch.manual_seed(seed)
    ref = reference(**config, use_mem_eff_path=False, layer_idx=0)
    torch.manual_seed(seed)
    return ref, Mamba2(**config, layer_idx=0)


def test_parameter_list_transcribed_from_mamba2_2_3_2():
    """state_dict keys and shapes as mamba_ssm 2.3.2 mamba2.py's __init__ creates them, written out by hand
    for d_model=16, d_state=4, d_conv=3, expand=2, headdim=4, d_ssm=24, ngroups=2, D_has_hdim, bias:
    d_inner 32, nheads 6, d_in_proj = 2*32 + 2*2*4 + 6 = 86, conv_dim = 24 + 2*2*4 = 40."""
    layer = Mamba2(d_model=16, d_state=4, d_conv=3, headdim=4, d_ssm=24, ngroups=2, D_has_hdim=True, bias=True)
    expected = [("dt_bias", (6,)), ("A_log", (6,)), ("D", (24,)), ("in_proj.weight", (86, 16)),
                ("in_proj.bias", (86,)), ("conv1d.weight", (40, 1, 3)), ("conv1d.bias", (40,)),
                ("norm.weight", (24,)), ("out_proj.weight", (16, 32)), ("out_proj.bias", (16,))]
    assert [(k, tuple(v.shape)) for k, v in layer.state_dict().items()] == expected
    assert "norm.weight" not in Mamba2(d_model=16, headdim=8, rmsnorm=False).state_dict()
    assert layer.norm.group_size == 12 and layer.norm.eps == 1e-5


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("ref_name", list(REFERENCES))
def test_parameters_and_init_match_mamba_ssm(ref_name, config):
    ref, ours = make_pair(REFERENCES[ref_name], **CONFIGS[config])
    check_same_initialisation(ours, ref)
    assert ours.A_log._no_weight_decay and ours.D._no_weight_decay and ours.dt_bias._no_weight_decay
    dt = F.softplus(ours.dt_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    low, high = CONFIGS[config].get("A_init_range", (1, 16))
    A = torch.exp(ours.A_log)
    assert A.min() >= low - 1e-5 and A.max() <= high + 1e-5 and torch.all(ours.D == 1)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("ref_name", list(REFERENCES))
def test_checkpoint_loads_and_matches_mamba_ssm(ref_name, config):
    """A reference checkpoint loads with strict=True; outputs, every parameter gradient, and a prefill then
    one-token decoding through inference_params (outputs and cached states) agree in fp32."""
    cfg = CONFIGS[config]
    ref, ours = make_pair(REFERENCES[ref_name], **cfg)
    with torch.no_grad():  # move away from the init so that every parameter matters
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 13, cfg["d_model"])
    y_ref = check_reference_checkpoint_loads(ours, ref, x)
    if cfg.get("D_has_hdim"):
        return  # mamba_ssm's step cannot decode with D_has_hdim (repeat "h -> h p" of a (d_ssm,) D)
    # a prefill shorter than d_conv (the conv cache is zero-padded), then one token at a time
    check_prefill_and_decode_match_reference(ours, ref, x, 2, y_ref)


@pytest.mark.parametrize("config", list(STEP_CONFIGS))
def test_step_equals_forward(config):
    """Token by token from default_state == the full forward; the state after the steps == the state a
    forward with `state=` leaves; a forward continuing from a stepped state == the rest of the forward."""
    cfg = STEP_CONFIGS[config]
    layer = Mamba2(**cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch, length, split = 3, 19, 7
    x = torch.randn(batch, length, cfg["d_model"])
    state = layer.default_state(batch)
    conv_dim = layer.d_ssm + 2 * layer.ngroups * layer.d_state
    assert state[0].shape == (batch, conv_dim, layer.d_conv) and state[0].dtype == FP32
    assert state[1].shape == (batch, layer.nheads, layer.headdim, layer.d_state) and state[1].dtype == FP32
    check_in_place_steps_equal_forward(layer, x, split)


def test_dt_limit_clamps_forward():
    """dt_limit changes the output (the clamp is applied) and matches the inline reference's clamp."""
    cfg = dict(d_model=16, d_state=8, headdim=8, chunk_size=4)
    ref, free = make_pair(Mamba2Ref, **cfg, dt_limit=(0.02, 0.05))
    limited = Mamba2(**cfg, dt_limit=(0.02, 0.05))
    limited.load_state_dict(free.state_dict())
    free.dt_limit = (0.0, float("inf"))
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        assert_close(limited(x), ref(x), FP32, "dt_limit forward")
        assert (limited(x) - free(x)).abs().max() > 1e-3


@pytest.mark.parametrize("config", ["default", "ngroups2-hdimD-normfirst", "mlp-nonorm-bias"])
def test_packed_sequences_equal_separate_runs(config):
    """Three sequences packed along L with seq_idx (batch 2 too), or with cu_seqlens alone, give the outputs of
    separate runs; the states a packed forward leaves (with state=, or per sequence with cu_seqlens and
    inference_params) are those of the separate runs, also for a last sequence shorter than d_conv."""
    cfg = CONFIGS[config]
    layer = Mamba2(**cfg, layer_idx=0)
    lengths = (9, 14, 2)
    seqs = [torch.randn(1, n, cfg["d_model"]) for n in lengths]
    packed = torch.cat(seqs, dim=1)
    seq_idx = torch.cat([torch.full((1, n), i, dtype=torch.int32) for i, n in enumerate(lengths)], dim=1)
    cu_seqlens = torch.tensor([0, 9, 23, 25], dtype=torch.int32)
    with torch.no_grad():
        states = [layer.default_state(1) for _ in seqs]
        separate = torch.cat([layer(s, state=st) for s, st in zip(seqs, states)], dim=1)
        assert_close(layer(packed, seq_idx=seq_idx), separate, FP32, "seq_idx")
        assert_close(layer(packed, cu_seqlens=cu_seqlens), separate, FP32, "cu_seqlens")
        assert_close(layer(packed, seq_idx=seq_idx, cu_seqlens=cu_seqlens), separate, FP32, "both")
        assert (layer(packed) - separate).abs().max() > 1e-4, "packing without seq_idx must differ"
        two = torch.cat([packed, packed.flip(1)])
        y2 = layer(two, seq_idx=torch.cat([seq_idx, seq_idx.flip(1)]))
        assert_close(y2[:1], separate, FP32, "seq_idx, batch row 0")

        state = layer.default_state(1)
        layer(packed, seq_idx=seq_idx, state=state)
        for i, name in enumerate(("conv_state", "ssm_state")):
            assert_close(state[i], states[-1][i], FP32, f"{name} after a packed forward")

        params = types.SimpleNamespace(seqlen_offset=0, key_value_memory_dict={})
        assert_close(layer(packed, cu_seqlens=cu_seqlens, inference_params=params), separate, FP32, "varlen prefill")
        for i, name in enumerate(("conv_state", "ssm_state")):
            expected = torch.cat([st[i] for st in states])
            assert_close(params.key_value_memory_dict[0][i], expected, FP32, f"varlen {name}")


def test_seqlen_flattened_input():
    layer = Mamba2(d_model=16, d_state=8, headdim=8)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        assert_close(layer(x.reshape(14, 16), seqlen=7), layer(x).reshape(14, 16), FP32, "seqlen")


def test_bad_forward_arguments():
    layer = Mamba2(d_model=16, d_state=4, headdim=8)
    with pytest.raises(ValueError, match="batch size 1"):
        layer(torch.randn(2, 6, 16), cu_seqlens=torch.tensor([0, 3, 6]))
    with pytest.raises(ValueError, match="seqlen"):
        layer(torch.randn(7, 16), seqlen=3)
    with pytest.raises(ValueError, match="layer_idx"):
        layer(torch.randn(1, 6, 16), inference_params=types.SimpleNamespace(seqlen_offset=0, key_value_memory_dict={}))
