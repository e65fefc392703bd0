"""gated_rmsnorm: every backend against the sequential reference (forward and gradients), validation."""
import pytest
import torch
import torch.nn.functional as F

from ssm_kernels import _dispatch
from ssm_kernels.gated_rmsnorm import gated_rmsnorm
from ssm_kernels.gated_rmsnorm.reference import gated_rmsnorm_ref
from ssm_kernels.testing import assert_close
from tests.helpers import backend_device, check_parity

BACKENDS = list(_dispatch.implemented_backends("gated_rmsnorm"))
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_inputs(shape, dtype, device, *, gate=True, weight_dtype=None, transposed=False):
    dim = shape[-1]
    if transposed:  # (..., D) views of (D, ...) memory
        x = torch.randn(dim, *shape[:-1], device=device).to(dtype).movedim(0, -1)
        z = torch.randn(dim, *shape[:-1], device=device).to(dtype).movedim(0, -1) if gate else None
    else:
        x = torch.randn(*shape, device=device).to(dtype)
        z = torch.randn(*shape, device=device).to(dtype) if gate else None
    weight = (1 + 0.1 * torch.randn(dim, device=device)).to(weight_dtype or dtype)
    return {"x": x, "weight": weight, "z": z}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,group_size,norm_before_gate,gate", [
    ((2, 7, 64), None, True, True), ((2, 7, 64), 16, False, True), ((3, 48), 8, True, True),
    ((63, 40), None, False, True), ((5, 24), 24, True, False), ((1, 1, 6), 2, False, True), ((33,), 11, True, True),
])
def test_matches_reference(backend, dtype, shape, group_size, norm_before_gate, gate):
    device = backend_device(backend)
    inputs = make_inputs(shape, dtype, device, gate=gate)
    grads = ["x", "weight"] + (["z"] if gate else [])
    check_parity(lambda **kw: gated_rmsnorm(**kw, backend=backend), gated_rmsnorm_ref, inputs, dtype, grads,
                 eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm_before_gate", [True, False])
def test_noncontiguous_fp32_weight(backend, dtype, norm_before_gate):
    device = backend_device(backend)
    inputs = make_inputs((4, 9, 32), dtype, device, weight_dtype=torch.float32, transposed=True)
    assert not inputs["x"].is_contiguous() and not inputs["z"].is_contiguous()
    check_parity(lambda **kw: gated_rmsnorm(**kw, backend=backend), gated_rmsnorm_ref, inputs, dtype,
                 ["x", "weight", "z"], group_size=8, norm_before_gate=norm_before_gate)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_before_gate", [True, False])
def test_groups_equal_separate_norms(backend, norm_before_gate):
    device = backend_device(backend)
    x, z, weight = torch.randn(5, 24, device=device), torch.randn(5, 24, device=device), torch.randn(24, device=device)
    grouped = gated_rmsnorm(x, weight, z, group_size=6, norm_before_gate=norm_before_gate, backend=backend)
    parts = [gated_rmsnorm(x[:, s:s + 6], weight[s:s + 6], z[:, s:s + 6], norm_before_gate=norm_before_gate,
                           backend=backend) for s in range(0, 24, 6)]
    assert_close(grouped, torch.cat(parts, -1), torch.float32, "grouped output")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mamba_convention(backend):
    """Gate after the norm: rmsnorm(x) * weight * silu(z); before it: rmsnorm(x * silu(z)) * weight."""
    device = backend_device(backend)
    x = torch.tensor([[3.0, -4.0]], device=device)
    z = torch.tensor([[1.0, -2.0]], device=device)
    weight = torch.tensor([2.0, 0.5], device=device)
    eps = 1e-6

    def rmsnorm(u):
        return u / torch.sqrt(u.square().mean(-1, keepdim=True) + eps)
    after = gated_rmsnorm(x, weight, z, eps=eps, norm_before_gate=True, backend=backend)
    before = gated_rmsnorm(x, weight, z, eps=eps, norm_before_gate=False, backend=backend)
    assert_close(after, rmsnorm(x) * weight * F.silu(z), torch.float32, "norm_before_gate=True")
    assert_close(before, rmsnorm(x * F.silu(z)) * weight, torch.float32, "norm_before_gate=False")


@pytest.mark.parametrize("norm_before_gate", [True, False])
def test_gradcheck_fp64(norm_before_gate):
    inputs = make_inputs((3, 12), torch.float64, "cpu")
    args = [inputs[k].requires_grad_() for k in ("x", "weight", "z")]
    assert torch.autograd.gradcheck(
        lambda x, w, z: gated_rmsnorm(x, w, z, group_size=4, norm_before_gate=norm_before_gate), args)


def test_empty_inputs():
    weight = torch.randn(8)
    x = torch.randn(0, 8, requires_grad=True)
    y = gated_rmsnorm(x, weight, torch.randn(0, 8), group_size=4)
    y.sum().backward()
    assert y.shape == (0, 8) and x.grad.shape == (0, 8)
    assert gated_rmsnorm(torch.randn(3, 0), torch.randn(0)).shape == (3, 0)


def test_compile_fullgraph():
    x, weight, z = torch.randn(4, 32, requires_grad=True), torch.randn(32), torch.randn(4, 32)
    compiled = torch.compile(lambda x, w, z: gated_rmsnorm(x, w, z, group_size=8, norm_before_gate=False),
                             fullgraph=True, backend="aot_eager")
    y = compiled(x, weight, z)
    assert_close(y, gated_rmsnorm_ref(x, weight, z, group_size=8, norm_before_gate=False), torch.float32)
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=torch.tensor(1.0)), ValueError, r"x must have shape \(\.\.\., D\)"),
    (dict(weight=torch.randn(7)), ValueError, r"weight must have shape \(D,\) = \(8,\), got \(7,\)"),
    (dict(z=torch.randn(2, 3, 4)), ValueError, r"z must have x's shape \(\.\.\., D\) = \(2, 3, 8\)"),
    (dict(z=torch.randint(0, 2, (2, 3, 8))), TypeError, "z must have dtype"),
    (dict(x=torch.randn(2, 3, 8, dtype=torch.complex64)), TypeError, "x must have dtype"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(eps=-1e-5), ValueError, "eps must be > 0"),
    (dict(eps=float("nan")), ValueError, "eps must be finite"),
    (dict(eps=float("inf")), ValueError, "eps must be finite"),
    (dict(group_size=3), ValueError, "group_size must divide D = 8, got 3"),
    (dict(group_size=0), ValueError, r"group_size must be in \[1, inf\]"),
    (dict(group_size=4.0), TypeError, "group_size must be an int"),
    (dict(norm_before_gate=None), TypeError, "norm_before_gate must be a bool"),
    (dict(backend="cuda"), RuntimeError, "no 'cuda' backend"),
])
def test_validation(kwargs, error, match):
    args = dict(x=torch.randn(2, 3, 8), weight=torch.randn(8), z=torch.randn(2, 3, 8))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        gated_rmsnorm(**args)


# --- a linear layer after the norm (linear_weight, linear_bias): Mamba-2's norm + out_proj -----------------
def _with_linear(inputs, out_features, bias, dtype=None):
    device, dim = inputs["x"].device, inputs["x"].shape[-1]
    dtype = dtype or inputs["x"].dtype
    inputs["linear_weight"] = (torch.randn(out_features, dim, device=device) / dim ** 0.5).to(dtype)
    inputs["linear_bias"] = torch.randn(out_features, device=device).to(dtype) if bias else None
    return inputs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,group_size,norm_before_gate,gate,bias", [
    ((2, 7, 64), None, False, True, False), ((2, 7, 64), 16, True, True, True), ((63, 40), 8, False, True, True),
    ((5, 24), 24, True, False, False), ((33,), 11, False, True, True),
])
def test_linear_after_the_norm_matches_reference(backend, dtype, shape, group_size, norm_before_gate, gate, bias):
    """The norm then y @ linear_weight^T + linear_bias: the output and every gradient (x, weight, z, the linear
    layer's weight and bias) against the reference."""
    device = backend_device(backend)
    inputs = _with_linear(make_inputs(shape, dtype, device, gate=gate), 12, bias)
    grads = ["x", "weight", "linear_weight"] + (["z"] if gate else []) + (["linear_bias"] if bias else [])
    check_parity(lambda **kw: gated_rmsnorm(**kw, backend=backend), gated_rmsnorm_ref, inputs, dtype, grads,
                 eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_after_the_norm_noncontiguous_and_mixed_dtypes(backend):
    """x and z views of (D, ...) memory in bf16, the norm's weight fp32, the linear layer bf16 (as a bf16 block
    computes it); and an fp32 linear layer after a bf16 norm (the norm's output cast to the layer's dtype)."""
    device = backend_device(backend)
    inputs = _with_linear(make_inputs((4, 9, 32), torch.bfloat16, device, weight_dtype=torch.float32,
                                      transposed=True), 20, True)
    check_parity(lambda **kw: gated_rmsnorm(**kw, backend=backend), gated_rmsnorm_ref, inputs, torch.bfloat16,
                 ["x", "weight", "z", "linear_weight", "linear_bias"], group_size=8, norm_before_gate=False)
    inputs = _with_linear(make_inputs((4, 9, 32), torch.bfloat16, device), 20, False, dtype=torch.float32)
    out = gated_rmsnorm(**inputs, group_size=8, backend=backend)
    assert out.dtype == torch.float32 and out.shape == (4, 9, 20)
    assert_close(out, gated_rmsnorm_ref(**inputs, group_size=8), torch.bfloat16, "fp32 linear after a bf16 norm")


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_after_the_norm_under_autocast(backend):
    """Under autocast the linear layer runs in autocast's dtype, as nn.Linear would."""
    device = backend_device(backend)
    inputs = _with_linear(make_inputs((3, 5, 16), torch.float32, device), 8, True)
    with torch.autocast(device.type if isinstance(device, torch.device) else device, dtype=torch.bfloat16):
        out = gated_rmsnorm(**inputs, group_size=8, backend=backend)
        expected = F.linear(gated_rmsnorm(inputs["x"], inputs["weight"], inputs["z"], group_size=8, backend=backend),
                            inputs["linear_weight"], inputs["linear_bias"])
    assert out.dtype == expected.dtype == torch.bfloat16
    assert_close(out, expected, torch.bfloat16, "autocast output")


def test_linear_after_the_norm_keeps_no_norm_output():
    """With the linear layer, the tensors kept for the backward are the inputs alone (x, z and the weights), not
    the norm's (..., D) output: on the triton backend its backward writes that output again."""
    device = backend_device("triton")
    inputs = _with_linear(make_inputs((6, 7, 16), torch.float32, device), 24, True)
    inputs = {k: (v.requires_grad_() if v is not None else v) for k, v in inputs.items()}
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        out = gated_rmsnorm(**inputs, group_size=8, backend="triton")
    names = {id(t): k for k, t in inputs.items()}
    assert sorted(names.get(id(t), str(tuple(t.shape))) for t in kept) == ["linear_weight", "weight", "x", "z"]
    out.sum().backward()
    assert all(t.grad is not None for t in inputs.values())


def test_linear_after_the_norm_compile_fullgraph():
    device = backend_device("triton")
    inputs = _with_linear(make_inputs((4, 32), torch.float32, device), 8, True)
    x = inputs["x"].requires_grad_()
    fn = torch.compile(lambda x, w, z, lw, lb: gated_rmsnorm(x, w, z, group_size=8, norm_before_gate=False,
                                                             linear_weight=lw, linear_bias=lb, backend="triton"),
                       fullgraph=True, backend="aot_eager")
    out = fn(x, inputs["weight"], inputs["z"], inputs["linear_weight"], inputs["linear_bias"])
    reference = gated_rmsnorm_ref(**inputs, group_size=8, norm_before_gate=False)
    assert_close(out, reference, torch.float32)
    out.sum().backward()
    x_ref = x.detach().requires_grad_()
    gated_rmsnorm_ref(**{**inputs, "x": x_ref}, group_size=8, norm_before_gate=False).sum().backward()
    assert_close(x.grad, x_ref.grad, torch.float32, "gradient of x")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(linear_weight=torch.randn(5, 7)), ValueError, r"linear_weight must have shape \(O, D\) = \(O, 8\)"),
    (dict(linear_weight=torch.randn(8)), ValueError, r"linear_weight must have shape \(O, D\)"),
    (dict(linear_weight=torch.randn(5, 8), linear_bias=torch.randn(4)), ValueError,
     r"linear_bias must have shape \(O,\) = \(5,\), got \(4,\)"),
    (dict(linear_bias=torch.randn(5)), ValueError, "linear_bias needs linear_weight"),
    (dict(linear_weight=torch.randint(0, 2, (5, 8))), TypeError, "linear_weight must have dtype"),
    (dict(linear_weight=torch.randn(5, 8), linear_bias=torch.randn(5, dtype=torch.complex64)), TypeError,
     "linear_bias must have dtype"),
])
def test_linear_validation(kwargs, error, match):
    args = dict(x=torch.randn(2, 3, 8), weight=torch.randn(8), z=torch.randn(2, 3, 8))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        gated_rmsnorm(**args)


# --- Triton-specific: row layouts, tile edges, partial-sum reduction, compile ---------------------------
@pytest.mark.parametrize("case", ["unmergeable", "mixed_layouts", "big_group", "many_rows"])
def test_triton_layouts_and_blocks(case):
    device = backend_device("triton")
    if case == "unmergeable":  # three leading dims whose strides do not merge into two: one copy
        x = torch.randn(3, 8, 5, 4, device=device).permute(1, 0, 2, 3)[:, :, 1:4]
        z = torch.randn(4, 3, 5, 6, device=device).permute(1, 0, 3, 2)[:, :2, :3, :4].transpose(0, 1)
        x = x[:2]
        inputs = {"x": x, "weight": torch.randn(4, device=device), "z": z}
        group_size = 2
    elif case == "mixed_layouts":  # x channel-last, z channel-first
        x = torch.randn(6, 5, 16, device=device)
        z = torch.randn(16, 6, 5, device=device).permute(1, 2, 0)
        inputs = {"x": x, "weight": torch.randn(16, device=device), "z": z}
        group_size = 8
    elif case == "big_group":  # one row per tile (BLOCK_M = 1), group not a power of two
        inputs = make_inputs((3, 4100), torch.float32, device)
        group_size = 4100
    else:  # more row blocks than backward programs: several tiles per program, many partial sums
        inputs = make_inputs((1100, 2, 4), torch.float32, device)
        group_size = 1
    assert inputs["x"].shape == inputs["z"].shape
    check_parity(lambda **kw: gated_rmsnorm(**kw, backend="triton"), gated_rmsnorm_ref, inputs, torch.float32,
                 ["x", "weight", "z"], group_size=group_size, norm_before_gate=False)


def test_triton_empty_and_deterministic():
    device = backend_device("triton")
    x = torch.randn(0, 8, device=device, requires_grad=True)
    y = gated_rmsnorm(x, torch.randn(8, device=device), torch.randn(0, 8, device=device), group_size=4,
                      backend="triton")
    y.sum().backward()
    assert y.shape == (0, 8) and x.grad.shape == (0, 8)
    inputs = make_inputs((300, 24), torch.bfloat16, device)
    w = inputs["weight"].requires_grad_()
    grads = []
    for _ in range(2):
        out = gated_rmsnorm(inputs["x"], w, inputs["z"], group_size=8, backend="triton")
        grads.append(torch.autograd.grad(out.float().square().sum(), w)[0])
    assert torch.equal(grads[0], grads[1])


def test_triton_compile_fullgraph():
    device = backend_device("triton")
    x, weight, z = (torch.randn(4, 32, device=device, requires_grad=True), torch.randn(32, device=device),
                    torch.randn(4, 32, device=device))
    compiled = torch.compile(lambda x, w, z: gated_rmsnorm(x, w, z, group_size=8, norm_before_gate=False,
                                                           backend="triton"),
                             fullgraph=True, backend="aot_eager")
    y = compiled(x, weight, z)
    assert_close(y, gated_rmsnorm_ref(x, weight, z, group_size=8, norm_before_gate=False), torch.float32)
    y.sum().backward()
    x_ref = x.detach().requires_grad_()
    gated_rmsnorm_ref(x_ref, weight, z, group_size=8, norm_before_gate=False).sum().backward()
    assert_close(x.grad, x_ref.grad, torch.float32, "gradient of x")
