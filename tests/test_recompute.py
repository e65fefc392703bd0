"""ssm_kernels._recompute (activations recomputed in the backward) and its users: the Mamba / Mamba2 training paths
and compat.mamba_inner_fn's checkpoint_lvl=1, against the same computations that keep everything."""
import functools
import gc
import weakref

import pytest
import torch

import ssm_kernels
import ssm_kernels._recompute as recompute_module
from ssm_kernels._recompute import recomputed_activations
from ssm_kernels.compat import mamba_inner_fn
from ssm_universal.layers.mamba import Mamba
from ssm_universal.layers.mamba2 import Mamba2

from .helpers import HAS_CUDA, backend_device

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
# the comparisons are bitwise: outside torch's deterministic mode the selective scan's backward adds dB / dC with
# atomics, in an order that differs between two runs
pytestmark = pytest.mark.usefixtures("deterministic_mode")


def _mamba_run(block, x, recompute, backend=None, autocast=None):
    """(output, input gradient, every parameter's gradient) of one forward + backward."""
    block.recompute_in_backward = recompute
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with ssm_kernels.use_backend(backend or {}):
        if autocast is None:
            y = block(x)
        else:
            with torch.autocast(x.device.type, dtype=autocast):
                y = block(x)
        weights = torch.linspace(-1, 1, y.numel(), device=x.device).view_as(y)
        (y.float() * weights).sum().backward()
    return [y.detach(), x.grad] + [p.grad for p in block.parameters()]


def _assert_same(kept, recomputed):
    for a, b in zip(kept, recomputed):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same kernels on the same values: bitwise


class _Halved(torch.nn.Module):
    """A projection wrapped in another module (as a LoRA layer wraps it): the block calls it as a module."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, t):
        return self.linear(t) * 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", ["mamba", "falcon_mamba", "wrapped_x_proj"])
def test_mamba_recompute_equals_keeping(device, dtype, variant):
    torch.manual_seed(0)
    block = Mamba(32, d_state=8, mixer_rms_eps=1e-6 if variant == "falcon_mamba" else None, device=device,
                  dtype=dtype)
    if variant == "wrapped_x_proj":
        block.x_proj = _Halved(block.x_proj)
    x = torch.randn(2, 37, 32, device=device, dtype=dtype)
    _assert_same(_mamba_run(block, x, False), _mamba_run(block, x, True))


def _mamba2(variant, device, dtype=torch.float32):
    options = dict(d_state=8, headdim=8, chunk_size=16, device=device, dtype=dtype)
    if variant == "gated_mlp":  # z0 / x0 channels in front of the SSD's: out_proj's input is a concatenation
        options.update(d_ssm=32)
    elif variant == "no_rmsnorm":  # z gates the scan's output: out_proj reads it directly
        options.update(rmsnorm=False)
    elif variant == "groups":
        options.update(ngroups=2, D_has_hdim=True, norm_before_gate=True)
    elif variant == "bias":  # in_proj and out_proj with biases
        options.update(bias=True)
    block = Mamba2(32, **options)
    if variant == "wrapped_in_proj":
        block.in_proj = _Halved(block.in_proj)
    elif variant == "wrapped_out_proj":  # out_proj called as a module on the norm's output
        block.out_proj = _Halved(block.out_proj)
    return block


MAMBA2_VARIANTS = ["mamba2", "gated_mlp", "no_rmsnorm", "groups", "bias", "wrapped_in_proj", "wrapped_out_proj"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", MAMBA2_VARIANTS)
def test_mamba2_recompute_equals_keeping(device, dtype, variant):
    torch.manual_seed(0)
    block = _mamba2(variant, device, dtype)
    x = torch.randn(2, 37, 32, device=device, dtype=dtype)
    _assert_same(_mamba_run(block, x, False), _mamba_run(block, x, True))


def test_mamba2_recompute_with_packed_sequences():
    torch.manual_seed(0)
    block = _mamba2("mamba2", "cpu")
    x = torch.randn(1, 40, 32)
    cu_seqlens = torch.tensor([0, 13, 29, 40])
    runs = []
    for recompute in (False, True):
        block.recompute_in_backward = recompute
        block.zero_grad(set_to_none=True)
        xc = x.clone().requires_grad_()
        y = block(xc, cu_seqlens=cu_seqlens)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        runs.append([y.detach(), xc.grad] + [p.grad for p in block.parameters()])
    _assert_same(*runs)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_mamba2_recompute_with_the_kernel_backends(backend):
    device = backend_device(backend)
    torch.manual_seed(0)
    block = _mamba2("mamba2", device)
    x = torch.randn(2, 21, 32, device=device)
    chosen = {"causal_conv1d": backend, "ssd_chunk_scan": "triton", "gated_rmsnorm": "triton"}
    with ssm_kernels._dispatch.record_backends() as used:
        recomputed = _mamba_run(block, x, True, backend=chosen)
    # the conv ran again in the backward; the scan once, and the norm once (with out_proj: its backward writes
    # the norm's output again instead)
    assert used == {"causal_conv1d": {backend: 2}, "ssd_chunk_scan": {"triton": 1}, "gated_rmsnorm": {"triton": 1}}
    _assert_same(_mamba_run(block, x, False, backend=chosen), recomputed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layer", ["mamba", "mamba2"])
def test_recompute_under_autocast(device, layer):
    # the recipes run in the backward, outside the forward's autocast block: they re-enter it
    torch.manual_seed(0)
    block = Mamba(32, d_state=8, device=device) if layer == "mamba" else _mamba2("mamba2", device)
    x = torch.randn(2, 40, 32, device=device)
    _assert_same(_mamba_run(block, x, False, autocast=torch.bfloat16),
                 _mamba_run(block, x, True, autocast=torch.bfloat16))


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_mamba_recompute_with_the_kernel_backends(backend):
    device = backend_device(backend)
    torch.manual_seed(0)
    block = Mamba(16, d_state=4, device=device)
    x = torch.randn(2, 21, 16, device=device)
    chosen = {"causal_conv1d": backend, "selective_scan": backend}
    with ssm_kernels._dispatch.record_backends() as used:
        recomputed = _mamba_run(block, x, True, backend=chosen)
    assert used == {"causal_conv1d": {backend: 2}, "selective_scan": {backend: 1}}  # the conv ran again
    _assert_same(_mamba_run(block, x, False, backend=chosen), recomputed)


def _kept_out_refs(monkeypatch):
    refs = []
    keep_out = recompute_module._Recipes.keep_out

    def spy(self, recipe, *inputs):
        tensor = keep_out(self, recipe, *inputs)
        refs.append(weakref.ref(tensor.untyped_storage()))  # the memory, not the tensor object
        return tensor
    monkeypatch.setattr(recompute_module._Recipes, "keep_out", spy)
    return refs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recompute", [True, False, None])
def test_mamba_frees_the_conv_output_and_dt_after_the_forward(monkeypatch, device, recompute):
    refs = _kept_out_refs(monkeypatch)
    torch.manual_seed(0)
    block = Mamba(32, d_state=8, device=device)
    block.recompute_in_backward = recompute  # None (the default): on GPUs only
    y = block(torch.randn(2, 40, 32, device=device))
    if not (recompute or (recompute is None and device == "cuda")):
        assert refs == []  # the block is disabled: nothing registered, autograd keeps both
        return
    assert len(refs) == 2 and all(ref() is None for ref in refs)  # the conv output's and dt's memory is free
    y.sum().backward()
    assert block.x_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recompute", [True, False, None])
@pytest.mark.parametrize("variant", ["mamba2", "gated_mlp"])
def test_mamba2_frees_the_conv_output_and_out_proj_input_after_the_forward(monkeypatch, device, recompute, variant):
    """The conv output is kept out of the saved tensors; out_proj's input too, as a recipe where gated-MLP
    channels join it, else inside the norm + out_proj op, which keeps no norm output at all (its backward
    writes it again)."""
    refs = _kept_out_refs(monkeypatch)
    torch.manual_seed(0)
    block = _mamba2(variant, device)
    block.recompute_in_backward = recompute  # None (the default): on GPUs only
    y = block(torch.randn(2, 40, 32, device=device))
    if not (recompute or (recompute is None and device == "cuda")):
        assert refs == []
        return
    assert len(refs) == (1 if variant == "mamba2" else 2) and all(ref() is None for ref in refs)
    y.sum().backward()
    assert block.in_proj.weight.grad.abs().sum() > 0


def test_no_recompute_without_grad_or_in_other_hooks(monkeypatch):
    refs = _kept_out_refs(monkeypatch)
    block = Mamba(16, d_state=4)
    block.recompute_in_backward = True
    x = torch.randn(1, 9, 16)
    with torch.no_grad():
        block(x)
    with torch.autograd.graph.save_on_cpu():  # other saved-tensor hooks see every saved tensor
        block(x).sum().backward()
    assert refs == []


def test_mamba_recompute_inside_activation_checkpointing():
    torch.manual_seed(0)
    block = Mamba(32, d_state=8)
    x = torch.randn(2, 23, 32)
    kept = _mamba_run(block, x, False)
    block.recompute_in_backward = True
    block.zero_grad(set_to_none=True)
    xc = x.clone().requires_grad_()
    y = torch.utils.checkpoint.checkpoint(block, xc, use_reentrant=False)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    _assert_same(kept, [y.detach(), xc.grad] + [p.grad for p in block.parameters()])


def test_second_backward_recomputes_again():
    torch.manual_seed(0)
    block = Mamba(16, d_state=4)
    block.recompute_in_backward = True
    y = block(torch.randn(2, 12, 16))
    first = torch.autograd.grad(y.sum(), list(block.parameters()), retain_graph=True)
    second = torch.autograd.grad(y.sum(), list(block.parameters()))
    _assert_same(first, second)


def test_a_graph_without_backward_is_freed_at_once():
    # an op that saves its own output (exp) must not get it back as itself: the output would reference its
    # grad_fn, which holds the output: a cycle that keeps the graph's memory until the garbage collector runs
    a = torch.randn(5, requires_grad=True)
    gc.disable()
    try:
        with recomputed_activations(True, a.device) as keep_out:
            kept = keep_out(lambda: a.sin())
            e = (kept * 2).exp()
        del kept
        ref = weakref.ref(e)
        del e
        assert ref() is None
    finally:
        gc.enable()


def _live_tensors() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


@pytest.mark.parametrize("user", ["Mamba", "Mamba2", "mamba_inner_fn"])
def test_a_block_graph_dropped_without_backward_is_freed_at_once(user):
    """A forward under grad mode whose output is dropped without a backward (an evaluation without no_grad)
    frees its whole graph at once: the recipes kept for the backward hold their inputs detached, so no cycle
    through autograd's nodes (which the garbage collector cannot see into) keeps it alive."""
    torch.manual_seed(0)
    if user == "Mamba":
        block = Mamba(16, d_state=4)
        block.recompute_in_backward = True
        x = torch.randn(2, 24, 16, requires_grad=True)
        run = functools.partial(block, x)
    elif user == "Mamba2":
        block = _mamba2("gated_mlp", "cpu")
        block.recompute_in_backward = True
        run = functools.partial(block, torch.randn(2, 24, 32, requires_grad=True))
    else:
        inputs = _inner_fn_inputs("cpu", dt_rms=True)
        run = functools.partial(mamba_inner_fn, **inputs, checkpoint_lvl=1)
    run()  # first-call caches
    gc.collect()
    gc.disable()
    try:
        before = _live_tensors()
        for _ in range(3):
            run()
        assert _live_tensors() == before
    finally:
        gc.enable()


def test_a_recipe_reading_the_graph_from_its_closure_is_refused():
    a = torch.randn(4, requires_grad=True)
    b = a * 2  # a tensor of the graph: it must be an input
    with recomputed_activations(True, a.device) as keep_out:
        with pytest.raises(TypeError, match="pass it as an input"):
            keep_out(lambda: b.exp())


def test_a_recipe_may_read_another_recipes_result():
    """The second recipe holds the first's result as a token (not its memory): both are freed after the
    forward and recomputed in turn in the backward."""
    a = torch.randn(6, dtype=torch.float64, requires_grad=True)
    calls = []

    def first(t):
        calls.append("first")
        return t * 3.0  # saves nothing (an op saving its own result inside a recipe would keep it)

    def second(t):
        calls.append("second")
        return t.sin()
    with recomputed_activations(True, a.device) as keep_out:
        e = keep_out(first, a)
        s = keep_out(second, e)
        out = (s * s).sum()  # saves s only (mul saves both operands: s twice)
        refs = [weakref.ref(t.untyped_storage()) for t in (e, s)]
    del e, s
    assert all(ref() is None for ref in refs)
    (grad,) = torch.autograd.grad(out, a)
    torch.testing.assert_close(grad, (6 * (3 * a).sin() * (3 * a).cos()).detach(), rtol=0, atol=1e-12)
    assert calls == ["first", "second", "first", "second"]


def test_an_op_declares_its_own_intermediate_recomputable():
    """recomputable(): inside a block, a tensor an op saves is recomputed from the op's recipe; outside one,
    nothing changes."""
    from ssm_kernels._recompute import recomputable
    a = torch.randn(5, dtype=torch.float64, requires_grad=True)
    calls = []

    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            twice = x * 2  # the op's own intermediate, saved for its backward
            ctx.declared = recomputable(twice, lambda x: calls.append(1) or x * 2, x.detach())
            ctx.save_for_backward(twice)
            return x * x

        @staticmethod
        def backward(ctx, grad):
            (twice,) = ctx.saved_tensors
            return grad * twice
    with recomputed_activations(True, a.device):
        y = Square.apply(a)
    assert calls == []
    (grad,) = torch.autograd.grad(y.sum(), a)
    assert calls == [1]
    torch.testing.assert_close(grad, 2 * a.detach(), rtol=0, atol=0)
    calls.clear()
    y = Square.apply(a)
    torch.autograd.grad(y.sum(), a)
    assert calls == []


def test_saved_views_are_recomputed_as_the_same_views():
    a = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    calls = []

    def recipe():
        calls.append(1)
        return a.exp()
    with recomputed_activations(True, a.device) as keep_out:
        e = keep_out(recipe)
        out = (e.t()[1:] * torch.arange(4.0, dtype=torch.float64)[:, None]).sum() + e[:, 2].square().sum()
    del e
    (grad,) = torch.autograd.grad(out, a)
    expected = a.exp() * (torch.arange(5.0, dtype=torch.float64) - 1).clamp(min=0)
    expected[:, 2] += 2 * a.exp()[:, 2] ** 2
    torch.testing.assert_close(grad, expected.detach(), rtol=0, atol=1e-12)
    assert calls == [1, 1]  # the forward, then once for both saved views


def test_a_result_in_another_dimension_order_is_kept_out_too():
    # a fresh output stored transposed (dense, strides not decreasing) owns its storage just as well
    a = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    refs = []
    with recomputed_activations(True, a.device) as keep_out:
        e = keep_out(lambda: a.exp().t().contiguous().t())  # (3, 5), strides (1, 3)
        refs.append(weakref.ref(e.untyped_storage()))
        out = (e * e).sum()
    del e
    assert refs[0]() is None
    (grad,) = torch.autograd.grad(out, a)
    torch.testing.assert_close(grad, 2 * a.exp().detach() ** 2, rtol=0, atol=1e-12)


def test_a_recipe_of_another_shape_is_an_error():
    a = torch.randn(4, requires_grad=True)
    lengths = iter([4, 3])  # the forward's result, then a recomputation of another shape
    with recomputed_activations(True, a.device) as keep_out:
        e = keep_out(lambda: a[:next(lengths)].exp())
        out = (e * e).sum()
    del e
    with pytest.raises(RuntimeError, match="recomputed activation"):
        out.backward()


def _inner_fn_inputs(device, dt_rms):
    torch.manual_seed(0)
    d, n, r, o, w = 16, 4, 3, 12, 4

    def make(*shape):
        return torch.randn(*shape, device=device, dtype=torch.float64, requires_grad=True)
    return dict(xz=make(2, 2 * d, 19), conv1d_weight=make(d, 1, w), conv1d_bias=make(d),
                x_proj_weight=make(r + 2 * n, d), delta_proj_weight=make(d, r), out_proj_weight=make(o, d),
                out_proj_bias=None, A=-torch.rand(d, n, device=device, dtype=torch.float64).requires_grad_(),
                D=make(d), delta_bias=make(d), dt_rms_weight=make(d) if dt_rms else None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dt_rms", [False, True])
def test_mamba_inner_fn_checkpoint_levels_agree(device, dt_rms):
    runs = []
    for level in (0, 1):
        inputs = _inner_fn_inputs(device, dt_rms)
        out = mamba_inner_fn(**inputs, checkpoint_lvl=level)
        leaves = [t for t in inputs.values() if t is not None]
        runs.append([out.detach()] + list(torch.autograd.grad(out.square().sum(), leaves)))
    _assert_same(*runs)
