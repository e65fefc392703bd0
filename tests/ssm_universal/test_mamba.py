"""ssm_universal.layers.Mamba against mamba_ssm's Mamba (mamba_simple.py), and step == forward. What Mamba shares
with the other Mamba-style blocks (shapes/grads, bf16 autocast) is in test_layer_family_mamba.py.

References (each test runs against every one available, so a clean clone still checks something real):
* "inline": MambaSimpleRef below, a transcription of mamba_ssm 2.3.2 mamba_ssm/modules/mamba_simple.py
  (github.com/state-spaces/mamba, tag v2.3.2) restricted to the path it takes without causal_conv1d and
  Triton (nn.Conv1d, the torch decoding step), with its selective_scan_ref (ops/selective_scan_interface.py)
  for the scan: same parameter creation order, so the same seed gives the same weights.
* "mamba_ssm": the published file itself, when `../shared/tools/peer_packages.sh peers` has unpacked it into
  <repo>/peers/mamba/mamba_ssm; its CUDA and Triton imports are shimmed away and selective_scan_fn is bound
  to its own selective_scan_ref, so it runs the same pure-PyTorch path on the CPU.
"""
import importlib
import math
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ssm_kernels
from ssm_kernels.testing import assert_close
from ssm_universal.layers import Mamba
from tests.ssm_universal.layer_checks import (check_in_place_steps_equal_forward,
                                              check_prefill_and_decode_match_reference,
                                              check_reference_checkpoint_loads, check_same_initialisation)
from tests.helpers import OutputSizes, backend_device, check_parity
from tests.ssm_universal.peer_sources import PEER_MAMBA, peer_mamba_ssm

FP32 = torch.float32


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """mamba_ssm's selective_scan_ref for real A and B, C (B, N, L): sequential, fp32."""
    dtype_in = u.dtype
    u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    x = A.new_zeros((u.shape[0], A.shape[0], A.shape[1]))
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    out = torch.stack(ys, dim=2) + u * D[:, None]
    out = (out * F.silu(z)).to(dtype_in)
    return (out, x) if return_last_state else out


class MambaSimpleRef(nn.Module):
    """mamba_simple.Mamba (mamba_ssm 2.3.2), use_fast_path=False, no causal_conv1d, no Triton."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
                 dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False,
                 use_fast_path=True, layer_idx=None, device=None, dtype=None):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.layer_idx = layer_idx
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, bias=conv_bias, kernel_size=d_conv,
                                groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True
        A = torch.arange(1, d_state + 1, dtype=torch.float32)[None].repeat(self.d_inner, 1).contiguous()
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden_states, inference_params=None):
        batch, seqlen, _ = hidden_states.shape
        conv_state = ssm_state = None
        if inference_params is not None:
            cache = inference_params.key_value_memory_dict
            if self.layer_idx not in cache:
                cache[self.layer_idx] = (torch.zeros(batch, self.d_inner, self.d_conv),
                                         torch.zeros(batch, self.d_inner, self.d_state))
            conv_state, ssm_state = cache[self.layer_idx]
            if inference_params.seqlen_offset > 0:
                return self.step(hidden_states, conv_state, ssm_state)[0]
        xz = (self.in_proj.weight @ hidden_states.reshape(-1, self.d_model).t()).reshape(-1, batch, seqlen)
        xz = xz.transpose(0, 1)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias[:, None]
        A = -torch.exp(self.A_log.float())
        x, z = xz.chunk(2, dim=1)
        if conv_state is not None:
            conv_state.copy_(F.pad(x, (self.d_conv - x.shape[-1], 0)))
        x = F.silu(self.conv1d(x)[..., :seqlen])
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * seqlen, self.d_inner))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).reshape(-1, batch, seqlen).transpose(0, 1)
        B = B.reshape(batch, seqlen, -1).transpose(1, 2).contiguous()
        C = C.reshape(batch, seqlen, -1).transpose(1, 2).contiguous()
        y = selective_scan_ref(x, dt, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                               delta_softplus=True, return_last_state=ssm_state is not None)
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        return self.out_proj(y.transpose(1, 2))

    def step(self, hidden_states, conv_state, ssm_state):
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = F.silu(torch.sum(conv_state * self.conv1d.weight[:, 0], dim=-1) + self.conv1d.bias)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight) + self.dt_proj.bias)
        A = -torch.exp(self.A_log.float())
        dA = torch.exp(torch.einsum("bd,dn->bdn", dt, A))
        dB = torch.einsum("bd,bn->bdn", dt, B)
        ssm_state.copy_(ssm_state * dA + x[..., None] * dB)
        y = (torch.einsum("bdn,bn->bd", ssm_state, C) + self.D * x) * F.silu(z)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state


def load_mamba_ssm_mamba():
    """mamba_ssm 2.3.2's Mamba class from <repo>/peers, or None when the peer sources are absent.

    sys.modules is restored afterwards, so other tests that import the real packages are not affected."""
    if not (PEER_MAMBA / "modules" / "mamba_simple.py").is_file():
        return None
    layer_norm = types.ModuleType("mamba_ssm.ops.triton.layer_norm")  # Triton; only _layer_norm_fwd used
    layer_norm._layer_norm_fwd = None
    stubs = {"selective_scan_cuda": types.ModuleType("selective_scan_cuda"),
             "mamba_ssm.ops.triton.layer_norm": layer_norm,
             "causal_conv1d": None, "mamba_ssm.ops.triton.selective_state_update": None}  # None -> ImportError
    with peer_mamba_ssm(stubs, ("selective_scan_cuda", "causal_conv1d")):
        interface = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
        simple = importlib.import_module("mamba_ssm.modules.mamba_simple")
    assert simple.causal_conv1d_fn is None and simple.selective_state_update is None
    simple.selective_scan_fn = interface.selective_scan_ref  # its slow path's scan without the CUDA op
    return simple.Mamba


REFERENCES = {"inline": MambaSimpleRef, "mamba_ssm": load_mamba_ssm_mamba()}
REFERENCES = {name: cls for name, cls in REFERENCES.items() if cls is not None}

CONFIGS = [dict(d_model=16, d_state=8), dict(d_model=24, d_state=4, d_conv=3, expand=1, bias=True)]


def make_pair(reference, seed=0, **config):
    """(reference, ours) built from the same seed."""
    torch.manual_seed(seed)
    ref = reference(**config, use_fast_path=False, layer_idx=0)
    torch.manual_seed(seed)
    return ref, Mamba(**config, layer_idx=0)


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "bias-d_conv3-expand1"])
@pytest.mark.parametrize("ref_name", list(REFERENCES))
def test_parameters_and_init_match_mamba_ssm(ref_name, config):
    ref, ours = make_pair(REFERENCES[ref_name], **config)
    check_same_initialisation(ours, ref)
    assert ours.conv1d.weight.shape == (ours.d_inner, 1, ours.d_conv)
    assert ours.A_log._no_weight_decay and ours.D._no_weight_decay and ours.dt_proj.bias._no_reinit
    dt = F.softplus(ours.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "bias-d_conv3-expand1"])
@pytest.mark.parametrize("ref_name", list(REFERENCES))
def test_checkpoint_loads_and_matches_mamba_ssm(ref_name, config):
    """A reference checkpoint loads with strict=True; outputs, every parameter gradient, and a prefill then
    one-token decoding through inference_params (outputs and cached states) agree in fp32."""
    ref, ours = make_pair(REFERENCES[ref_name], **config)
    with torch.no_grad():  # move away from the init so that every parameter matters
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 13, config["d_model"])
    y_ref = check_reference_checkpoint_loads(ours, ref, x)
    # a prefill shorter than d_conv = 4 (the conv cache is zero-padded), then one token at a time
    check_prefill_and_decode_match_reference(ours, ref, x, 3, y_ref)


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "bias-d_conv3-expand1"])
def test_step_equals_forward(config):
    """Token by token from default_state == the full forward; the state after the steps == the state a
    forward with `state=` leaves; a forward continuing from a stepped state == the rest of the forward."""
    layer = Mamba(**config)
    batch, length, split = 3, 23, 9
    x = torch.randn(batch, length, config["d_model"])
    state = layer.default_state(batch)
    assert state[0].shape == (batch, layer.d_inner, layer.d_conv) and state[0].dtype == FP32
    assert state[1].shape == (batch, layer.d_inner, layer.d_state) and state[1].dtype == FP32
    check_in_place_steps_equal_forward(layer, x, split)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_first_linears_equal_nn_linear(bias, dtype):
    """The layout GEMMs the block runs instead of its nn.Linear modules compute what those modules compute on
    (B, L, K), outputs and every gradient (a non-contiguous y included)."""
    from ssm_universal.layers._channels_first import batched_linear, linear_from_channels_first
    from ssm_universal.layers._split_linear import channels_first_linear
    torch.manual_seed(0)
    weight, b = torch.randn(6, 5).to(dtype), (torch.randn(6).to(dtype) if bias else None)
    x_blk = torch.randn(3, 7, 5).to(dtype)  # (B, L, K)
    y_bkl = torch.randn(3, 5, 14).to(dtype)[..., ::2]  # (B, K, L) with a stride of 2 along L
    inputs = dict(weight=weight, bias=b)
    grads = ["x", "weight"] + (["bias"] if bias else [])
    check_parity(lambda x, weight, bias: channels_first_linear(x, weight, bias),
                 lambda x, weight, bias: F.linear(x, weight, bias).transpose(1, 2), dict(x=x_blk, **inputs),
                 dtype, grads)
    check_parity(lambda x, weight, bias: linear_from_channels_first(x, weight, bias),
                 lambda x, weight, bias: F.linear(x.transpose(1, 2), weight, bias), dict(x=y_bkl, **inputs),
                 dtype, grads)
    check_parity(lambda x, weight: batched_linear(weight, x),
                 lambda x, weight: F.linear(x.transpose(1, 2), weight).transpose(1, 2),
                 dict(x=y_bkl, weight=weight), dtype, ["x", "weight"])


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("partials", [False, True])
def test_out_proj_weight_grad_both_forms(device, dtype, partials):
    """out_proj's weight gradient from y (B, K, L), as per-batch fp32 partials or through y copied into rows,
    equals the fp64 sum over every (b, l) (y with a stride of 2 along L; where bmm cannot write fp32 from bf16,
    the CPU, the partials form falls back to the rows)."""
    from ssm_universal.layers._channels_first import weight_grad
    torch.manual_seed(0)
    dout = torch.randn(3, 9, 6, device=device).to(dtype)  # (B, L, O)
    y = torch.randn(3, 5, 18, device=device).to(dtype)[..., ::2]  # (B, K, L)
    expected = torch.einsum("blo,bkl->ok", dout.double(), y.double())
    assert_close(weight_grad(dout, y, partials=partials).double(), expected, dtype, "dweight")


def test_block_out_proj_reads_the_scan_output_in_place(monkeypatch):
    """With the Triton conv and scan, the block's activations keep in_proj's (d_inner, B, L) order through the
    conv and the scan, so out_proj's weight gradient is one GEMM over y's positions (no partials, no copy)."""
    from ssm_universal.layers import _channels_first
    device = backend_device("triton")
    torch.manual_seed(0)
    block = Mamba(16, d_state=4, device=device)
    seen = []
    real = _channels_first.weight_grad
    monkeypatch.setattr(_channels_first, "weight_grad",
                        lambda dout, y, **kw: seen.append(_channels_first._rows_view(y) is not None) or real(dout, y))
    with ssm_kernels.use_backend({"causal_conv1d": "triton", "selective_scan": "triton"}):
        block(torch.randn(3, 21, 16, device=device)).sum().backward()
    assert seen == [True]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_from_channels_first_on_positions_in_one_axis(bias, dtype):
    """y (B, K, L) in (K, B, L) memory order (the selective scan's output for the block's channels-first
    activations): its (b, l) positions are one matrix axis, read in place by one GEMM forward and for the weight
    gradient; the same values as nn.Linear on (B, L, K)."""
    from ssm_universal.layers._channels_first import _rows_view, linear_from_channels_first
    torch.manual_seed(0)
    y = torch.randn(5, 3, 9).to(dtype).transpose(0, 1)  # (B, K, L) = (3, 5, 9)
    assert _rows_view(y) is not None and _rows_view(y).data_ptr() == y.data_ptr()
    assert _rows_view(y.contiguous()) is None
    weight, b = torch.randn(6, 5).to(dtype), (torch.randn(6).to(dtype) if bias else None)
    check_parity(lambda x, weight, bias: linear_from_channels_first(x, weight, bias),
                 lambda x, weight, bias: F.linear(x.transpose(1, 2), weight, bias), dict(x=y, weight=weight, bias=b),
                 dtype, ["x", "weight"] + (["bias"] if bias else []))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_first_linear_halves_equal_nn_linear(bias, dtype):
    """in_proj's GEMM and split as one step: the halves and every gradient equal nn.Linear's then chunk, whether
    a half's gradient lies in the GEMM output's (C, B, L) order (as the conv and the scan write it), is
    contiguous (B, C, L), or is absent (that half reached no loss)."""
    from ssm_universal.layers._channels_first import channels_first_linear_halves
    torch.manual_seed(0)
    weight, b = torch.randn(8, 5).to(dtype), (torch.randn(8).to(dtype) if bias else None)
    x = torch.randn(3, 7, 5).to(dtype)
    grads = ["x", "weight"] + (["bias"] if bias else [])
    inputs = dict(x=x, weight=weight, bias=b)
    check_parity(lambda x, weight, bias: channels_first_linear_halves(x, weight, bias),
                 lambda x, weight, bias: F.linear(x, weight, bias).transpose(1, 2).chunk(2, dim=1), inputs, dtype,
                 grads)

    def leaves():
        return {k: None if v is None else v.double().requires_grad_() for k, v in inputs.items()}
    ref = leaves()
    ref_x, ref_z = F.linear(ref["x"], ref["weight"], ref["bias"]).transpose(1, 2).chunk(2, dim=1)
    cotangent = torch.randn_like(ref_z)
    (ref_z * cotangent).sum().backward()  # only z reaches the loss
    for layout in ("channel-rows", "contiguous"):
        ours = {k: None if v is None else v.detach().to(dtype).requires_grad_() for k, v in inputs.items()}
        _, z = channels_first_linear_halves(ours["x"], ours["weight"], ours["bias"])
        g = cotangent.to(dtype)
        if layout == "channel-rows":  # (B, C, L) stored as (C, B, L)
            g = g.transpose(0, 1).contiguous().transpose(0, 1)
        z.backward(g)
        for name in grads:
            assert_close(ours[name].grad.double(), ref[name].grad, dtype, f"d{name} ({layout}, x half unused)")


@pytest.mark.parametrize("used", ["both", "gemm", "input"])
def test_batched_linear_and_input_equals_reading_x_twice(used):
    """x_proj's GEMM and the scan's read of the same x as one step: the same values, and x's gradient the sum of
    both uses' (added inside the backward's GEMM), whichever of them reach the loss."""
    from ssm_universal.layers._channels_first import batched_linear, batched_linear_and_input
    torch.manual_seed(0)
    weight = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    x_again, out = batched_linear_and_input(weight, x)
    assert torch.equal(x_again, x) and torch.equal(out, batched_linear(weight, x))
    g_x, g_out = torch.randn_like(x), torch.randn_like(out)
    outputs, cotangents = {"both": ([x_again, out], [g_x, g_out]), "gemm": ([out], [g_out]),
                           "input": ([x_again], [g_x])}[used]
    got = torch.autograd.grad(outputs, [x, weight], cotangents, allow_unused=True)
    ref_out = batched_linear(weight, x)
    ref_outputs = {"both": [x * 1, ref_out], "gemm": [ref_out], "input": [x * 1]}[used]
    expected = torch.autograd.grad(ref_outputs, [x, weight], cotangents, allow_unused=True)
    for name, a, b in zip(("x", "weight"), got, expected):
        if b is None:
            assert a is None or not a.any(), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    assert torch.autograd.gradcheck(lambda x, w: batched_linear_and_input(w, x), (x, weight))


def test_batched_linear_and_input_adds_into_an_owned_gradient_only():
    """The backward adds the GEMM's input gradient in place into the other use's gradient where an op's backward
    made it for this use alone (no copy of it), and never into a cotangent the caller holds."""
    from ssm_universal.layers._channels_first import batched_linear_and_input
    torch.manual_seed(0)
    weight = torch.randn(6, 5, requires_grad=True)
    x = torch.randn(3, 5, 7, requires_grad=True)
    made = []

    class Scale(torch.autograd.Function):  # a consumer whose backward returns a fresh gradient, as the scan's
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, g):
            made.append(g * 2)
            return made[-1]

    x_again, out = batched_linear_and_input(weight, x)
    g_y, g_out = torch.randn(3, 5, 7), torch.randn(3, 6, 7)
    (dx,) = torch.autograd.grad([Scale.apply(x_again), out], [x], [g_y, g_out])
    assert dx.data_ptr() == made[0].data_ptr()
    torch.testing.assert_close(dx, 2 * g_y + weight.detach().t() @ g_out)
    x_again, out = batched_linear_and_input(weight, x)
    g_x = torch.randn(3, 5, 7)
    kept = g_x.clone()
    (dx,) = torch.autograd.grad([x_again, out], [x], [g_x, g_out])
    assert torch.equal(g_x, kept) and dx.data_ptr() != g_x.data_ptr()


def test_mamba_backward_sums_no_conv_output_gradients_apart():
    """The conv output's two gradients (the scan's and x_proj's) are summed inside x_proj's backward GEMM, not
    by a separate (B, d_inner, L) add."""
    device = backend_device("triton")  # a scan reading x once (the torch backend adds D x outside its op)
    torch.manual_seed(0)
    layer = Mamba(d_model=16, d_state=4, device=device)
    with ssm_kernels.use_backend({"selective_scan": "triton"}):
        y = layer(torch.randn(2, 40, 16, device=device, requires_grad=True))
        with OutputSizes() as sizes:
            y.backward(torch.randn_like(y))
    assert 2 * layer.d_inner * 40 not in [numel for name, numel in sizes.calls if name in ("add", "add_")]


def test_split_channels_gradient_in_the_layout_of_its_input():
    """split_channels is chunk(2, dim=1) with the gradient written in the input's memory layout (a missing half's
    gradient zero), so that the in_proj GEMM's backward reads it without a copy."""
    from ssm_universal.layers._channels_first import split_channels
    from ssm_universal.layers._split_linear import channels_first_linear
    torch.manual_seed(0)
    weight = torch.randn(8, 5, dtype=torch.float64)
    x_blk = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    xz = channels_first_linear(x_blk, weight, None)  # (B, 8, L), stored as (8, B, L)
    x, z = split_channels(xz)
    for ours, expected in zip((x, z), xz.chunk(2, dim=1)):
        assert torch.equal(ours, expected)
    dx = torch.randn(3, 4, 7, dtype=torch.float64)
    (dxz,) = torch.autograd.grad(x, xz, dx, retain_graph=True)
    assert dxz.stride() == xz.stride()
    assert torch.equal(dxz, torch.cat([dx, torch.zeros_like(dx)], dim=1))
    leaf = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: split_channels(t * 1.0), (leaf,))


def test_mamba_backward_copies_no_in_proj_sized_gradient():
    """The block's backward hands xz's gradient to in_proj's GEMM as written (chunk's cat would have given a
    (B, 2 d_inner, L) tensor that the GEMM's backward copies into (2 d_inner, B L) rows)."""
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    layer = Mamba(d_model=16, d_state=4)  # d_inner 32
    x = torch.randn(2, 40, 16, requires_grad=True)
    y = layer(x)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        y.backward(torch.randn_like(y))
    xz_numel = 2 * 2 * layer.d_inner * 40
    copies = [e.input_shapes for e in prof.events() if e.name in ("aten::clone", "aten::contiguous")
              and e.input_shapes and e.input_shapes[0] and math.prod(e.input_shapes[0]) == xz_numel]
    assert copies == []


def test_channels_first_linear_under_autocast():
    """fp32 weights and activations under bf16 autocast: the output in bf16 as nn.Linear's, gradients in the
    parameters' and inputs' own dtypes."""
    from ssm_universal.layers._channels_first import linear_from_channels_first
    torch.manual_seed(0)
    weight, bias = torch.randn(6, 5), torch.randn(6)
    y = torch.randn(2, 5, 7)
    dout = torch.randn(2, 7, 6)
    results = []
    for fn in (linear_from_channels_first, lambda y, w, b: F.linear(y.transpose(1, 2), w, b)):
        leaves = [t.clone().requires_grad_() for t in (y, weight, bias)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(*leaves)
        out.backward(dout.to(out.dtype))
        results.append((out, *(t.grad for t in leaves)))
    for ours, expected in zip(*results):
        assert ours.dtype == expected.dtype
        assert_close(ours, expected, torch.bfloat16)
    assert results[0][0].dtype == torch.bfloat16 and results[0][1].dtype == torch.float32


def test_projection_modules_that_are_not_plain_linears_are_called():
    """A hook on a projection, or a projection replaced by another module (a LoRA-style wrapper), takes part
    in the forward: the layout GEMMs only stand in for plain nn.Linear modules."""
    torch.manual_seed(0)
    layer = Mamba(d_model=16, d_state=4)
    x = torch.randn(2, 9, 16)
    plain = layer(x)
    handle = layer.out_proj.register_forward_hook(lambda module, args, out: 2 * out)
    torch.testing.assert_close(layer(x), 2 * plain)
    handle.remove()

    class Scaled(nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.linear = linear

        def forward(self, t):
            return self.linear(t) * 0.5

    for name in ("in_proj", "x_proj", "out_proj"):
        torch.manual_seed(0)
        wrapped = Mamba(d_model=16, d_state=4)
        setattr(wrapped, name, Scaled(getattr(wrapped, name)))
        torch.manual_seed(0)
        expected = Mamba(d_model=16, d_state=4)
        with torch.no_grad():
            getattr(expected, name).weight.mul_(0.5)
        torch.testing.assert_close(wrapped(x), expected(x))
