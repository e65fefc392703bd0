"""ssd_chunk_scan / mamba_chunk_scan_combined: every backend against the sequential fp32 reference, states,
seq_idx / varlen, chunk-size invariance, validation, torch.compile."""
import math

import pytest
import torch

from ssm_kernels import _dispatch
import torch.nn.functional as F

from ssm_kernels.ssd_chunk_scan import mamba_chunk_scan_combined, ssd_chunk_scan
from ssm_kernels.ssd_chunk_scan.reference import ssd_chunk_scan_ref
from ssm_kernels.testing import assert_close
from tests.helpers import backend_device, check_parity

BACKENDS = list(_dispatch.implemented_backends("ssd_chunk_scan"))
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ALL_GRADS = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]


def reference(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
              dt_limit=(0.0, math.inf), initial_states=None, seq_idx=None, cu_seqlens=None,
              return_final_states=False, return_varlen_states=False):
    out, final, varlen = ssd_chunk_scan_ref(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit,
                                            initial_states, seq_idx, cu_seqlens)
    extra = ((final,) if return_final_states else ()) + ((varlen,) if return_varlen_states else ())
    return (out,) + extra if extra else out


def make_inputs(batch, length, heads, headdim, groups, dstate, dtype, device, *, D_shape="H", z=True,
                init=True, transposed=False):
    """Mamba-2-like values: dt_bias so that softplus(dt + dt_bias) is about 0.01 to 0.5, A in [-8, -0.5].
    x, z, B, C, dt in `dtype`; A, D, dt_bias fp32 (fp64 for fp64), as a Mamba-2 layer holds them."""
    param = torch.float64 if dtype == torch.float64 else torch.float32
    if transposed:  # (B, L, H, P) views of (B, H, L, P) memory
        x = torch.randn(batch, heads, length, headdim, device=device).to(dtype).transpose(1, 2)
    else:
        x = torch.randn(batch, length, heads, headdim, device=device).to(dtype)
    return {
        "x": x,
        "dt": (0.5 * torch.randn(batch, length, heads, device=device)).to(dtype),
        "A": -torch.exp(torch.empty(heads, device=device).uniform_(math.log(0.5), math.log(8.0))).to(param),
        "B": torch.randn(batch, length, groups, dstate, device=device).to(dtype),
        "C": torch.randn(batch, length, groups, dstate, device=device).to(dtype),
        "D": None if D_shape is None else torch.randn((heads,) if D_shape == "H" else (heads, headdim),
                                                      device=device).to(param),
        "z": torch.randn(batch, length, heads, headdim, device=device).to(dtype) if z else None,
        "dt_bias": torch.log(torch.expm1(torch.empty(heads, device=device).uniform_(0.01, 0.3))).to(param),
        "initial_states": torch.randn(batch, heads, headdim, dstate, device=device).to(param) if init else None,
    }


def grads_of(inputs):
    return [name for name in ALL_GRADS if inputs.get(name) is not None]


def random_seq_idx(batch, length, device, pieces=3):
    cuts = torch.randint(0, length, (batch, pieces - 1), device=device)
    positions = torch.arange(length, device=device)
    return (positions[None, None, :] >= cuts[:, :, None]).sum(1).to(torch.int32)


def scan(backend, **kwargs):
    return ssd_chunk_scan(**kwargs, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_size,heads", [(1, 24), (2, 24), (3, 8), (8, 4), (16, 4), (32, 2), (64, 1), (100, 3),
                                              (512, 2)])
def test_every_chunk_size(backend, chunk_size, heads):
    """Chunk sizes from 1 to 512 (small chunks are the usual remedy for bf16 overflow), with head counts that
    make the dt kernel's (chunk, heads) tile 32 or 64 elements: Triton 3.6 failed to compile those on 4 warps."""
    device = backend_device(backend)
    inputs = make_inputs(1, min(2 * chunk_size + 3, 600), heads, 4, 1, 4, torch.float32, device)
    check_parity(lambda **kw: scan(backend, **kw), reference, inputs, torch.float32, grads_of(inputs),
                 chunk_size=chunk_size, dt_softplus=True, return_final_states=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length,chunk_size,heads,groups,D_shape,dt_limit", [
    (63, 16, 4, 2, "H", (0.0, math.inf)),
    (7, 256, 4, 1, "HP", (0.05, 0.2)),
    (1, 4, 2, 2, None, (0.0, math.inf)),
    (130, 32, 4, 4, "H", (0.0, 0.25)),
])
def test_matches_reference(backend, dtype, length, chunk_size, heads, groups, D_shape, dt_limit):
    device = backend_device(backend)
    inputs = make_inputs(2, length, heads, 8, groups, 6, dtype, device, D_shape=D_shape)
    check_parity(lambda **kw: scan(backend, **kw), reference, inputs, dtype, grads_of(inputs),
                 chunk_size=chunk_size, dt_softplus=True, dt_limit=dt_limit, return_final_states=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_seq_idx_noncontiguous_no_extras(backend, dtype):
    device = backend_device(backend)
    inputs = make_inputs(3, 90, 4, 8, 2, 6, dtype, device, D_shape=None, z=False, transposed=True)
    del inputs["dt_bias"]
    inputs["dt"] = F.softplus(inputs["dt"].float() - 2).to(dtype)  # already positive: no softplus
    inputs["seq_idx"] = random_seq_idx(3, 90, device)
    assert not inputs["x"].is_contiguous()
    check_parity(lambda **kw: scan(backend, **kw), reference, inputs, dtype, grads_of(inputs),
                 chunk_size=32, return_final_states=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_states_match_reference(backend):
    device = backend_device(backend)
    inputs = make_inputs(1, 70, 4, 8, 2, 6, torch.float32, device)
    inputs["cu_seqlens"] = torch.tensor([0, 5, 6, 40, 70], dtype=torch.int32, device=device)
    inputs["seq_idx"] = random_seq_idx(1, 70, device)  # boundaries of both kinds
    check_parity(lambda **kw: scan(backend, **kw), reference, inputs, torch.float32, grads_of(inputs),
                 chunk_size=16, dt_softplus=True, return_final_states=True, return_varlen_states=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_size", [pytest.param(1, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow),
                                        17, 64, 300])  # 1 and 3: a minute in the Triton interpreter
def test_independent_of_chunk_size(backend, chunk_size):
    device = backend_device(backend)
    dtype = torch.float32 if backend == "triton" else torch.float64  # Triton has no fp64 kernels
    inputs = make_inputs(1, 100, 4, 8, 2, 6, dtype, device)
    inputs["seq_idx"] = random_seq_idx(1, 100, device)
    inputs["cu_seqlens"] = torch.tensor([0, 10, 55, 100], device=device)
    grads = grads_of(inputs)

    def run(chunk):
        leaves = {k: (v.detach().requires_grad_(k in grads) if v is not None else None) for k, v in inputs.items()}
        outs = scan(backend, **leaves, chunk_size=chunk, dt_softplus=True, return_final_states=True,
                    return_varlen_states=True)
        torch.manual_seed(0)
        loss = sum((o * torch.randn_like(o)).sum() for o in outs)
        return outs, torch.autograd.grad(loss, [leaves[g] for g in grads])

    outs, grads_small = run(chunk_size)
    ref_outs, grads_ref = run(256)
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert_close(o, r, dtype, f"output {i}")
    for name, g, r in zip(grads, grads_small, grads_ref):
        assert_close(g, r, dtype, f"gradient of {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_equals_separate_sequences(backend):
    device = backend_device(backend)
    lengths = [5, 1, 37, 9]
    parts = [make_inputs(1, n, 4, 8, 2, 6, torch.float32, device) for n in lengths]
    shared = {k: parts[0][k] for k in ("A", "D", "dt_bias")}
    init = parts[0]["initial_states"]
    packed = {k: torch.cat([p[k] for p in parts], dim=1) for k in ("x", "dt", "B", "C", "z")}
    cu = torch.tensor([0, 5, 6, 43, 52], dtype=torch.int64, device=device)
    out, final, varlen = scan(backend, **packed, **shared, initial_states=init, cu_seqlens=cu, chunk_size=16,
                              dt_softplus=True, return_final_states=True, return_varlen_states=True)
    separate = [scan(backend, **{k: p[k] for k in packed}, **shared, initial_states=init if i == 0 else None,
                     chunk_size=16, dt_softplus=True, return_final_states=True) for i, p in enumerate(parts)]
    assert_close(out, torch.cat([y for y, _ in separate], dim=1), torch.float32, "packed output")
    assert_close(varlen, torch.stack([s[0] for _, s in separate]), torch.float32, "varlen states")
    assert_close(final, separate[-1][1], torch.float32, "final state of the last sequence")
    # seq_idx alone gives the same sequences
    seq_idx = torch.repeat_interleave(torch.arange(4, device=device), torch.tensor(lengths, device=device))[None]
    by_seq_idx = scan(backend, **packed, **shared, initial_states=init, seq_idx=seq_idx.to(torch.int32),
                      chunk_size=16, dt_softplus=True)
    assert_close(by_seq_idx, out, torch.float32, "seq_idx output")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", [1, 20, 47])
def test_split_with_state_equals_whole(backend, split):
    device = backend_device(backend)
    inputs = make_inputs(2, 48, 4, 8, 2, 6, torch.float32, device)
    kw = dict(chunk_size=16, dt_softplus=True, return_final_states=True)
    fixed = {k: inputs[k] for k in ("A", "D", "dt_bias")}
    seq = {k: inputs[k] for k in ("x", "dt", "B", "C", "z")}
    whole, whole_state = scan(backend, **seq, **fixed, initial_states=inputs["initial_states"], **kw)
    first, state = scan(backend, **{k: v[:, :split] for k, v in seq.items()}, **fixed,
                        initial_states=inputs["initial_states"], **kw)
    second, second_state = scan(backend, **{k: v[:, split:] for k, v in seq.items()}, **fixed,
                                initial_states=state, **kw)
    assert_close(torch.cat([first, second], dim=1), whole, torch.float32, "split output")
    assert_close(second_state, whole_state, torch.float32, "final state")


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_on_final_state_only(backend):
    device = backend_device(backend)
    inputs = make_inputs(2, 40, 4, 8, 2, 6, torch.float32, device)
    grads = ["x", "dt", "A", "B", "dt_bias", "initial_states"]  # the final state does not see C, D, z

    def final_only(fn):
        return lambda **kw: fn(**kw, chunk_size=16, dt_softplus=True, return_final_states=True)[1]
    check_parity(final_only(lambda **kw: scan(backend, **kw)), final_only(reference), inputs, torch.float32, grads)


def test_gradcheck_fp64():
    inputs = make_inputs(1, 9, 2, 2, 1, 3, torch.float64, "cpu", D_shape="HP")
    names = grads_of(inputs)
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2]], dtype=torch.int32)
    cu = torch.tensor([0, 2, 6, 9], dtype=torch.int32)
    inputs["dt"] = inputs["dt"] + 1.0  # away from the kinks of the clamp

    def fn(*args):
        kw = dict(zip(names, args))
        return ssd_chunk_scan(**kw, chunk_size=4, dt_softplus=True, dt_limit=(0.01, 5.0), seq_idx=seq_idx,
                              cu_seqlens=cu, return_final_states=True, return_varlen_states=True)
    assert torch.autograd.gradcheck(fn, [inputs[n].requires_grad_() for n in names])


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_sequence(backend):
    device = backend_device(backend)
    inputs = make_inputs(2, 0, 4, 8, 2, 6, torch.float32, device)
    init = inputs["initial_states"].requires_grad_()
    out, final = scan(backend, **inputs, return_final_states=True)
    assert out.shape == (2, 0, 4, 8)
    assert torch.equal(final, init)
    final.sum().backward()
    assert torch.equal(init.grad, torch.ones_like(init))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dt_preprocessing(backend):
    """softplus(dt + dt_bias) clamped to dt_limit, and the clamp applies without softplus too (mamba_ssm)."""
    device = backend_device(backend)
    inputs = make_inputs(1, 20, 2, 4, 1, 3, torch.float32, device, z=False, D_shape=None, init=False)
    bias = inputs.pop("dt_bias")
    got = scan(backend, **inputs, dt_bias=bias, dt_softplus=True, dt_limit=(0.1, 0.3))
    explicit = dict(inputs, dt=F.softplus(inputs["dt"] + bias).clamp(0.1, 0.3))
    assert_close(got, scan(backend, **explicit, dt_limit=(0.0, 10.0)), torch.float32)
    negative = dict(inputs, dt=-inputs["dt"].abs())
    assert torch.equal(scan(backend, **negative), torch.zeros_like(inputs["x"]))  # dt' = clamp(dt, 0) = 0


def test_mamba_chunk_scan_combined_returns():
    inputs = make_inputs(1, 24, 4, 8, 2, 6, torch.float32, "cpu")
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C")]
    kw = dict(D=inputs["D"], z=inputs["z"], dt_bias=inputs["dt_bias"], initial_states=inputs["initial_states"],
              dt_softplus=True)
    cu = torch.tensor([0, 10, 24], dtype=torch.int32)
    out, final, varlen = reference(*args, **kw, cu_seqlens=cu, return_final_states=True, return_varlen_states=True)
    plain, plain_final = reference(*args, **kw, return_final_states=True)
    assert_close(mamba_chunk_scan_combined(*args, 8, **kw), plain, torch.float32)
    got = mamba_chunk_scan_combined(*args, 8, **kw, return_final_states=True)
    assert isinstance(got, tuple) and len(got) == 2
    assert_close(got[1], plain_final, torch.float32, "final state")
    got = mamba_chunk_scan_combined(*args, 8, **kw, cu_seqlens=cu, return_varlen_states=True)
    assert isinstance(got, tuple) and len(got) == 2
    assert_close(got[0], out, torch.float32, "out")
    assert_close(got[1], varlen, torch.float32, "varlen states")
    got = mamba_chunk_scan_combined(*args, 8, **kw, cu_seqlens=cu, return_final_states=True,
                                    return_varlen_states=True)
    assert len(got) == 3
    assert_close(got[1], final, torch.float32, "final state")
    assert_close(got[2], varlen, torch.float32, "varlen states")
    # cu_seqlens is used only with return_varlen_states, as in mamba_ssm
    assert_close(mamba_chunk_scan_combined(*args, 8, **kw, cu_seqlens=cu), plain, torch.float32)
    with pytest.raises(ValueError, match="cu_seqlens must be provided"):
        mamba_chunk_scan_combined(*args, 8, return_varlen_states=True)


@pytest.mark.parametrize("backend", [None, "triton"])
def test_compile_fullgraph(backend):
    """Varlen with final and per-sequence states under torch.compile(fullgraph): dispatch's choice on the CPU, and
    the Triton backend."""
    device = "cpu" if backend is None else backend_device(backend)
    inputs = make_inputs(1, 33, 4, 8, 2, 6, torch.float32, device)
    cu = torch.tensor([0, 7, 33], dtype=torch.int32, device=device)
    names = grads_of(inputs)

    def fn(*args):
        return ssd_chunk_scan(**dict(zip(names, args)), chunk_size=16, dt_softplus=True, cu_seqlens=cu,
                              return_final_states=True, return_varlen_states=True, backend=backend)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    leaves = [inputs[n].detach().requires_grad_() for n in names]
    outs = compiled(*leaves)
    sum(o.sum() for o in outs).backward()
    ref_leaves = [inputs[n].detach().requires_grad_() for n in names]
    ref_outs = reference(**dict(zip(names, ref_leaves)), dt_softplus=True, cu_seqlens=cu,
                         return_final_states=True, return_varlen_states=True)
    sum(o.sum() for o in ref_outs).backward()
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert_close(o, r, torch.float32, f"output {i}")
    for name, a, b in zip(names, leaves, ref_leaves):
        assert_close(a.grad, b.grad, torch.float32, f"gradient of {name}")


def test_compile_fullgraph_mamba_signature():
    inputs = make_inputs(2, 20, 4, 8, 2, 6, torch.float32, "cpu")
    seq_idx = random_seq_idx(2, 20, "cpu")
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C")]
    compiled = torch.compile(lambda *a: mamba_chunk_scan_combined(*a, 8, D=inputs["D"], seq_idx=seq_idx,
                                                                   dt_softplus=True),
                             fullgraph=True, backend="aot_eager")
    expected = reference(*args, D=inputs["D"], seq_idx=seq_idx, dt_softplus=True)
    assert_close(compiled(*args), expected, torch.float32)


def _base():
    return dict(x=torch.randn(1, 16, 4, 8), dt=torch.randn(1, 16, 4), A=-torch.rand(4), B=torch.randn(1, 16, 2, 6),
                C=torch.randn(1, 16, 2, 6))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=torch.randn(16, 4, 8)), ValueError, r"x must have shape \(B, L, H, P\)"),
    (dict(dt=torch.randn(1, 16, 3)), ValueError, r"dt must have shape \(B, L, H\) = \(1, 16, 4\)"),
    (dict(A=torch.randn(5)), ValueError, r"A must have shape \(H,\) = \(4,\)"),
    (dict(B=torch.randn(1, 15, 2, 6)), ValueError, r"B must have shape \(B, L, G, N\) = \(1, 16, G, N\)"),
    (dict(C=torch.randn(1, 16, 2, 5)), ValueError, r"C must have shape \(B, L, G, N\) = \(1, 16, 2, 6\)"),
    (dict(B=torch.randn(1, 16, 3, 6), C=torch.randn(1, 16, 3, 6)), ValueError, "G \\(ngroups\\) dividing H = 4"),
    (dict(chunk_size=0), ValueError, r"chunk_size must be in \[1, inf\]"),
    (dict(chunk_size=2.5), TypeError, "chunk_size must be an int"),
    (dict(D=torch.randn(4, 7)), ValueError, r"D must have shape \(H, P\) = \(4, 8\)"),
    (dict(D=torch.randn(3)), ValueError, r"D must have shape \(H,\) = \(4,\)"),
    (dict(z=torch.randn(1, 16, 4, 7)), ValueError, r"z must have shape \(B, L, H, P\)"),
    (dict(dt_bias=torch.randn(4, 1)), ValueError, r"dt_bias must have shape \(H,\)"),
    (dict(initial_states=torch.randn(1, 4, 8, 5)), ValueError,
     r"initial_states must have shape \(B, H, P, N\) = \(1, 4, 8, 6\)"),
    (dict(seq_idx=torch.zeros(1, 16)), TypeError, r"seq_idx must have dtype in \(int32, int64\)"),
    (dict(seq_idx=torch.zeros(1, 15, dtype=torch.int32)), ValueError, r"seq_idx must have shape \(B, L\)"),
    (dict(x=torch.randint(0, 3, (1, 16, 4, 8))), TypeError, "x must have dtype"),
    (dict(x=[1.0]), TypeError, "x must be a torch.Tensor"),
    (dict(cu_seqlens=torch.tensor([0, 5, 15])), ValueError, "cu_seqlens must start at 0 and end at L = 16"),
    (dict(cu_seqlens=torch.tensor([1, 5, 16])), ValueError, "cu_seqlens must start at 0"),
    (dict(cu_seqlens=torch.tensor([0, 5, 5, 16])), ValueError, "strictly increasing"),
    (dict(cu_seqlens=torch.tensor([0, 9, 5, 16])), ValueError, "strictly increasing"),
    (dict(cu_seqlens=torch.tensor([0.0, 16.0])), TypeError, "cu_seqlens must have dtype"),
    (dict(cu_seqlens=torch.tensor([[0, 16]])), ValueError, r"cu_seqlens must have shape \(S \+ 1,\)"),
    (dict(x=torch.randn(2, 16, 4, 8), dt=torch.randn(2, 16, 4), B=torch.randn(2, 16, 2, 6),
          C=torch.randn(2, 16, 2, 6), cu_seqlens=torch.tensor([0, 16])), ValueError, "batch size B = 1"),
    (dict(return_varlen_states=True), ValueError, "return_varlen_states=True needs cu_seqlens"),
    (dict(dt_limit=(0.0, float("nan"))), ValueError, r"dt_limit\[1\] must be finite or \+inf"),
    (dict(dt_limit=(-math.inf, 1.0)), ValueError, r"dt_limit\[0\] must be finite"),
    (dict(dt_limit=(0.5, 0.1)), ValueError, "min <= max"),
    (dict(dt_limit=0.5), TypeError, "dt_limit must be a pair"),
    (dict(backend="cuda"), RuntimeError, "no 'cuda' backend"),
    (dict(backend="jax"), ValueError, "unknown backend"),
])
def test_validation(kwargs, error, match):
    args = _base()
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ssd_chunk_scan(**args)


# --- Triton-specific: tile edges, layouts, no-grad path, compile ----------------------------------------
def test_triton_tile_edges_varlen():
    """headdim / d_state above one tile and not powers of two, a chunk that is not a multiple of the row
    block (two row blocks per chunk), packed sequences, seq_idx and an initial state together."""
    device = backend_device("triton")
    inputs = make_inputs(1, 230, 2, 70, 1, 72, torch.float32, device, D_shape="HP")
    inputs["cu_seqlens"] = torch.tensor([0, 3, 101, 200, 230], dtype=torch.int64, device=device)
    inputs["seq_idx"] = random_seq_idx(1, 230, device)
    check_parity(lambda **kw: scan("triton", **kw), reference, inputs, torch.float32, grads_of(inputs),
                 chunk_size=100, dt_softplus=True, return_final_states=True, return_varlen_states=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_noncontiguous_groups_low_precision(dtype):
    device = backend_device("triton")
    inputs = make_inputs(2, 50, 4, 12, 2, 20, dtype, device, D_shape="HP", transposed=True)
    for name in ("B", "C"):  # (B, L, G, N) views of (B, N, G, L) memory
        inputs[name] = inputs[name].permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1)
    assert not inputs["B"].is_contiguous() and not inputs["x"].is_contiguous()
    check_parity(lambda **kw: scan("triton", **kw), reference, inputs, dtype, grads_of(inputs),
                 chunk_size=32, dt_softplus=True, dt_limit=(0.02, 0.4), return_final_states=True)


def test_triton_no_grad_and_partial_grad():
    """Without a gradient to take the forward stores no pre-gate output; with one input needing a gradient
    (z only) the backward still runs and is right."""
    device = backend_device("triton")
    inputs = make_inputs(1, 40, 2, 8, 1, 6, torch.float32, device)
    kw = dict(chunk_size=16, dt_softplus=True, return_final_states=True)
    with torch.no_grad():
        out, final = scan("triton", **inputs, **kw)
    ref_out, ref_final = reference(**inputs, **kw)
    assert_close(out, ref_out, torch.float32, "no-grad output")
    assert_close(final, ref_final, torch.float32, "no-grad final state")
    check_parity(lambda **kw2: scan("triton", **kw2), reference, inputs, torch.float32, ["z"], **kw)


def test_triton_backward_reproducible():
    """Two backward passes give bitwise equal gradients (no atomics in the forward kernels)."""
    device = backend_device("triton")
    inputs = make_inputs(2, 45, 4, 8, 2, 6, torch.bfloat16, device)
    names = grads_of(inputs)
    runs = []
    for _ in range(2):
        leaves = {k: (v.detach().requires_grad_(k in names) if v is not None else None) for k, v in inputs.items()}
        out, final = scan("triton", **leaves, chunk_size=16, dt_softplus=True, return_final_states=True)
        torch.manual_seed(1)
        loss = (out.float() * torch.randn_like(out.float())).sum() + (final * torch.randn_like(final)).sum()
        runs.append(torch.autograd.grad(loss, [leaves[n] for n in names]))
    for name, a, b in zip(names, *runs):
        assert torch.equal(a, b), f"gradient of {name} differs between two runs"
