"""ssm_universal.models.hsss (hsss 0.0.9's LowLevelMamba / HSSS, bugs fixed) and ssm_universal.models.hiss
(HiSS, arXiv 2402.10211): checkpoint compatibility, the hsss README example, per-branch outputs, every
option, chunking, step == forward with Mamba, S4D and S5 (and the other layers) as levels, grads, bf16.

hsss references (each LowLevelMamba compatibility test runs against both):
* "inline": HsssLowLevelMambaRef below, a transcription of hsss 0.0.9 hsss/model.py (LowLevelMamba ->
  Mamba(MambaConfig) -> ResidualBlock(MambaBlock, RMSNorm), its sequential scan), same parameter creation
  order, so the same seed gives the same weights.
* "hsss": the published package (pip install hsss==0.0.9 --no-deps); its `from zeta.nn import FeedForward`
  (zetascale, used only by HSSS / SimpleHSSSMamba) is stubbed when zetascale is absent.
"""
import importlib
import importlib.util
import math
import sys
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssm_kernels.testing import assert_close
from ssm_universal.layers import Mamba, S4D, S5
from ssm_universal.models.hiss import HiSS, layer_class
from ssm_universal.models.hsss import HSSS, FeedForward, HighLevelMamba, LowLevelMamba, SimpleHSSSMamba

FP32 = torch.float32


# ---------------------------------------------------------------------------------------------- references
class _RMSNormRef(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _MambaBlockRef(nn.Module):
    """hsss's MambaBlock (mamba-minimal), sequential scan."""

    def __init__(self, dim, dt_rank, d_state, expand_factor, d_conv, dt_min, dt_max, dt_init, dt_scale, bias,
                 conv_bias):
        super().__init__()
        self.d_inner, self.dt_rank, self.d_state = expand_factor * dim, dt_rank, d_state
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, bias=conv_bias, groups=self.d_inner,
                                padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, self.d_inner, bias=True)
        std = dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
                       ).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias)

    def forward(self, x):
        length = x.shape[1]
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[:, :, :length].transpose(1, 2))
        A = -torch.exp(self.A_log.float())
        delta, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(delta))
        deltaA = torch.exp(delta.unsqueeze(-1) * A)
        BX = delta.unsqueeze(-1) * B.unsqueeze(2) * x.unsqueeze(-1)
        h = torch.zeros(x.shape[0], self.d_inner, self.d_state)
        hs = []
        for t in range(length):
            h = deltaA[:, t] * h + BX[:, t]
            hs.append(h)
        y = (torch.stack(hs, 1) @ C.unsqueeze(-1)).squeeze(3) + self.D * x
        return self.out_proj(y * F.silu(z))


class _ResidualBlockRef(nn.Module):
    def __init__(self, dim, **config):
        super().__init__()
        self.mixer = _MambaBlockRef(dim, **config)
        self.norm = _RMSNormRef(dim)

    def forward(self, x):
        return self.mixer(self.norm(x)) + x


class HsssLowLevelMambaRef(nn.Module):
    """hsss 0.0.9 LowLevelMamba: self.model = Mamba(config) with model.layers = ModuleList(ResidualBlock)."""

    def __init__(self, dim=4, depth=3, dt_rank=2, d_state=2, expand_factor=2, d_conv=3, dt_min=0.001, dt_max=0.1,
                 dt_init="random", dt_scale=1.0, bias=False, conv_bias=True, pscan=True):
        super().__init__()
        dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else dt_rank
        config = dict(dt_rank=dt_rank, d_state=d_state, expand_factor=expand_factor, d_conv=d_conv, dt_min=dt_min,
                      dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale, bias=bias, conv_bias=conv_bias)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([_ResidualBlockRef(dim, **config) for _ in range(depth)])

    def forward(self, x):
        for layer in self.model.layers:
            x = layer(x)
        return x


def load_hsss_low_level_mamba():
    """hsss's LowLevelMamba class, or None when hsss is not installed; sys.modules is restored afterwards."""
    if importlib.util.find_spec("hsss") is None:
        return None
    ours = lambda n: n.split(".")[0] in ("hsss", "zeta")  # noqa: E731
    saved = {n: m for n, m in sys.modules.items() if ours(n)}
    try:
        try:
            importlib.import_module("zeta.nn")
        except ImportError:  # only HSSS / SimpleHSSSMamba use zeta's FeedForward
            zeta, zeta_nn = types.ModuleType("zeta"), types.ModuleType("zeta.nn")
            zeta_nn.FeedForward, zeta.nn = None, zeta_nn
            sys.modules.update({"zeta": zeta, "zeta.nn": zeta_nn})
        return importlib.import_module("hsss.model").LowLevelMamba
    finally:
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


REFERENCES = {"inline": lambda: HsssLowLevelMambaRef, "hsss": load_hsss_low_level_mamba}
LOW_CONFIGS = [
    dict(dim=8, depth=2, dt_rank=4, d_state=4, expand_factor=4, d_conv=6),  # the README's, shallower
    dict(dim=16, depth=1, dt_rank="auto", d_state=3, expand_factor=1, d_conv=2, dt_init="constant", dt_scale=0.5,
         bias=True, conv_bias=False, dt_min=0.01, dt_max=0.05, pscan=False),
]


def readme_branch():
    return LowLevelMamba(
        dim=8,  # dimension of input
        depth=6,  # depth of input
        dt_rank=4,  # rank of input
        d_state=4,  # state of input
        expand_factor=4,  # expansion factor of input
        d_conv=6,  # convolution dimension of input
        dt_min=0.001,  # minimum time step of input
        dt_max=0.1,  # maximum time step of input
        dt_init="random",  # initialization method of input
        dt_scale=1.0,  # scaling factor of input
        bias=False,  # whether to use bias in input
        conv_bias=True,  # whether to use bias in convolution of input
        pscan=True,  # whether to use parallel scan in input
    )


# ------------------------------------------------------------------------------------------ LowLevelMamba
@pytest.mark.parametrize("config", LOW_CONFIGS, ids=["readme", "options"])
@pytest.mark.parametrize("ref_name", list(REFERENCES))
def test_low_level_mamba_loads_hsss_checkpoint(ref_name, config):
    """Same keys and same init from the same seed; a perturbed hsss state_dict loads with strict=True and gives
    the same outputs and parameter gradients."""
    reference = REFERENCES[ref_name]()
    if reference is None:
        pytest.skip("hsss is not installed (pip install hsss==0.0.9 --no-deps)")
    torch.manual_seed(0)
    ref = reference(**config)
    torch.manual_seed(0)
    ours = LowLevelMamba(**config)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert sorted(our_sd) == sorted(ref_sd)
    for key, value in ref_sd.items():
        assert torch.equal(our_sd[key], value), f"{key}: different initialisation from the same seed"
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 13, config["dim"])
    y_ref, y = ref(x), ours(x)
    assert_close(y, y_ref, FP32, "forward")
    cotangent = torch.randn_like(y)
    (y_ref * cotangent).sum().backward()
    (y * cotangent).sum().backward()
    grads = dict(ours.named_parameters())
    for name, p_ref in ref.named_parameters():
        assert_close(grads[name].grad, p_ref.grad, FP32, f"gradient of {name}")


@pytest.mark.parametrize("config", LOW_CONFIGS, ids=["readme", "options"])
def test_low_level_mamba_step_equals_forward_and_grads(config):
    layer = LowLevelMamba(**config)
    assert isinstance(layer.model.layers, nn.ModuleList) and len(layer.model.layers) == config["depth"]
    assert all(isinstance(block.mixer, Mamba) for block in layer.model.layers)
    x = torch.randn(2, 11, config["dim"])
    with torch.no_grad():
        y = layer(x)
        state = layer.default_state(2)
        steps = [layer.step(x[:, t], state)[0] for t in range(x.shape[1])]
    assert_close(torch.stack(steps, 1), y, FP32, "steps")
    x.requires_grad_()
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_low_level_mamba_validates_arguments():
    with pytest.raises(ValueError, match="depth"):
        LowLevelMamba(dim=4, depth=0)
    with pytest.raises(TypeError, match="dim"):
        LowLevelMamba(dim=4.0)
    with pytest.raises(ValueError, match="dt_init"):
        LowLevelMamba(dim=4, dt_init="zeros")
    with pytest.raises(TypeError, match="pscan"):
        LowLevelMamba(dim=4, pscan="yes")
    with pytest.raises(ValueError, match="dt_min"):
        LowLevelMamba(dim=4, dt_min=0.5, dt_max=0.1)
    with pytest.raises(ValueError, match="shape"):
        LowLevelMamba(dim=4)(torch.randn(1, 3, 5))
    assert issubclass(HighLevelMamba, LowLevelMamba)


# ------------------------------------------------------------------------------------------------- HSSS
def test_hsss_readme_example_runs_as_written():
    """hsss's README usage (its imports swapped for ours) returns one (B, L, dim) output per branch; every
    module is registered, so the model is one deterministic function that survives a state_dict round trip."""
    torch.manual_seed(0)
    # Reandom tensor
    x = torch.randn(1, 10, 8)
    mamba, mamba2, mamba3 = readme_branch(), readme_branch(), readme_branch()
    # HSSS
    hsss = HSSS(
        layers=[mamba, mamba2, mamba3],
        dim=12,  # dimension of model
        depth=3,  # depth of model
        dt_rank=2,  # rank of model
        d_state=2,  # state of model
        expand_factor=2,  # expansion factor of model
        d_conv=3,  # convolution dimension of model
        dt_min=0.001,  # minimum time step of model
        dt_max=0.1,  # maximum time step of model
        dt_init="random",  # initialization method of model
        dt_scale=1.0,  # scaling factor of model
        bias=False,  # whether to use bias in model
        conv_bias=True,  # whether to use bias in convolution of model
        pscan=True,  # whether to use parallel scan in model
        proj_layer=True,
    )
    # Forward pass
    out = hsss(x)
    assert isinstance(out, tuple) and len(out) == 3
    assert all(o.shape == (1, 10, 12) and torch.isfinite(o).all() for o in out)

    registered = {id(p) for p in hsss.parameters()}
    for module in (mamba, mamba2, mamba3, hsss.fusion, hsss.embed, hsss.high_level_mamba):
        assert all(id(p) in registered for p in module.parameters()), type(module).__name__
    assert isinstance(hsss.fusion, FeedForward) and hsss.fusion.ff[0][0].out_features == 48

    hsss.eval()
    with torch.no_grad():
        first, again = hsss(x), hsss(x)
        copy = HSSS(layers=[readme_branch() for _ in range(3)], dim=12, depth=3, dt_rank=2, d_state=2,
                    expand_factor=2, d_conv=3).eval()
        copy.load_state_dict(hsss.state_dict(), strict=True)
        copied = copy(x)
    for a, b, c in zip(first, again, copied):
        assert torch.equal(a, b) and torch.equal(a, c)

    hsss.train()
    sum(o.square().sum() for o in hsss(x)).backward()
    for name, p in hsss.named_parameters():
        if name.startswith("embed."):
            assert p.grad is None  # float inputs are not embedded
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def small_branches(n=3, dim=6):
    return [LowLevelMamba(dim=dim, depth=1, dt_rank=2, d_state=2, expand_factor=2, d_conv=3) for _ in range(n)]


def test_hsss_outputs_are_per_branch():
    """Branches are concatenated along the sequence and the high level is causal: output i depends on branches
    up to i only, so perturbing branch 1 leaves output 0 unchanged and changes outputs 1 and 2."""
    torch.manual_seed(0)
    model = HSSS(small_branches(3), dim=8, depth=1, dropout=0.0).eval()
    x = torch.randn(2, 7, 6)
    with torch.no_grad():
        before = model(x)
        for p in model.layers[1].parameters():
            p.add_(0.5)
        after = model(x)
    assert [o.shape for o in before] == [(2, 7, 8)] * 3
    assert torch.equal(before[0], after[0])
    assert not torch.allclose(before[1], after[1]) and not torch.allclose(before[2], after[2])


@pytest.mark.parametrize("dim_range", [-2, 1, -1, 2])
@pytest.mark.parametrize("proj_layer,ffn", [(True, True), (True, False), (False, True)])
def test_hsss_options(proj_layer, ffn, dim_range):
    torch.manual_seed(0)
    sequence = dim_range in (-2, 1)
    n, width = 2, 6
    dim = (width if sequence else n * width) if not proj_layer else 8
    model = HSSS(small_branches(n, width), dim=dim, num_tokens=50, depth=1, proj_layer=proj_layer, ffn=ffn,
                 dropout=0.2, dim_range=dim_range)
    expected = nn.Identity if not proj_layer else (FeedForward if ffn else nn.Linear)
    assert type(model.fusion) is expected
    if proj_layer and ffn:
        assert model.fusion.ff[1].p == 0.2
    for x in (torch.randn(2, 5, width), torch.randint(0, 50, (2, 5))):
        out = model(x)
        assert len(out) == n
        assert all(o.shape == ((2, 5, dim) if sequence else (2, 5, dim // n)) for o in out)
    sum(o.square().sum() for o in out).backward()
    assert model.embed.weight.grad is not None and torch.isfinite(model.embed.weight.grad).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_hsss_validates_arguments():
    with pytest.raises(TypeError, match="layers"):
        HSSS([])
    with pytest.raises(ValueError, match="one width"):
        HSSS([small_branches(1, 6)[0], small_branches(1, 4)[0]])
    with pytest.raises(ValueError, match="proj_layer=False"):
        HSSS(small_branches(2, 6), dim=8, proj_layer=False)
    with pytest.raises(ValueError, match="multiple of the number of branches"):
        HSSS(small_branches(3, 6), dim=8, dim_range=-1)
    with pytest.raises(ValueError, match="dim_range"):
        HSSS(small_branches(2, 6), dim_range=0)
    with pytest.raises(TypeError, match="d_model"):
        HSSS([nn.Linear(3, 3)])


@pytest.mark.parametrize("proj_layer", [True, False])
def test_simple_hsss_mamba(proj_layer):
    torch.manual_seed(0)
    model = SimpleHSSSMamba(dim_in=6, depth_in=1, d_conv_in=3, dim=4, depth=1, proj_layer=proj_layer)
    assert type(model.ffn) is (FeedForward if proj_layer else nn.Linear)
    x = torch.randn(2, 5, 6)
    y = model(x)
    assert y.shape == (2, 5, 4)
    y.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------- HiSS
LEVEL_KWARGS = {
    "mamba": dict(d_state=4, d_conv=3, expand=2),
    "s4d": dict(d_state=8),
    "s5": dict(d_state=8),
    "mamba2": dict(d_state=8, headdim=4, d_conv=3, chunk_size=4),
    "dss": dict(d_state=8),
    "h3": dict(d_state=8),
}
PAIRS = [("mamba", "s4d"), ("s4d", "s5"), ("s5", "mamba")]


def make_hiss(low, high, chunk_size=5, d_in=3, d_out=2, **kwargs):
    return HiSS(d_in, d_out, chunk_size, low_level=low, high_level=high, d_low=8, d_high=8,
                low_level_kwargs=LEVEL_KWARGS[low], high_level_kwargs=LEVEL_KWARGS[high], **kwargs)


def reference_hiss(model, x):
    """HiSS written out chunk by chunk: each chunk (however long) runs through the low level on its own."""
    u = model.in_proj(x)
    chunks = torch.split(u, model.chunk_size, dim=1)
    features = torch.stack([model.low_level(chunk)[:, -1] for chunk in chunks], dim=1)
    h = model.high_level(model.mid_proj(model.low_norm(features)))
    return model.out_proj(model.high_norm(h))


def stepped_hiss(model, x):
    """Feed x sample by sample; collect the outputs of completed chunks and of the final, shorter one."""
    state = model.default_state(x.shape[0])
    outputs = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        assert (y is not None) == ((t + 1) % model.chunk_size == 0)
        if y is not None:
            outputs.append(y)
    y, state = model.finish(state)
    assert (y is None) == (x.shape[1] % model.chunk_size == 0) and state.position == 0
    if y is not None:
        outputs.append(y)
    return torch.stack(outputs, dim=1)


@pytest.mark.parametrize("length", [30, 33], ids=["whole-chunks", "partial-last-chunk"])
@pytest.mark.parametrize("low,high", PAIRS)
def test_hiss_forward_and_step_equal_chunk_by_chunk_reference(low, high, length):
    torch.manual_seed(0)
    model = make_hiss(low, high, chunk_size=6).eval()
    x = torch.randn(2, length, 3)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, math.ceil(length / 6), 2)
        assert_close(y, reference_hiss(model, x), FP32, "forward vs chunk-by-chunk")
        assert_close(stepped_hiss(model, x), y, FP32, "steps vs forward")


@pytest.mark.parametrize("low,high", [("mamba2", "dss"), ("h3", "mamba2"), ("dss", "h3")])
def test_hiss_other_layers_as_levels(low, high):
    torch.manual_seed(0)
    model = make_hiss(low, high, chunk_size=4).eval()
    assert isinstance(model.low_level, layer_class(low)) and isinstance(model.high_level, layer_class(high))
    x = torch.randn(2, 14, 3)
    with torch.no_grad():
        y = model(x)
        assert_close(y, reference_hiss(model, x), FP32, "forward vs chunk-by-chunk")
        assert_close(stepped_hiss(model, x), y, FP32, "steps vs forward")


def test_hiss_chunks_are_independent_and_causal():
    """Changing chunk 1's samples changes no output before chunk 1; changing the last sample of a chunk changes
    that chunk's output; the low level restarts at every chunk."""
    torch.manual_seed(0)
    model = make_hiss("s5", "s4d", chunk_size=4).eval()
    x = torch.randn(1, 16, 3)
    x2 = x.clone()
    x2[:, 4:8] += 1.0
    with torch.no_grad():
        y, y2 = model(x), model(x2)
        assert torch.equal(y[:, 0], y2[:, 0]) and not torch.allclose(y[:, 1], y2[:, 1])
        # chunk features: the low level's last output on each chunk alone
        features = model.chunk_features(x)
        assert_close(features[:, 2], model.low_level(model.in_proj(x[:, 8:12]))[:, -1], FP32, "chunk 2")


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", None])
def test_hiss_shapes_grads_and_norms(norm):
    torch.manual_seed(0)
    model = make_hiss("mamba", "s5", chunk_size=3, norm=norm, dropout=0.1)
    expected = {"layernorm": nn.LayerNorm, None: nn.Identity}.get(norm)
    if expected is not None:
        assert type(model.low_norm) is expected and type(model.high_norm) is expected
    x = torch.randn(2, 10, 3, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 4, 2) and y.dtype == FP32
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_hiss_level_specs():
    """A layer name, a layer class, a factory function and a built module all give the same model."""
    def build(spec_low, spec_high, **kwargs):
        torch.manual_seed(0)
        return HiSS(3, 2, 4, low_level=spec_low, high_level=spec_high, **kwargs).eval()

    x = torch.randn(2, 9, 3)
    by_name = build("S4D", "mamba", d_low=8, d_high=8, low_level_kwargs=LEVEL_KWARGS["s4d"],
                    high_level_kwargs=LEVEL_KWARGS["mamba"])
    by_class = build(S4D, Mamba, d_low=8, d_high=8, low_level_kwargs=LEVEL_KWARGS["s4d"],
                     high_level_kwargs=LEVEL_KWARGS["mamba"])
    by_factory = build(lambda d_model: S4D(d_model, **LEVEL_KWARGS["s4d"]),
                       lambda d_model: Mamba(d_model, **LEVEL_KWARGS["mamba"]), d_low=8, d_high=8)
    torch.manual_seed(0)
    low, high = S4D(8, **LEVEL_KWARGS["s4d"]), Mamba(8, **LEVEL_KWARGS["mamba"])
    by_module = HiSS(3, 2, 4, low_level=low, high_level=high).eval()  # widths read from d_model
    assert by_module.d_low == 8 and by_module.low_level is low
    with torch.no_grad():
        y = by_name(x)
        for other in (by_class, by_factory, by_module):
            assert torch.equal(other(x), y)
    # hsss's LowLevelMamba (width `dim`) is a valid level too
    model = HiSS(3, 2, 4, low_level=LowLevelMamba(dim=8, depth=2), high_level="s5", d_high=8,
                 high_level_kwargs=LEVEL_KWARGS["s5"]).eval()
    with torch.no_grad():
        assert_close(stepped_hiss(model, x), model(x), FP32, "LowLevelMamba level: steps vs forward")


class MeanMix(nn.Module):
    """A non-causal, nonlinear (B, L, d) -> (B, L, d) module: every output reads the mean over the sequence."""

    def __init__(self, d_model):
        super().__init__()
        self.d_model = d_model
        self.linear = nn.Linear(d_model, d_model)

    def forward(self, x):
        return torch.tanh(self.linear(x) + x.mean(dim=1, keepdim=True))


@pytest.mark.parametrize("low", ["s4d-bidirectional", "mean-mix"])
def test_hiss_non_causal_low_level_partial_chunk_is_exact(low):
    """A non-causal low level sees only its own chunk, and the shorter last chunk is not padded (padding would
    change the mean-mix module's outputs)."""
    torch.manual_seed(0)
    spec, kwargs = (("s4d", dict(d_state=8, bidirectional=True)) if low == "s4d-bidirectional"
                    else (MeanMix(8), None))
    model = HiSS(3, 2, 5, low_level=spec, high_level="s5", d_low=8, d_high=8, low_level_kwargs=kwargs,
                 high_level_kwargs=LEVEL_KWARGS["s5"]).eval()
    x = torch.randn(2, 13, 3)
    with torch.no_grad():
        assert_close(model(x), reference_hiss(model, x), FP32, f"{low} low level")


@pytest.mark.parametrize("chunk_size,length", [(1, 7), (8, 5), (5, 5)])
def test_hiss_chunk_size_edges(chunk_size, length):
    torch.manual_seed(0)
    model = make_hiss("s4d", "mamba", chunk_size=chunk_size).eval()
    x = torch.randn(2, length, 3)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, math.ceil(length / chunk_size), 2)
        assert_close(y, reference_hiss(model, x), FP32, "forward vs chunk-by-chunk")
        assert_close(stepped_hiss(model, x), y, FP32, "steps vs forward")


def test_hiss_bf16_autocast():
    torch.manual_seed(0)
    model = make_hiss("mamba", "s5", chunk_size=4)
    x = torch.randn(2, 12, 3)
    y32 = model(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
        y_t, state = model.step(x[:, 0], model.default_state(2))
    assert y.dtype == torch.bfloat16 and y_t is None and state.position == 1
    assert_close(y.float(), y32, torch.bfloat16, "bf16 autocast forward")
    y.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_hiss_validates_arguments():
    with pytest.raises(ValueError, match="chunk_size"):
        HiSS(3, 2, 0, d_low=8, d_high=8)
    with pytest.raises(ValueError, match="unknown layer name"):
        HiSS(3, 2, 4, low_level="lstm", d_low=8, d_high=8)
    with pytest.raises(ValueError, match="d_low"):
        HiSS(3, 2, 4, low_level="s5", d_high=8)
    with pytest.raises(ValueError, match="d_model=8"):
        HiSS(3, 2, 4, low_level=S5(8, d_state=8), d_low=6, d_high=8)
    with pytest.raises(ValueError, match="kwargs"):
        HiSS(3, 2, 4, low_level=S5(8, d_state=8), high_level="s5", d_high=8, low_level_kwargs=dict(d_state=4))
    with pytest.raises(ValueError, match="norm"):
        HiSS(3, 2, 4, d_low=8, d_high=8, norm="batchnorm")
    model = make_hiss("s5", "s4d")
    with pytest.raises(ValueError, match="d_in"):
        model(torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match="L >= 1"):
        model(torch.randn(2, 0, 3))
    with pytest.raises(ValueError, match="d_in"):
        model.step(torch.randn(2, 4), model.default_state(2))
