"""selective_state_update: in-place decoding steps against the reference and against selective_scan."""
import pytest
import torch

from ssm_kernels import _dispatch
from ssm_kernels.selective_scan import selective_scan
from ssm_kernels.selective_state_update import selective_state_update
from ssm_kernels.selective_state_update.reference import selective_state_update_ref
from ssm_kernels.testing import assert_close
from tests.helpers import backend_device

BACKENDS = list(_dispatch.implemented_backends("selective_state_update"))


def mamba1_inputs(batch, dim, length, dstate, groups, device):
    return dict(u=torch.randn(batch, dim, length, device=device), delta=torch.randn(batch, dim, length, device=device),
                A=-torch.rand(dim, dstate, device=device) * 2, B=torch.randn(batch, groups, dstate, length, device=device),
                C=torch.randn(batch, groups, dstate, length, device=device), D=torch.randn(dim, device=device),
                z=torch.randn(batch, dim, length, device=device), delta_bias=torch.randn(dim, device=device))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups", [1, 2])
def test_mamba1_steps_equal_scan(backend, groups):
    device = backend_device(backend)
    p = mamba1_inputs(2, 8, 13, 4, groups, device)
    init = torch.randn(2, 8, 4, device=device)
    # the scan is the reference here (torch backend): only the step's backend is under test
    y, final = selective_scan(**p, delta_softplus=True, initial_state=init, return_final_state=True, backend="torch")
    state = init.clone()
    ys = []
    for t in range(13):
        B, C = (p[k][..., t] if groups > 1 else p[k][:, 0, :, t] for k in ("B", "C"))
        ys.append(selective_state_update(state, p["u"][..., t], p["delta"][..., t], p["A"], B, C, D=p["D"],
                                         z=p["z"][..., t], dt_bias=p["delta_bias"], dt_softplus=True,
                                         backend=backend))
    assert_close(torch.stack(ys, -1), y, torch.float32, "stepped outputs")
    assert_close(state, final, torch.float32, "state after the steps")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mamba2_steps_with_cache_rows_equal_scan(backend):
    """Mamba-2 form, A broadcast from (H,) with stride 0, state rows picked from a larger cache: equals
    selective_scan over the H * P channels (head h's channels share A[h] and group h // (H / G))."""
    device = backend_device(backend)
    batch, heads, headdim, dstate, groups, length = 2, 4, 3, 5, 2, 9
    x = torch.randn(batch, heads, headdim, length, device=device)
    dt = torch.randn(batch, heads, length, device=device)
    A_head = -torch.rand(heads, device=device)
    B = torch.randn(batch, groups, dstate, length, device=device)
    C = torch.randn(batch, groups, dstate, length, device=device)
    D, dt_bias = torch.randn(heads, headdim, device=device), torch.randn(heads, device=device)
    cache = torch.randn(5, heads, headdim, dstate, device=device)
    rows = torch.tensor([3, 1], device=device)
    untouched = cache[[0, 2, 4]].clone()
    channels = heads * headdim
    y, final = selective_scan(x.flatten(1, 2), dt[:, :, None].expand(-1, -1, headdim, -1).flatten(1, 2),
                              A_head[:, None, None].expand(heads, headdim, dstate).reshape(channels, dstate),
                              B, C, D=D.flatten(), delta_bias=dt_bias[:, None].expand(heads, headdim).flatten(),
                              delta_softplus=True, initial_state=cache[rows].flatten(1, 2),
                              return_final_state=True, backend="torch")
    A = A_head[:, None, None].expand(heads, headdim, dstate)
    assert A.stride() == (1, 0, 0)
    ys = []
    for t in range(length):
        ys.append(selective_state_update(cache, x[..., t], dt[:, :, None, t].expand(-1, -1, headdim), A,
                                         B[..., t], C[..., t], D=D, dt_bias=dt_bias[:, None].expand(heads, headdim),
                                         dt_softplus=True, state_batch_indices=rows, backend=backend))
    assert_close(torch.stack(ys, -1).flatten(1, 2), y, torch.float32, "stepped outputs")
    assert_close(cache[rows].flatten(1, 2), final, torch.float32, "cache rows after the steps")
    assert torch.equal(cache[[0, 2, 4]], untouched)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,state_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                               (torch.float16, torch.float16)])
def test_matches_reference(backend, dtype, state_dtype):
    device = backend_device(backend)
    batch, heads, headdim, dstate, groups = 3, 4, 2, 6, 2
    state = torch.randn(batch, heads, headdim, dstate, device=device).to(state_dtype)
    args = dict(x=torch.randn(batch, heads, headdim, device=device).to(dtype),
                dt=torch.randn(batch, heads, headdim, device=device).to(dtype),
                A=-torch.rand(heads, headdim, dstate, device=device),
                B=torch.randn(batch, groups, dstate, device=device).to(dtype),
                C=torch.randn(batch, groups, dstate, device=device).to(dtype),
                D=torch.randn(heads, headdim, device=device), z=torch.randn(batch, heads, headdim, device=device).to(dtype),
                dt_bias=torch.randn(heads, headdim, device=device), dt_softplus=True)
    ref_state = state.clone()
    out = selective_state_update(state, **args, backend=backend)
    expected = selective_state_update_ref(ref_state, **args)
    assert out.dtype == dtype and state.dtype == state_dtype
    assert_close(out, expected, dtype)
    assert_close(state, ref_state, state_dtype, "state")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_parameters_are_read_in_fp32(backend, param_dtype):
    """A, D, dt_bias of a bf16 / fp16 model: the same step, bit for bit, as with their fp32 copies."""
    device = backend_device(backend)
    state = torch.randn(3, 4, 2, 6, device=device)
    args = dict(x=torch.randn(3, 4, 2, device=device).bfloat16(), dt=torch.randn(3, 4, 2, device=device).bfloat16(),
                B=torch.randn(3, 2, 6, device=device).bfloat16(), C=torch.randn(3, 2, 6, device=device).bfloat16(),
                z=torch.randn(3, 4, 2, device=device).bfloat16(), dt_softplus=True)
    params = dict(A=-torch.rand(4, 2, 6, device=device), D=torch.randn(4, 2, device=device),
                  dt_bias=torch.randn(4, 2, device=device))
    params = {name: p.to(param_dtype) for name, p in params.items()}
    ref_state = state.clone()
    out = selective_state_update(state, **args, **params, backend=backend)
    expected = selective_state_update(ref_state, **args, **{n: p.float() for n, p in params.items()}, backend=backend)
    assert torch.equal(out, expected) and torch.equal(state, ref_state)


def test_compile_fullgraph():
    state = torch.randn(2, 8, 4)
    args = (torch.randn(2, 8), torch.randn(2, 8), -torch.rand(8, 4), torch.randn(2, 4), torch.randn(2, 4))
    expected_state = state.clone()
    expected = selective_state_update(expected_state, *args, dt_softplus=True)
    compiled = torch.compile(lambda s, *a: selective_state_update(s, *a, dt_softplus=True), fullgraph=True,
                             backend="aot_eager")
    out = compiled(state, *args)
    assert_close(out, expected, torch.float32)
    assert_close(state, expected_state, torch.float32, "state")


@pytest.mark.parametrize("form", ["mamba1", "mamba1_groups", "mamba2"])
@pytest.mark.parametrize("dtype,state_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                               (torch.float16, torch.float32)])
@pytest.mark.parametrize("dstate", [1, 5, 16, 40])
def test_triton_forms_and_blocks(triton_device, form, dtype, state_dtype, dstate):
    """Both forms against the reference, N not a power of two, row counts over one row block (H * P = 150 or
    D = 150 rows), optional arguments absent, non-contiguous x, z and state rows from a cache."""
    device = triton_device
    batch = 3
    heads, headdim = (150, 1) if form.startswith("mamba1") else (10, 15)
    groups = 2 if form == "mamba1_groups" else (5 if form == "mamba2" else 1)
    cache = torch.randn(batch + 2, heads, headdim, dstate, device=device).to(state_dtype)
    rows = torch.tensor([4, 0, 2], device=device)
    x = torch.randn(heads, headdim, batch, device=device).permute(2, 0, 1).to(dtype)
    args = dict(dt=torch.randn(batch, heads, headdim, device=device).to(dtype),
                A=-torch.rand(heads, headdim, dstate, device=device),
                B=torch.randn(batch, groups, dstate, device=device).to(dtype),
                C=torch.randn(batch, groups, dstate, device=device).to(dtype),
                z=torch.randn(batch, heads, 2 * headdim, device=device).to(dtype)[..., ::2],
                dt_bias=torch.randn(heads, headdim, device=device), dt_softplus=True, state_batch_indices=rows)
    ref_cache = cache.clone()
    expected = selective_state_update_ref(ref_cache, x, **args)
    if form.startswith("mamba1"):  # public (B, D, N) form: squeeze the P = 1 axis
        squeeze = {k: v[..., 0] if k in ("dt", "z", "dt_bias") else v for k, v in args.items()}
        squeeze["A"] = args["A"][:, 0]
        if form == "mamba1":
            squeeze["B"], squeeze["C"] = args["B"][:, 0], args["C"][:, 0]
        state = cache[:, :, 0]
        out = selective_state_update(state, x[..., 0], **squeeze, backend="triton")[..., None]
    else:
        out = selective_state_update(cache, x, **args, backend="triton")
    assert_close(out, expected, dtype)
    assert_close(cache, ref_cache, state_dtype, "state cache")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,rank", [(torch.float32, 20), (torch.bfloat16, 64), (torch.float16, 3)])
def test_dt_projection_fused(backend, dtype, rank):
    """dt_proj_weight: dt is the low-rank input and the step projects it (fp32): equals projecting first in
    fp32, against the reference, with D = 150 rows (over one row block), a rank that is not a multiple of the
    kernel's slices, non-contiguous dt and weight, cache rows and groups."""
    device = backend_device(backend)
    batch, dim, dstate = 3, 150, 16
    cache = torch.randn(batch + 1, dim, dstate, device=device)
    rows = torch.tensor([2, 0, 3], device=device)
    x = torch.randn(batch, dim, device=device).to(dtype)
    dt_low = torch.randn(rank, batch, device=device).t().to(dtype) * 0.3
    weight = torch.randn(rank, dim, device=device).t().to(dtype) * 0.3  # (D, R), column-major
    args = dict(A=-torch.rand(dim, dstate, device=device), B=torch.randn(batch, 2, dstate, device=device).to(dtype),
                C=torch.randn(batch, 2, dstate, device=device).to(dtype), D=torch.randn(dim, device=device),
                z=torch.randn(batch, dim, device=device).to(dtype), dt_bias=torch.randn(dim, device=device),
                dt_softplus=True, state_batch_indices=rows)
    ref_cache, projected_cache = cache.clone(), cache.clone()
    expected = selective_state_update_ref(ref_cache, x, dt_low, dt_proj_weight=weight, **args)
    dt = (dt_low.double() @ weight.double().t()).float()
    projected = selective_state_update_ref(projected_cache, x.float(), dt, **args)
    assert_close(expected.float(), projected, dtype, "reference: fused vs projected first")
    out = selective_state_update(cache, x, dt_low, dt_proj_weight=weight, backend=backend, **args)
    assert_close(out, expected, dtype)
    assert_close(cache, ref_cache, torch.float32, "state cache")


def test_triton_without_options_and_fp64_refused(triton_device):
    state = torch.randn(2, 8, 4, device=triton_device)
    args = (torch.randn(2, 8, device=triton_device), torch.rand(2, 8, device=triton_device),
            -torch.rand(8, 4, device=triton_device), torch.randn(2, 4, device=triton_device),
            torch.randn(2, 4, device=triton_device))
    ref_state = state.clone()
    out = selective_state_update(state, *args, backend="triton")
    assert_close(out, selective_state_update(ref_state, *args, backend="torch"), torch.float32)
    assert_close(state, ref_state, torch.float32, "state")
    with pytest.raises(RuntimeError, match="backend 'triton' .* cannot run: the GPU kernels take .*float64"):
        selective_state_update(state.double(), *(a.double() for a in args), backend="triton")


def test_triton_compile_fullgraph(triton_device):
    state = torch.randn(2, 8, 4, device=triton_device)
    args = tuple(t.to(triton_device) for t in (torch.randn(2, 8), torch.randn(2, 8), -torch.rand(8, 4),
                                              torch.randn(2, 4), torch.randn(2, 4)))
    expected_state = state.clone()
    expected = selective_state_update(expected_state, *args, dt_softplus=True, backend="torch")
    compiled = torch.compile(lambda s, *a: selective_state_update(s, *a, dt_softplus=True, backend="triton"),
                             fullgraph=True, backend="aot_eager")
    out = compiled(state, *args)
    assert_close(out, expected, torch.float32)
    assert_close(state, expected_state, torch.float32, "state")


def _base():
    return dict(state=torch.randn(2, 8, 4), x=torch.randn(2, 8), dt=torch.randn(2, 8), A=-torch.rand(8, 4),
                B=torch.randn(2, 4), C=torch.randn(2, 4))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=torch.randn(2, 7)), ValueError, r"x must have shape \(B, D\) = \(B, 8\)"),
    (dict(A=torch.randn(8, 5)), ValueError, r"A must have shape \(D, N\) = \(8, 4\)"),
    (dict(B=torch.randn(2, 3, 4)), ValueError, "B has 3 groups, which must divide D = 8"),
    (dict(C=torch.randn(3, 4)), ValueError, r"C must have shape \(B, N\) = \(2, 4\)"),
    (dict(D=torch.randn(8, 1)), ValueError, r"D must have shape \(D,\)"),
    (dict(dt_bias=torch.arange(8)), TypeError, "dt_bias must have dtype"),
    (dict(state=torch.randn(3, 8, 4)), ValueError, "without state_batch_indices"),
    (dict(state_batch_indices=torch.tensor([0.0, 1.0])), TypeError, "state_batch_indices must have dtype"),
    (dict(A=torch.randn(4, 2, 4), state=torch.randn(2, 4, 2, 4)), ValueError, r"x must have shape \(B, H, P\)"),
    (dict(dt_softplus="yes"), TypeError, "dt_softplus must be a bool"),
    (dict(dt_proj_weight=torch.randn(8, 3)), ValueError, r"dt must have shape \(B, R\) = \(2, 3\)"),
    (dict(dt_proj_weight=torch.randn(7, 3), dt=torch.randn(2, 3)), ValueError,
     r"dt_proj_weight must have shape \(D, R\) = \(8, R\)"),
    (dict(dt_proj_weight=torch.randn(4, 3), A=torch.randn(4, 2, 4), state=torch.randn(2, 4, 2, 4),
          x=torch.randn(2, 4, 2)), ValueError, "dt_proj_weight is for the Mamba-1 form"),
    (dict(state=None), TypeError, "state is required"),
])
def test_validation(kwargs, error, match):
    args = _base()
    args.update(kwargs)
    with pytest.raises(error, match=match):
        selective_state_update(**args)


def test_validation_runs_again_after_a_valid_call():
    """Passing signatures are remembered (decoding speed); a call that differs in any checked property must
    still be refused, and a device mismatch is part of the signature."""
    selective_state_update(**_base())
    selective_state_update(**_base())
    for kwargs, error, match in [(dict(x=torch.randn(2, 7)), ValueError, "x must have shape"),
                                 (dict(D=torch.arange(8)), TypeError, "D must have dtype"),
                                 (dict(z=[0.0] * 8), TypeError, "z must be a torch.Tensor")]:
        args = _base()
        args.update(kwargs)
        with pytest.raises(error, match=match):
            selective_state_update(**args)
    args = _base()
    args["x"] = args["x"].to("meta")
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        selective_state_update(**args)
