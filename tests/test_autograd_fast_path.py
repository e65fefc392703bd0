"""ssm_kernels._autograd.eager_fast_path: eager calls skip the custom op's autograd wrapper but compute the
same values and gradients; traced calls still see the custom op."""
import torch
from torch import Tensor

from ssm_kernels._autograd import eager_fast_path


def _impl(x: Tensor, scale: float) -> Tensor:
    return x * scale


@torch.library.custom_op("ssm_kernels_test::scaled", mutates_args=())
def _scaled(x: Tensor, scale: float) -> Tensor:
    return _impl(x, scale)


@_scaled.register_fake
def _(x, scale):
    return x.new_empty(x.shape)


def _setup(ctx, inputs, output):
    ctx.scale = inputs[1]


def _backward(ctx, grad):
    return grad * ctx.scale, None


_scaled.register_autograd(_backward, setup_context=_setup)
run = eager_fast_path(_scaled, _impl, _setup, _backward)


def test_eager_path_matches_the_custom_op_and_avoids_it():
    x = torch.randn(5, requires_grad=True)
    y = run(x, 3.0)
    assert "_Eager" in type(y.grad_fn).__name__, "eager calls with grad go through the autograd.Function"
    (gx,) = torch.autograd.grad(y.sum(), x)
    y_op = _scaled(x, 3.0)
    (gx_op,) = torch.autograd.grad(y_op.sum(), x)
    assert torch.equal(y, y_op) and torch.equal(gx, gx_op) and torch.equal(gx, torch.full((5,), 3.0))
    with torch.no_grad():
        assert run(x, 2.0).grad_fn is None
    assert run(x.detach(), 2.0).grad_fn is None


def test_traced_calls_use_the_custom_op():
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes)
        return gm

    x = torch.randn(5, requires_grad=True)
    y = torch.compile(lambda t: run(t, 2.0), backend=backend, fullgraph=True)(x)
    assert torch.equal(y, x * 2.0)
    assert any("ssm_kernels_test.scaled" in target for target in seen), seen
