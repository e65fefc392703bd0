"""The custom-op / autograd wiring every op's backends use (define_custom_op), and eager calls of those ops
without the torch.library autograd wrapper's host time (eager_fast_path).

Each kernel backend is a torch.library custom op with register_autograd: that is what torch.compile traces.
In eager mode its autograd wrapper costs about 45 us of Python per call with grad-requiring inputs (59 us
against 13 us for an equivalent torch.autograd.Function on a 2-core CPU; on the H100 host the
causal_conv1d forward took 0.21 ms with grad-requiring inputs against 0.11 ms without), which is as much as
the kernel itself for short sequences. `eager_fast_path` keeps the op for traced code and, in eager mode,
runs the same pieces (the implementation, setup_context and backward) through a torch.autograd.Function,
or the bare implementation when no gradient is needed; its backward calls the backward's body directly too.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


def needs_grad(*args) -> bool:
    """Whether autograd records a call with these arguments (tensors, None or other values): some tensor
    requires grad and grad mode is on. The dispatch table orders backends by forward+backward time for such
    calls and by forward time for the others; backends skip saving what only a backward needs."""
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def eager_fast_path(op: Callable, impl: Callable, setup_context: Callable, backward: Callable,
                    materialize_grads: bool = True) -> Callable:
    """A function of the op's arguments: `op` while torch.compile traces, else the same computation with
    less host time. `impl` is the op's body; `setup_context(ctx, inputs, output)` and `backward(ctx,
    *grads)` are what was given to register_autograd. materialize_grads=False: outputs that received no
    gradient reach `backward` as None instead of zeros that autograd allocates and fills."""

    class _Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            ctx.set_materialize_grads(materialize_grads)
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    def call(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        if needs_grad(*args):
            return _Eager.apply(*args)
        return impl(*args)

    call.__name__ = f"{getattr(impl, '__name__', 'op')}_eager_fast_path"
    return call


def define_custom_op(name: str, forward: Callable, forward_fake: Callable, backward: Callable,
                     backward_fake: Callable, setup_context: Callable, backward_rule: Callable,
                     materialize_grads: bool = True, eager_backward: Optional[Callable] = None) -> Callable:
    """Register the custom ops ssm_kernels::<name>_fwd and ssm_kernels::<name>_bwd (name: "<op>_<backend>")
    with their fakes and autograd, and return the function to call (eager_fast_path of the forward op).

    forward / backward: annotated functions (torch.library infers the schemas from them); their fakes take
    the same arguments. setup_context(ctx, inputs, output) saves what the backward needs;
    backward_rule(backward_op, ctx, *grads) returns one gradient (or None) per forward argument, calling
    backward_op for the work. eager_backward: what eager calls' backward_rule calls instead of `backward` (the
    same work without what only the op's schema needs, e.g. empty tensors standing for absent gradients).
    """
    forward_op = torch.library.custom_op(f"ssm_kernels::{name}_fwd", forward, mutates_args=())
    forward_op.register_fake(forward_fake)
    backward_op = torch.library.custom_op(f"ssm_kernels::{name}_bwd", backward, mutates_args=())
    backward_op.register_fake(backward_fake)

    def rule(ctx, *grads):
        return backward_rule(backward_op, ctx, *grads)

    eager_body = backward if eager_backward is None else eager_backward

    def eager_rule(ctx, *grads):  # the backward's body without the op's dispatch (~10-40 us of host time)
        return backward_rule(eager_body, ctx, *grads)

    forward_op.register_autograd(rule, setup_context=setup_context)
    return eager_fast_path(forward_op, forward, setup_context, eager_rule, materialize_grads)
