"""Every op's backends under torch.compile with its default (Inductor) backend, forward and backward, on
non-contiguous inputs, with static and dynamic shapes: Inductor's generated code checks what a custom op
returns against the op's fake (shapes and strides), which the aot_eager tests of each op do not, and dynamic
shapes make sizes symbolic in the ops' validation and dispatch."""
import pytest
import torch

import ssm_kernels as K
from tests.helpers import backend_device


def _strided(*shape):
    """A non-contiguous (last two axes swapped in memory) random tensor of `shape`."""
    return torch.randn(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)


def _cases():
    B, D, L, N = 2, 8, 33, 4
    yield "selective_scan", ("torch", "triton", "cuda"), lambda be: (
        lambda u, dl, A, Bv, Cv, z: K.selective_scan(u, dl, A, Bv, Cv, z=z, delta_softplus=True, backend=be),
        (_strided(B, D, L), torch.rand(B, D, L), -torch.rand(D, N), _strided(B, N, L), torch.randn(B, N, L),
         torch.randn(B, D, L)))
    yield "ssd_chunk_scan", ("torch", "triton"), lambda be: (
        lambda x, dt, A, Bs, Cs: K.ssd_chunk_scan(x, dt, A, Bs, Cs, 8, backend=be),
        (_strided(1, 21, 2, 4), torch.rand(1, 21, 2), -torch.rand(2), torch.randn(1, 21, 1, 4),
         _strided(1, 21, 1, 4)))
    yield "causal_conv1d", ("torch", "triton", "cuda"), lambda be: (
        lambda x, w, b: K.causal_conv1d(x, w, b, "silu", backend=be),
        (_strided(B, D, L), torch.randn(D, 4), torch.randn(D)))
    yield "gated_rmsnorm", ("torch", "triton"), lambda be: (
        lambda x, w, z: K.gated_rmsnorm(x, w, z, group_size=4, backend=be),
        (_strided(B, L, D), torch.ones(D), torch.randn(B, L, D)))
    yield "linear_scan", ("torch",), lambda be: (
        lambda a, b: K.linear_scan(a, b, backend=be), (torch.rand(B, D, L), _strided(B, D, L)))
    yield "fftconv", ("torch",), lambda be: (lambda u, k: K.fftconv(u, k, backend=be),
                                             (_strided(B, D, L), torch.randn(D, L)))


CASES = [(op, be, make) for op, backends, make in _cases() for be in backends]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("op, backend, make", CASES, ids=[f"{op}-{be}" for op, be, _ in CASES])
def test_inductor_forward_backward(op, backend, make, dynamic):
    device = backend_device(backend)
    torch.manual_seed(0)
    fn, args = make(backend)
    args = [a.to(device).requires_grad_() for a in args]
    eager_out = fn(*args)
    eager_grads = torch.autograd.grad(eager_out.sum(), args)
    torch._dynamo.reset()
    # no compiled-graph caches: their keys do not cover a custom op's fake, so a stale entry would hide a change
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        out = torch.compile(fn, fullgraph=True, dynamic=dynamic)(*args)
        grads = torch.autograd.grad(out.sum(), args)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
