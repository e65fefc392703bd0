"""ssm_kernels.compat: mamba_ssm 2.3.2's and causal-conv1d 1.7's function names on our ops.

Always run: every function against a composition of our sequential references (ssm_kernels.<op>.reference) and
torch.nn.functional, written here from the originals' documented math (outputs and every gradient, fp32 on the
CPU), causal_conv1d_update against a token-by-token reference, argument validation, signatures and re-exports.

With SSM_PEERS_DIR pointing at the peer packages (e.g. ../shared/peers, see benchmarks/peers.py): the same
functions against mamba_ssm's and causal-conv1d's own pure-PyTorch references (mamba_inner_ref,
mamba_split_conv1d_scan_ref, rms_norm_ref, causal_conv1d_ref, causal_conv1d_update_ref) on the CPU, and the
signatures against the originals'. Their CUDA extensions are stubbed and their CUDA / Triton calls bound to
those references, so nothing but the references runs.
"""
import doctest
import importlib
import inspect
import math
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import ssm_kernels
from ssm_kernels import compat
from ssm_kernels.causal_conv1d.reference import causal_conv1d_ref
from ssm_kernels.gated_rmsnorm.reference import gated_rmsnorm_ref
from ssm_kernels.selective_scan.reference import selective_scan_ref
from ssm_kernels.ssd_chunk_scan.reference import ssd_chunk_scan_ref
from ssm_kernels.testing import assert_close
from tests.helpers import backend_device, check_parity

FP32 = torch.float32
INF = float("inf")


def floating(inputs):
    """The names of the floating (differentiable) tensors among inputs."""
    return [n for n, t in inputs.items() if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]


# --- mamba_inner_fn ----------------------------------------------------------------------------------------
def inner_reference(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                    out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                    delta_softplus=True, b_rms_weight=None, c_rms_weight=None, dt_rms_weight=None,
                    b_c_dt_rms_eps=1e-6):
    """mamba_inner_fn's math: conv + silu, x_proj, dt_proj (+ RMS norms), selective scan, out_proj. A complex A
    reads B / C from x_proj as (re, im) column pairs, handed to the reference as complex (B, N, L)."""
    dim = xz.shape[1] // 2
    x, z = xz[:, :dim], xz[:, dim:]
    x = causal_conv1d_ref(x, conv1d_weight[:, 0, :], conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # (B, L, E)
    rank = delta_proj_weight.shape[1]
    d_state = A.shape[1] * (2 if A.is_complex() else 1)
    delta = F.linear(x_dbl[..., :rank], delta_proj_weight)
    if dt_rms_weight is not None:
        delta = gated_rmsnorm_ref(delta, dt_rms_weight, eps=b_c_dt_rms_eps)

    def projected(cols, bias, rms_weight):
        if bias is not None:
            cols = cols + bias
        if rms_weight is not None:
            cols = gated_rmsnorm_ref(cols, rms_weight, eps=b_c_dt_rms_eps)
        if A.is_complex():
            cols = torch.view_as_complex(cols.unflatten(-1, (-1, 2)).contiguous())  # (B, L, N)
        return cols.transpose(1, 2)

    if B is None:
        B = projected(x_dbl[..., rank:rank + d_state], B_proj_bias, b_rms_weight)
    elif b_rms_weight is not None:
        B = gated_rmsnorm_ref(B.transpose(-1, -2), b_rms_weight, eps=b_c_dt_rms_eps).transpose(-1, -2)
    if C is None:
        C = projected(x_dbl[..., -d_state:], C_proj_bias, c_rms_weight)
    y, _ = selective_scan_ref(x, delta.transpose(1, 2), A, B, C, D, z, delta_bias, delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def inner_inputs(batch=2, dim=6, length=7, nstate=4, rank=2, width=4, out_dim=5, *, complex_A=False,
                 projected=("B", "C"), proj_bias=False, rms=False, biases=True):
    """mamba_inner_fn's tensor arguments (fp32) for the given sizes; B / C not in `projected` are passed fixed
    (D, N) (complex with complex A)."""
    d_state = nstate * (2 if complex_A else 1)
    rows = rank + d_state * len(projected)
    inputs = {
        "xz": torch.randn(batch, 2 * dim, length),
        "conv1d_weight": torch.randn(dim, 1, width) / math.sqrt(width),
        "conv1d_bias": torch.randn(dim) if biases else None,
        "x_proj_weight": torch.randn(rows, dim) / math.sqrt(dim),
        "delta_proj_weight": torch.randn(dim, rank) / math.sqrt(rank),
        "out_proj_weight": torch.randn(out_dim, dim) / math.sqrt(dim),
        "out_proj_bias": torch.randn(out_dim) if biases else None,
        "A": (torch.complex(-0.5 - torch.rand(dim, nstate), torch.randn(dim, nstate)) if complex_A
              else -0.5 - torch.rand(dim, nstate)),
        "D": torch.randn(dim) if biases else None,
        "delta_bias": torch.rand(dim) - 2.0,
    }
    for name in ("B", "C"):
        if name not in projected:
            inputs[name] = (torch.randn(dim, nstate, dtype=torch.complex64) if complex_A
                            else torch.randn(dim, nstate))
        elif proj_bias:
            inputs[f"{name}_proj_bias"] = 0.1 * torch.randn(d_state)
    if rms:
        inputs.update(b_rms_weight=1 + 0.1 * torch.randn(nstate), c_rms_weight=1 + 0.1 * torch.randn(nstate),
                      dt_rms_weight=1 + 0.1 * torch.randn(dim))
    return inputs


INNER_CASES = {
    "real": dict(),
    "real-proj-bias": dict(proj_bias=True, length=9),
    "complex": dict(complex_A=True, length=6),
    "complex-proj-bias-fixed-B": dict(complex_A=True, projected=("C",), proj_bias=True, length=5),
    "fixed-B": dict(projected=("C",), biases=False),
    "fixed-C": dict(projected=("B",)),
    "rms-weights": dict(rms=True, length=8),
    "length-1": dict(length=1, batch=3),
}


@pytest.mark.parametrize("case", list(INNER_CASES))
def test_mamba_inner_fn_matches_composition(case):
    inputs = inner_inputs(**INNER_CASES[case])
    check_parity(compat.mamba_inner_fn, inner_reference, inputs, FP32, floating(inputs))


def test_mamba_inner_fn_options():
    """delta_softplus=False, checkpoint_lvl=0 (same result), given variable B / C (complex and interleaved real),
    and the rms weight on a given variable B."""
    inputs = inner_inputs(projected=(), length=5)
    batch, length = inputs["xz"].shape[0], inputs["xz"].shape[-1]
    inputs["B"], inputs["C"] = torch.randn(batch, 4, length), torch.randn(batch, 2, 4, length)
    inputs["delta_bias"] = torch.rand(6) + 0.5  # positive steps without softplus
    inputs["b_rms_weight"] = 1 + 0.1 * torch.randn(4)
    check_parity(lambda **kw: compat.mamba_inner_fn(**kw, delta_softplus=False, checkpoint_lvl=0),
                 lambda **kw: inner_reference(**kw, delta_softplus=False), inputs, FP32, floating(inputs))
    inputs = inner_inputs(complex_A=True, projected=(), length=5)
    interleaved = torch.randn(batch, 4, 2 * length)
    inputs["B"] = torch.randn(batch, 4, length, dtype=torch.complex64)
    inputs["C"] = interleaved
    expected_C = torch.view_as_complex(interleaved.unflatten(-1, (length, 2)).contiguous())
    check_parity(compat.mamba_inner_fn, lambda **kw: inner_reference(**{**kw, "C": expected_C}),
                 inputs, FP32, [n for n in floating(inputs) if n != "C"])


# --- mamba_split_conv1d_scan_combined ----------------------------------------------------------------------
def split_reference(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size, initial_states=None,
                    seq_idx=None, dt_limit=(0.0, INF), return_final_states=False, activation="silu",
                    rmsnorm_weight=None, rmsnorm_eps=1e-6, outproj_weight=None, outproj_bias=None, headdim=None,
                    ngroups=1, norm_before_gate=True):
    """mamba_split_conv1d_scan_combined's math: split, conv (padding tokens zero), SSD scan, grouped gated
    RMSNorm, swiglu of the non-SSM part, out projection."""
    nheads = D.shape[0]
    headdim = D.shape[1] if D.dim() == 2 else headdim
    dim, conv_dim = nheads * headdim, conv1d_weight.shape[0]
    dstate = (conv_dim - dim) // (2 * ngroups)
    d_nonssm = (zxbcdt.shape[-1] - dim - conv_dim - nheads) // 2
    zx0, z, xBC, dt = torch.split(zxbcdt, [2 * d_nonssm, dim, conv_dim, nheads], dim=-1)
    xBC = causal_conv1d_ref(xBC.transpose(1, 2), conv1d_weight, conv1d_bias, activation, seq_idx)
    if seq_idx is not None:
        xBC = xBC * (seq_idx >= 0).unsqueeze(1)
    x, B, C = torch.split(xBC.transpose(1, 2), [dim, ngroups * dstate, ngroups * dstate], dim=-1)
    gate = None if rmsnorm_weight is not None else z.unflatten(-1, (nheads, headdim))
    y, final_states, _ = ssd_chunk_scan_ref(
        x.unflatten(-1, (nheads, headdim)), dt, A, B.unflatten(-1, (ngroups, dstate)),
        C.unflatten(-1, (ngroups, dstate)), D=D, z=gate, dt_bias=dt_bias, dt_softplus=True, dt_limit=dt_limit,
        initial_states=initial_states, seq_idx=seq_idx)
    out = y.flatten(-2)
    if rmsnorm_weight is not None:
        out = gated_rmsnorm_ref(out, rmsnorm_weight, z, rmsnorm_eps, dim // ngroups, norm_before_gate)
    if d_nonssm:
        gate0, value0 = zx0.chunk(2, dim=-1)
        out = torch.cat([F.silu(gate0) * value0, out], dim=-1)
    if outproj_weight is not None:
        out = F.linear(out, outproj_weight, outproj_bias)
    return (out, final_states) if return_final_states else out


def split_inputs(batch=2, length=13, nheads=4, headdim=3, ngroups=1, dstate=4, width=4, *, d_nonssm=0,
                 D_per_channel=False, rms=False, outproj=None, initial_states=False, seq_idx=None):
    """(tensor inputs, keyword arguments) of mamba_split_conv1d_scan_combined."""
    dim = nheads * headdim
    conv_dim = dim + 2 * ngroups * dstate
    inputs = {
        "zxbcdt": torch.randn(batch, length, 2 * d_nonssm + dim + conv_dim + nheads),
        "conv1d_weight": torch.randn(conv_dim, width) / math.sqrt(width),
        "conv1d_bias": torch.randn(conv_dim),
        "dt_bias": torch.rand(nheads) - 3.0,
        "A": -0.5 - torch.rand(nheads),
        "D": torch.randn(nheads, headdim) if D_per_channel else torch.randn(nheads),
    }
    if rms:
        inputs["rmsnorm_weight"] = 1 + 0.1 * torch.randn(dim)
    if outproj is not None:
        inputs["outproj_weight"] = torch.randn(outproj, d_nonssm + dim) / math.sqrt(dim)
        inputs["outproj_bias"] = torch.randn(outproj)
    if initial_states:
        inputs["initial_states"] = torch.randn(batch, nheads, headdim, dstate)
    if seq_idx is not None:
        inputs["seq_idx"] = torch.tensor(seq_idx, dtype=torch.int32).expand(batch, length)
    kwargs = {"ngroups": ngroups} if D_per_channel else {"ngroups": ngroups, "headdim": headdim}
    return inputs, kwargs


SPLIT_CASES = {
    "basic": (dict(), dict(chunk_size=8)),
    "groups-rms-outproj-nonssm": (dict(ngroups=2, D_per_channel=True, rms=True, outproj=5, d_nonssm=3),
                                  dict(chunk_size=4, norm_before_gate=False, dt_limit=(0.01, 0.3),
                                       activation="swish")),
    "states-seq_idx-padding": (dict(length=11, initial_states=True, rms=True, seq_idx=[-1, -1] + [0] * 5 + [1] * 4),
                               dict(chunk_size=4, return_final_states=True, rmsnorm_eps=1e-5)),
    "groups-rms-outproj": (dict(ngroups=2, rms=True, outproj=5), dict(chunk_size=4, norm_before_gate=False)),
    "no-activation-groups": (dict(length=7, ngroups=4, headdim=2, width=3), dict(chunk_size=256, activation=None)),
    "length-1": (dict(length=1, initial_states=True, outproj=3), dict(chunk_size=8, return_final_states=True)),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_mamba_split_conv1d_scan_combined_matches_composition(case):
    sizes, kwargs = SPLIT_CASES[case]
    inputs, extra = split_inputs(**sizes)
    check_parity(compat.mamba_split_conv1d_scan_combined, split_reference, inputs, FP32, floating(inputs),
                 **kwargs, **extra)


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_mamba_split_conv1d_scan_combined_recomputing_equals_keeping(monkeypatch, case):
    """As mamba_ssm's on a GPU, the function recomputes the conv output, the SSD's boundary states and out_proj's
    input in its backward (here forced on the CPU, with the Triton SSD): outputs and gradients bitwise the same."""
    sizes, kwargs = SPLIT_CASES[case]
    device = backend_device("triton")
    torch.manual_seed(0)
    inputs, extra = split_inputs(**sizes)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    runs = []
    for recompute in (False, True):
        monkeypatch.setattr(compat, "_recomputes_on", lambda device, on=recompute: on)
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v.is_floating_point()}
        leaves.update({k: v for k, v in inputs.items() if not v.is_floating_point()})
        with ssm_kernels.use_backend({"ssd_chunk_scan": "triton"}), ssm_kernels._dispatch.record_backends() as used:
            result = compat.mamba_split_conv1d_scan_combined(**leaves, **kwargs, **extra)
            outs = result if isinstance(result, tuple) else (result,)
            cotangents = [torch.linspace(-1, 1, o.numel(), device=device).view_as(o) for o in outs]
            names = [k for k, v in leaves.items() if v.requires_grad]
            runs.append([o.detach() for o in outs] + list(torch.autograd.grad(outs, [leaves[k] for k in names],
                                                                              cotangents)))
        assert sum(used["causal_conv1d"].values()) == (2 if recompute else 1)  # the conv ran again
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- rmsnorm_fn --------------------------------------------------------------------------------------------
def rmsnorm_reference(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    """(rmsnorm(x) w + b) silu(z), or rmsnorm(x silu(z)) w + b."""
    if z is not None and not norm_before_gate:
        y = gated_rmsnorm_ref(x, weight, z, eps, group_size, norm_before_gate=False)
    else:
        y = gated_rmsnorm_ref(x, weight, None, eps, group_size)
    if bias is not None:
        y = y + bias
    return y * F.silu(z) if z is not None and norm_before_gate else y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,group_size,norm_before_gate,gate,bias", [
    ((2, 7, 24), None, True, True, True), ((5, 24), 6, False, True, True), ((3, 16), 4, True, False, True),
    ((9, 12), None, False, True, False), ((1, 8), 8, True, True, True),
])
def test_rmsnorm_fn_matches_composition(dtype, shape, group_size, norm_before_gate, gate, bias):
    dim = shape[-1]
    inputs = {"x": torch.randn(shape).to(dtype), "weight": 1 + 0.1 * torch.randn(dim),
              "bias": torch.randn(dim) if bias else None, "z": torch.randn(shape).to(dtype) if gate else None}
    check_parity(compat.rmsnorm_fn, rmsnorm_reference, inputs, dtype, floating(inputs), eps=1e-5,
                 group_size=group_size, norm_before_gate=norm_before_gate)


# --- causal_conv1d_fn --------------------------------------------------------------------------------------
def conv_reference(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                   activation=None):
    """causal_conv1d_fn's math: the conv with padding tokens (seq_idx < 0) zero; final states = last W - 1 inputs."""
    y = causal_conv1d_ref(x, weight, bias, activation, seq_idx, initial_states)
    if seq_idx is not None:
        y = y * (seq_idx >= 0).unsqueeze(1)
    if not return_final_states:
        return y
    prefix = initial_states if initial_states is not None else x.new_zeros(*x.shape[:2], weight.shape[1] - 1)
    return y, torch.cat([prefix, x], dim=-1)[..., x.shape[-1]:]


def _conv_fn_inputs(length, width, options, index_dtype):
    """causal_conv1d_fn's inputs (B 2, D 5) for a case's options; returns (inputs, the remaining keyword options)."""
    batch, dim = 2, 5
    options = dict(options)
    inputs = {"x": torch.randn(batch, dim, length), "weight": torch.randn(dim, width),
              "bias": torch.randn(dim) if options.pop("bias", False) else None}
    if options.pop("initial_states", False):
        inputs["initial_states"] = torch.randn(batch, dim, width - 1)
    if "seq_idx" in options:
        inputs["seq_idx"] = torch.tensor(options.pop("seq_idx"), dtype=index_dtype).expand(batch, length)
    return inputs, options


@pytest.mark.parametrize("length,width,options", [
    (1, 4, dict(bias=True, activation="silu", return_final_states=True)),
    (7, 2, dict(initial_states=True, return_final_states=True)),
    (63, 3, dict(bias=True, activation="swish")),
    (9, 4, dict(seq_idx=[-1, 0, 0, 0, 1, 1, 2, 2, 2], initial_states=True, activation="silu", bias=True)),
    (5, 1, dict(return_final_states=True)),
])
def test_causal_conv1d_fn_matches_composition(length, width, options):
    inputs, options = _conv_fn_inputs(length, width, options, torch.int64)
    check_parity(compat.causal_conv1d_fn, conv_reference, inputs, FP32, floating(inputs), **options)


def test_causal_conv1d_fn_final_states_out_and_layout():
    """final_states_out receives the final states and is what is returned; a channel-last x works too."""
    x = torch.randn(2, 16, 6).transpose(1, 2)  # (B, D, L) = (2, 6, 16) with stride 1 over channels
    weight, initial = torch.randn(6, 4), torch.randn(2, 6, 3)
    out = torch.full((2, 6, 3), float("nan"))
    y, final = compat.causal_conv1d_fn(x, weight, initial_states=initial, return_final_states=True,
                                       final_states_out=out, activation="silu")
    assert final is out
    y_ref, final_ref = conv_reference(x, weight, initial_states=initial, return_final_states=True, activation="silu")
    assert_close(y, y_ref, FP32, "y")
    assert torch.equal(out, final_ref)


# --- causal_conv1d_update ----------------------------------------------------------------------------------
def update_reference(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                     conv_state_indices=None):
    """Token by token, batch entry by batch entry, in fp64: (y, the new conv_state). Without cache_seqlens the
    state shifts left by one per token; with it, the window is the W - 1 entries before the write position
    cache_seqlens + t (mod S), and the token is written there. A negative conv_state_indices entry is padding."""
    state = conv_state.clone()
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    batch, dim, steps = x3.shape
    width, state_len = weight.shape[1], state.shape[-1]
    y = torch.zeros(batch, dim, steps, dtype=torch.float64)
    for b in range(batch):
        row = b if conv_state_indices is None else int(conv_state_indices[b])
        if row < 0:
            continue
        for t in range(steps):
            token = x3[b, :, t]
            if cache_seqlens is None:
                window = [state[row, :, state_len - (width - 1) + k].clone() for k in range(width - 1)]
                if state_len:
                    state[row] = torch.cat([state[row, :, 1:], token[:, None]], dim=-1)
            else:
                pos = int(cache_seqlens[b]) + t
                window = [state[row, :, (pos - (width - 1) + k) % state_len].clone() for k in range(width - 1)]
                state[row, :, pos % state_len] = token
            acc = sum(weight[:, k].double() * v.double() for k, v in enumerate(window + [token]))
            acc = acc + (0 if bias is None else bias.double())
            y[b, :, t] = F.silu(acc) if activation in ("silu", "swish") else acc
    y = y.to(x.dtype)
    return (y.squeeze(-1) if x.dim() == 2 else y), state


UPDATE_CASES = {
    "shift-one-token": dict(steps=None, state_len=3, width=4),
    "shift-tokens": dict(steps=3, state_len=5, width=4, bias=True, activation="silu"),
    "circular-one-token": dict(steps=None, state_len=6, width=4, cache_seqlens=[0, 5, 13]),
    "circular-tokens": dict(steps=4, state_len=5, width=4, cache_seqlens=[2, 9, 0], activation="swish"),
    "circular-more-tokens-than-state": dict(steps=7, state_len=5, width=3, cache_seqlens=[3, 0, 11], bias=True),
    "circular-width-1": dict(steps=2, state_len=2, width=1, cache_seqlens=[1, 0, 4]),
    "rows": dict(steps=None, state_len=3, width=4, rows=5, indices=[4, -1, 0]),
    "rows-circular": dict(steps=2, state_len=6, width=3, rows=4, indices=[1, 3, -1], cache_seqlens=[4, 7, 2],
                          activation="silu"),
    "rows-all-padding": dict(steps=3, state_len=4, width=4, rows=2, indices=[-1, -1, -1]),
    "rows-strided-state": dict(steps=2, state_len=5, width=4, rows=4, indices=[2, 0, 3], strided=True),
}


@pytest.mark.parametrize("case", list(UPDATE_CASES))
def test_causal_conv1d_update_matches_step_by_step(case):
    spec = UPDATE_CASES[case]
    batch, dim, width, state_len = 3, 4, spec["width"], spec["state_len"]
    rows = spec.get("rows", batch)
    x = torch.randn(batch, dim) if spec["steps"] is None else torch.randn(batch, dim, spec["steps"])
    if spec.get("strided"):
        conv_state = torch.randn(rows, state_len, dim).transpose(1, 2)
    else:
        conv_state = torch.randn(rows, dim, state_len)
    weight = torch.randn(dim, width)
    bias = torch.randn(dim) if spec.get("bias") else None
    index = lambda key: None if key not in spec else torch.tensor(spec[key], dtype=torch.int32)  # noqa: E731
    kwargs = dict(bias=bias, activation=spec.get("activation"), cache_seqlens=index("cache_seqlens"),
                  conv_state_indices=index("indices"))
    y_ref, state_ref = update_reference(x, conv_state, weight, **kwargs)
    y = compat.causal_conv1d_update(x, conv_state, weight, **kwargs)
    assert y.shape == x.shape and y.dtype == x.dtype
    if spec.get("indices") and all(i < 0 for i in spec["indices"]):
        assert torch.equal(y, torch.zeros_like(y))
    else:
        assert_close(y, y_ref, FP32, "y")
    assert torch.equal(conv_state, state_ref), "conv_state differs from the step-by-step reference"


def test_causal_conv1d_update_steps_continue_the_conv():
    """Prefill's final states, then decoding with a circular buffer and cache rows, reproduce causal_conv1d_fn
    over the whole sequence."""
    batch, dim, width, length, state_len = 2, 6, 4, 12, 5
    x, weight, bias = torch.randn(batch, dim, length), torch.randn(dim, width), torch.randn(dim)
    full = compat.causal_conv1d_fn(x, weight, bias, activation="silu")
    prefill = 4
    _, final = compat.causal_conv1d_fn(x[..., :prefill], weight, bias, activation="silu", return_final_states=True)
    cache = torch.randn(3, dim, state_len)  # rows 2 and 0 hold the two sequences
    rows = torch.tensor([2, 0], dtype=torch.int32)
    seqlens = torch.full((batch,), prefill, dtype=torch.int32)
    positions = torch.remainder(torch.arange(prefill - (width - 1), prefill), state_len)
    cache[rows.long()[:, None], :, positions] = final.transpose(1, 2)
    for t in range(prefill, length):
        y = compat.causal_conv1d_update(x[..., t], cache, weight, bias, "silu", seqlens, rows)
        assert_close(y, full[..., t], FP32, f"token {t}")
        seqlens += 1


# --- validation --------------------------------------------------------------------------------------------
def test_mamba_inner_fn_validation():
    good = inner_inputs()
    call = lambda **changes: compat.mamba_inner_fn(**{**good, **changes})  # noqa: E731
    with pytest.raises(ValueError, match="xz"):
        call(xz=torch.randn(2, 11, 7))
    with pytest.raises(ValueError, match="conv1d_weight"):
        call(conv1d_weight=torch.randn(6, 4))
    with pytest.raises(ValueError, match="x_proj_weight"):
        call(x_proj_weight=torch.randn(2 + 4, 6))
    with pytest.raises(ValueError, match="checkpoint_lvl"):
        call(checkpoint_lvl=2)
    with pytest.raises(TypeError, match="delta_softplus"):
        call(delta_softplus=1)
    with pytest.raises(ValueError, match="B_proj_bias"):
        call(B=torch.randn(6, 4), B_proj_bias=torch.randn(4))
    with pytest.raises(ValueError, match="C_proj_bias"):
        call(C_proj_bias=torch.randn(5))
    with pytest.raises(TypeError, match="B must have dtype"):
        call(B=torch.randn(6, 4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="A must have dtype"):
        call(A=-torch.rand(6, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="b_rms_weight"):
        compat.mamba_inner_fn(**{**inner_inputs(complex_A=True), "b_rms_weight": torch.ones(4)})
    with pytest.raises(ValueError, match="c_rms_weight"):
        call(C=torch.randn(6, 4), c_rms_weight=torch.ones(4))
    with pytest.raises(ValueError, match="b_c_dt_rms_eps"):
        call(dt_rms_weight=torch.ones(6), b_c_dt_rms_eps=0.0)
    with pytest.raises(TypeError, match="out_proj_weight"):
        call(out_proj_weight=good["out_proj_weight"].double())


def test_mamba_split_conv1d_scan_combined_validation():
    good, kwargs = split_inputs()
    call = lambda **changes: compat.mamba_split_conv1d_scan_combined(  # noqa: E731
        **{**good, "chunk_size": 8, **kwargs, **changes})
    with pytest.raises(ValueError, match="headdim"):
        call(headdim=None)
    with pytest.raises(ValueError, match="ngroups"):
        call(ngroups=3)
    with pytest.raises(ValueError, match="zxbcdt"):
        call(zxbcdt=torch.randn(2, 13, good["zxbcdt"].shape[-1] + 1))
    with pytest.raises(ValueError, match="conv1d_weight"):
        call(conv1d_weight=torch.randn(12 + 7, 4))
    with pytest.raises(TypeError, match="dt_bias"):
        call(dt_bias=None)
    with pytest.raises(ValueError, match="activation"):
        call(activation="relu")
    with pytest.raises(ValueError, match="outproj_bias"):
        call(outproj_bias=torch.randn(3))
    with pytest.raises(ValueError, match="chunk_size"):
        call(chunk_size=0)
    with pytest.raises(ValueError, match="initial_states"):
        call(initial_states=torch.randn(2, 4, 3, 5))
    with pytest.raises(ValueError, match="dt_limit"):
        call(dt_limit=(0.5, 0.1))
    with pytest.raises(ValueError, match="rmsnorm_weight"):
        call(rmsnorm_weight=torch.ones(11))


def test_rmsnorm_fn_validation():
    x, weight, bias = torch.randn(3, 8), torch.ones(8), torch.zeros(8)
    with pytest.raises(ValueError, match="bias"):
        compat.rmsnorm_fn(x, weight, torch.zeros(7))
    with pytest.raises(ValueError, match="z must"):
        compat.rmsnorm_fn(x, weight, bias, z=torch.randn(3, 4))
    with pytest.raises(ValueError, match="group_size"):
        compat.rmsnorm_fn(x, weight, bias, group_size=3)
    with pytest.raises(ValueError, match="eps"):
        compat.rmsnorm_fn(x, weight, bias, eps=0.0)
    with pytest.raises(ValueError, match="weight"):
        compat.rmsnorm_fn(x, torch.ones(4), bias)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        compat.rmsnorm_fn(x.tolist(), weight, bias)


def test_causal_conv1d_fn_validation():
    x, weight = torch.randn(2, 4, 9), torch.randn(4, 3)
    seq_idx = torch.zeros(2, 9, dtype=torch.int32)
    with pytest.raises(ValueError, match="return_final_states"):
        compat.causal_conv1d_fn(x, weight, seq_idx=seq_idx, return_final_states=True)
    with pytest.raises(ValueError, match="activation"):
        compat.causal_conv1d_fn(x, weight, activation="gelu")
    with pytest.raises(ValueError, match="weight"):
        compat.causal_conv1d_fn(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match="final_states_out"):
        compat.causal_conv1d_fn(x, weight, return_final_states=True, final_states_out=torch.empty(2, 4, 3))
    with pytest.raises(TypeError, match="initial_states"):
        compat.causal_conv1d_fn(x, weight, initial_states=torch.randn(2, 4, 2).double())
    with pytest.raises(TypeError, match="seq_idx"):
        compat.causal_conv1d_fn(x, weight, seq_idx=seq_idx.float())


def test_causal_conv1d_update_validation():
    x, state, weight = torch.randn(3, 4), torch.zeros(5, 4, 3), torch.randn(4, 4)
    rows = torch.tensor([0, 1, 2], dtype=torch.int32)
    update = compat.causal_conv1d_update
    with pytest.raises(ValueError, match="conv_state_indices must be <"):
        update(x, state, weight, conv_state_indices=torch.tensor([0, 5, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="conv_state_indices must not repeat"):
        update(x, state, weight, conv_state_indices=torch.tensor([1, -1, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="conv_state_indices"):
        update(x, state, weight, conv_state_indices=rows[:2])
    with pytest.raises(ValueError, match="conv_state"):
        update(x, state, weight)  # 5 cache rows for a batch of 3 needs conv_state_indices
    with pytest.raises(ValueError, match="cache_seqlens"):
        update(x, state, weight, cache_seqlens=torch.zeros(2, dtype=torch.int32), conv_state_indices=rows)
    with pytest.raises(TypeError, match="cache_seqlens"):
        update(x, state, weight, cache_seqlens=torch.zeros(3), conv_state_indices=rows)
    with pytest.raises(ValueError, match="state length S"):
        update(x, state[:, :, :2], weight, conv_state_indices=rows)
    with pytest.raises(ValueError, match="state length S"):
        update(x, torch.zeros(3, 4, 0), torch.randn(4, 1), cache_seqlens=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="conv_state"):
        update(x, state.double(), weight, conv_state_indices=rows)
    with pytest.raises(ValueError, match="activation"):
        update(x, state, weight, activation="relu", conv_state_indices=rows)


# --- names, signatures, docstrings -------------------------------------------------------------------------
# mamba_ssm 2.3.2 / causal-conv1d 1.7's parameter lists (name, default); `...` marks a required parameter
SIGNATURES = {
    "mamba_inner_fn": [
        ("xz", ...), ("conv1d_weight", ...), ("conv1d_bias", ...), ("x_proj_weight", ...),
        ("delta_proj_weight", ...), ("out_proj_weight", ...), ("out_proj_bias", ...), ("A", ...), ("B", None),
        ("C", None), ("D", None), ("delta_bias", None), ("B_proj_bias", None), ("C_proj_bias", None),
        ("delta_softplus", True), ("checkpoint_lvl", 1), ("b_rms_weight", None), ("c_rms_weight", None),
        ("dt_rms_weight", None), ("b_c_dt_rms_eps", 1e-6)],
    "mamba_split_conv1d_scan_combined": [
        ("zxbcdt", ...), ("conv1d_weight", ...), ("conv1d_bias", ...), ("dt_bias", ...), ("A", ...), ("D", ...),
        ("chunk_size", ...), ("initial_states", None), ("seq_idx", None), ("dt_limit", (0.0, INF)),
        ("return_final_states", False), ("activation", "silu"), ("rmsnorm_weight", None), ("rmsnorm_eps", 1e-6),
        ("outproj_weight", None), ("outproj_bias", None), ("headdim", None), ("ngroups", 1),
        ("norm_before_gate", True)],
    "rmsnorm_fn": [("x", ...), ("weight", ...), ("bias", ...), ("z", None), ("eps", 1e-6), ("group_size", None),
                   ("norm_before_gate", True)],
    "causal_conv1d_fn": [("x", ...), ("weight", ...), ("bias", None), ("seq_idx", None), ("initial_states", None),
                         ("return_final_states", False), ("final_states_out", None), ("activation", None)],
    "causal_conv1d_update": [("x", ...), ("conv_state", ...), ("weight", ...), ("bias", None), ("activation", None),
                             ("cache_seqlens", None), ("conv_state_indices", None)],
    "selective_state_update": [("state", ...), ("x", ...), ("dt", ...), ("A", ...), ("B", ...), ("C", ...),
                               ("D", None), ("z", None), ("dt_bias", None), ("dt_softplus", False),
                               ("state_batch_indices", None)],
}


def parameters(fn):
    return [(p.name, ... if p.default is inspect.Parameter.empty else p.default)
            for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_signature_is_the_originals(name):
    ours = parameters(getattr(compat, name))
    if ours[-1:] == [("backend", None)]:  # ours may add a trailing backend=None
        ours = ours[:-1]
    assert ours == SIGNATURES[name]


def test_selective_state_update_is_the_op():
    """compat's selective_state_update (mamba_ssm's parameters) computes what the op does, state rows included."""
    torch.manual_seed(0)
    state = torch.randn(5, 2, 3, 4)
    x, dt, z = torch.randn(3, 2, 3), torch.randn(3, 2, 3), torch.randn(3, 2, 3)
    A, dt_bias, D = -torch.rand(2, 3, 4), torch.randn(2, 3), torch.randn(2, 3)
    B, C = torch.randn(3, 1, 4), torch.randn(3, 1, 4)
    rows = torch.tensor([4, 0, 2])
    ours_state, op_state = state.clone(), state.clone()
    y = compat.selective_state_update(ours_state, x, dt, A, B, C, D, z, dt_bias, True, rows)
    expected = ssm_kernels.selective_state_update(op_state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                                  dt_softplus=True, state_batch_indices=rows)
    assert torch.equal(y, expected) and torch.equal(ours_state, op_state) and not torch.equal(ours_state, state)


def test_names_are_exported():
    for name in ("mamba_inner_fn", "mamba_split_conv1d_scan_combined", "rmsnorm_fn", "causal_conv1d_fn"):
        assert getattr(ssm_kernels, name) is getattr(compat, name) and name in ssm_kernels.__all__
    for name in ("selective_scan_fn", "mamba_chunk_scan_combined"):
        assert getattr(compat, name) is getattr(ssm_kernels, name)
    assert set(compat.__all__) == {"selective_scan_fn", "mamba_inner_fn", "selective_state_update",
                                   "mamba_chunk_scan_combined", "mamba_split_conv1d_scan_combined", "rmsnorm_fn",
                                   "causal_conv1d_fn", "causal_conv1d_update"}
    # the top-level causal_conv1d_update stays our op (backend= its 6th parameter)
    assert list(inspect.signature(ssm_kernels.causal_conv1d_update).parameters)[5] == "backend"
    assert compat.causal_conv1d_update is not ssm_kernels.causal_conv1d_update
    # the top-level selective_state_update takes dt_proj_weight too; compat's has mamba_ssm's parameters
    assert "dt_proj_weight" in inspect.signature(ssm_kernels.selective_state_update).parameters
    assert compat.selective_state_update is not ssm_kernels.selective_state_update


@pytest.mark.parametrize("name", ["mamba_inner_fn", "mamba_split_conv1d_scan_combined", "rmsnorm_fn",
                                  "causal_conv1d_fn", "causal_conv1d_update"])
def test_docstring_example(name):
    tests = doctest.DocTestFinder().find(getattr(compat, name), name, globs={})
    assert tests and tests[0].examples, f"{name}'s docstring has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


# --- the originals' own references (SSM_PEERS_DIR) ---------------------------------------------------------
PEER_FUNCTIONS = {  # name -> (module, attribute)
    "mamba_inner_ref": ("mamba_ssm.ops.selective_scan_interface", "mamba_inner_ref"),
    "selective_scan_ref": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_ref"),
    "mamba_split_conv1d_scan_ref": ("mamba_ssm.ops.triton.ssd_combined", "mamba_split_conv1d_scan_ref"),
    "rms_norm_ref": ("mamba_ssm.ops.triton.layernorm_gated", "rms_norm_ref"),
    "causal_conv1d_ref": ("causal_conv1d.causal_conv1d_interface", "causal_conv1d_ref"),
    "causal_conv1d_update_ref": ("causal_conv1d.causal_conv1d_interface", "causal_conv1d_update_ref"),
    # the originals, for their signatures only
    "mamba_inner_fn": ("mamba_ssm.ops.selective_scan_interface", "mamba_inner_fn"),
    "selective_scan_fn": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "mamba_split_conv1d_scan_combined": ("mamba_ssm.ops.triton.ssd_combined", "mamba_split_conv1d_scan_combined"),
    "mamba_chunk_scan_combined": ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
    "selective_state_update": ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update"),
    "rmsnorm_fn": ("mamba_ssm.ops.triton.layernorm_gated", "rmsnorm_fn"),
    "causal_conv1d_fn": ("causal_conv1d.causal_conv1d_interface", "causal_conv1d_fn"),
    "causal_conv1d_update": ("causal_conv1d.causal_conv1d_interface", "causal_conv1d_update"),
}
PEER_PACKAGES = ("mamba_ssm", "causal_conv1d", "selective_scan_cuda", "causal_conv1d_cuda")


@pytest.fixture(scope="module")
def peer():
    """The peers' functions (None where one cannot be imported), with their CUDA extensions stubbed and their
    modules' CUDA / Triton calls bound to the pure-PyTorch references; sys.modules is restored afterwards."""
    if not os.environ.get("SSM_PEERS_DIR"):
        pytest.skip("SSM_PEERS_DIR is not set (point it at the peer packages, e.g. ../shared/peers)")
    peers = importlib.import_module("benchmarks.peers")
    ours = lambda name: name.split(".")[0] in PEER_PACKAGES  # noqa: E731
    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    prepared = peers._PREPARED[0]
    try:
        for extension in ("selective_scan_cuda", "causal_conv1d_cuda"):  # imported at module level, never called
            sys.modules.setdefault(extension, types.ModuleType(extension))
        found = {name: peers.load(module, attribute) for name, (module, attribute) in PEER_FUNCTIONS.items()}
        conv_ref, rms_ref = found["causal_conv1d_ref"], found["rms_norm_ref"]
        interface = sys.modules.get("mamba_ssm.ops.selective_scan_interface")
        if interface is not None and conv_ref is not None:
            interface.causal_conv1d_fn = conv_ref
            interface.selective_scan_fn = interface.selective_scan_ref  # also what ssd_selective_scan imports
        combined = sys.modules.get("mamba_ssm.ops.triton.ssd_combined")
        if combined is not None and conv_ref is not None and rms_ref is not None:
            combined.causal_conv1d_fn = conv_ref
            combined.rmsnorm_fn = (lambda x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True:
                                   rms_ref(x, weight, bias, z=z, eps=eps, group_size=group_size,
                                           norm_before_gate=norm_before_gate))
        yield types.SimpleNamespace(**found)
    finally:
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)
        peers._PREPARED[0] = prepared


def peer_function(peer, name):
    fn = getattr(peer, name)
    if fn is None:
        module, attribute = PEER_FUNCTIONS[name]
        pytest.skip(f"{module}.{attribute} cannot be imported from SSM_PEERS_DIR={os.environ.get('SSM_PEERS_DIR')}")
    return fn


@pytest.mark.parametrize("case", ["real", "real-proj-bias", "complex", "complex-proj-bias-fixed-B", "fixed-B"])
def test_mamba_inner_fn_matches_mamba_ssm(peer, case):
    reference = peer_function(peer, "mamba_inner_ref")
    inputs = inner_inputs(**INNER_CASES[case])
    check_parity(compat.mamba_inner_fn, reference, inputs, FP32, floating(inputs))


@pytest.mark.parametrize("case", [
    (dict(), dict(chunk_size=8)),
    (dict(ngroups=2, D_per_channel=True), dict(chunk_size=4, dt_limit=(0.01, 0.3))),
    (dict(rms=True, outproj=5, length=9), dict(chunk_size=4, norm_before_gate=False, rmsnorm_eps=1e-5)),
    (dict(rms=True, D_per_channel=True, length=5, width=2), dict(chunk_size=8, activation=None)),
], ids=["basic", "groups-dt_limit", "rms-outproj", "rms-no-activation"])
def test_mamba_split_conv1d_scan_combined_matches_mamba_ssm(peer, case):
    """mamba_split_conv1d_scan_ref has no initial states, seq_idx, final states or non-SSM channels, and
    normalises over all of dim (one group) whatever ngroups: the cases stay within that."""
    reference = peer_function(peer, "mamba_split_conv1d_scan_ref")
    sizes, kwargs = case
    inputs, extra = split_inputs(**sizes)
    check_parity(compat.mamba_split_conv1d_scan_combined, reference, inputs, FP32, floating(inputs),
                 **kwargs, **extra)


@pytest.mark.parametrize("group_size,norm_before_gate,gate,bias", [
    (None, True, True, True), (6, False, True, True), (4, True, False, True), (None, False, True, False)])
def test_rmsnorm_fn_matches_mamba_ssm(peer, group_size, norm_before_gate, gate, bias):
    reference = peer_function(peer, "rms_norm_ref")
    inputs = {"x": torch.randn(3, 5, 24), "weight": 1 + 0.1 * torch.randn(24),
              "bias": torch.randn(24) if bias else None, "z": torch.randn(3, 5, 24) if gate else None}
    check_parity(compat.rmsnorm_fn, reference, inputs, FP32, floating(inputs), eps=1e-5, group_size=group_size,
                 norm_before_gate=norm_before_gate)


@pytest.mark.parametrize("length,width,options", [
    (7, 4, dict(bias=True, activation="silu")),
    (1, 2, dict(initial_states=True, return_final_states=True)),
    (13, 3, dict(initial_states=True, return_final_states=True, activation="swish", bias=True)),
    (9, 4, dict(seq_idx=[-1, -1, 0, 0, 0, 1, 1, 2, 2], bias=True, activation="silu")),
    (9, 4, dict(seq_idx=[0, 0, 0, 1, 1, 1, 1, 2, 2], initial_states=True)),
])
def test_causal_conv1d_fn_matches_causal_conv1d(peer, length, width, options):
    reference = peer_function(peer, "causal_conv1d_ref")
    inputs, options = _conv_fn_inputs(length, width, options, torch.int32)
    check_parity(compat.causal_conv1d_fn, reference, inputs, FP32, floating(inputs), **options)


@pytest.mark.parametrize("case", ["shift-one-token", "shift-tokens", "circular-one-token", "circular-tokens",
                                  "circular-width-1", "rows", "rows-circular"])
def test_causal_conv1d_update_matches_causal_conv1d(peer, case):
    """causal_conv1d_update_ref has no conv_state_indices: it runs on the selected rows, written back after.
    (Not with more tokens than a circular state holds: the reference then scatters to repeated positions in an
    undefined order; the kernel keeps the last tokens, as ours does, see the step-by-step test.)"""
    reference = peer_function(peer, "causal_conv1d_update_ref")
    spec = UPDATE_CASES[case]
    batch, dim, width, state_len = 3, 4, spec["width"], spec["state_len"]
    rows = spec.get("rows", batch)
    x = torch.randn(batch, dim) if spec["steps"] is None else torch.randn(batch, dim, spec["steps"])
    conv_state, weight = torch.randn(rows, dim, state_len), torch.randn(dim, width)
    bias = torch.randn(dim) if spec.get("bias") else None
    cache_seqlens = torch.tensor(spec["cache_seqlens"], dtype=torch.int32) if "cache_seqlens" in spec else None
    indices = torch.tensor(spec["indices"], dtype=torch.int32) if "indices" in spec else None
    activation = spec.get("activation")

    expected_state = conv_state.clone()
    valid = torch.ones(batch, dtype=torch.bool) if indices is None else indices >= 0
    selected = torch.arange(batch) if indices is None else indices[valid].long()
    state_rows = expected_state[selected]
    y_valid = reference(x[valid], state_rows, weight, bias, activation,
                        None if cache_seqlens is None else cache_seqlens[valid])
    expected_state[selected] = state_rows
    expected = torch.zeros_like(x)
    expected[valid] = y_valid

    y = compat.causal_conv1d_update(x, conv_state, weight, bias, activation, cache_seqlens, indices)
    assert_close(y, expected, FP32, "y")
    assert torch.equal(conv_state, expected_state)


@pytest.mark.parametrize("name", ["mamba_inner_fn", "selective_scan_fn", "mamba_split_conv1d_scan_combined",
                                  "mamba_chunk_scan_combined", "selective_state_update", "rmsnorm_fn",
                                  "causal_conv1d_fn", "causal_conv1d_update"])
def test_signature_matches_the_original(peer, name):
    """Same parameters, order and defaults; ours may add a trailing backend=None."""
    theirs = parameters(peer_function(peer, name))
    ours = parameters(getattr(compat, name))
    if ours[-1:] == [("backend", None)] and theirs[-1:] != [("backend", None)]:
        ours = ours[:-1]
    assert ours == theirs


def test_peer_modules_get_causal_conv1d(peer):
    """mamba_ssm's modules import causal_conv1d_fn / causal_conv1d_update from the causal_conv1d package and
    silently take their unfused torch paths when that fails: the peers' shell package must export them, or every
    block / generation comparison times a crippled mamba_ssm."""
    if peer.causal_conv1d_fn is None:
        pytest.skip("causal-conv1d's interface does not import from SSM_PEERS_DIR")
    simple = importlib.import_module("mamba_ssm.modules.mamba_simple")
    assert simple.causal_conv1d_fn is not None and simple.causal_conv1d_update is not None
