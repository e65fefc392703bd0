"""Eager calls of kernel ops without the torch.library autograd wrapper's host time.

Each kernel backend is a torch.library custom op with register_autograd: that is what torch.compile traces.
In eager mode its autograd wrapper costs about 45 us of Python per call with grad-requiring inputs (59 us
against 13 us for an equivalent torch.autograd.Function on a 2-core CPU; on the H100 host the
causal_conv1d forward took 0.21 ms with grad-requiring inputs against 0.11 ms without), which is as much as
the kernel itself for short sequences. `eager_fast_path` keeps the op for traced code and, in eager mode,
runs the same pieces (the implementation, setup_context and backward) through a torch.autograd.Function,
or the bare implementation when no gradient is needed.
"""
from __future__ import annotations

from typing import Callable

import torch


def eager_fast_path(op: Callable, impl: Callable, setup_context: Callable, backward: Callable) -> Callable:
    """A function of the op's arguments: `op` while torch.compile traces, else the same computation with
    less host time. `impl` is the op's body; `setup_context(ctx, inputs, output)` and `backward(ctx,
    *grads)` are what was given to register_autograd."""

    class _Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    def call(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return _Eager.apply(*args)
        return impl(*args)

    call.__name__ = f"{getattr(impl, '__name__', 'op')}_eager_fast_path"
    return call
