"""ssm_kernels._recompute (activations recomputed in the backward) and its users: the Mamba block's training path
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


@pytest.mark.parametrize("device", DEVICES)
def test_mamba_recompute_under_autocast(device):
    # the recipes run in the backward, outside the forward's autocast block: they re-enter it
    torch.manual_seed(0)
    block = Mamba(32, d_state=8, device=device)
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


@pytest.mark.parametrize("user", ["Mamba", "mamba_inner_fn"])
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
        kept = keep_out(torch.exp, b)
        with pytest.raises(ValueError, match="another recipe's result"):
            keep_out(torch.sin, kept)


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
