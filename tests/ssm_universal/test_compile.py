"""Every create_model architecture under torch.compile (Inductor), forward and every gradient, equals eager.
S4's kernel generation is excluded from compilation (a graph break: torch 2.13's Inductor gets its complex
math wrong, tests/test_inductor_complex_grad.py), so S4 compiles with fullgraph=False; the rest compile as
one graph."""
import pytest
import torch

from ssm_universal.models import create_model
from ssm_universal.models.factory import ARCHITECTURES

CASES = [(arch, block_type) for arch, (_, block_types, _) in ARCHITECTURES.items() for block_type in block_types]
CASES.append(("hiss", None))


SLOW_ON_CPU = {"s4", "hiss"}  # about 30 s each of Inductor C++ builds on a 2-core CPU


@pytest.mark.parametrize("architecture, block_type", [
    pytest.param(a, b, id=f"{a}-{b}" if b else a, marks=[pytest.mark.slow] if a in SLOW_ON_CPU else [])
    for a, b in CASES])
def test_compiled_model_equals_eager(architecture, block_type):
    torch.manual_seed(0)
    extra = dict(chunk_size=4) if architecture == "hiss" else {}
    model = create_model(architecture=architecture, block_type=block_type, d_model=16, d_state=8, n_layer=2,
                         **extra)
    x = torch.randn(2, 16, 16, requires_grad=True)
    leaves = [x] + list(model.parameters())
    out = model(x)
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        compiled = torch.compile(model, fullgraph=architecture != "s4")
        out_c = compiled(x)
        grads_c = torch.autograd.grad(out_c.sum(), leaves, allow_unused=True)
    torch.testing.assert_close(out_c, out, rtol=1e-4, atol=1e-5)
    for (name, _), g_c, g in zip([("x", x)] + list(model.named_parameters()), grads_c, grads):
        assert (g_c is None) == (g is None), name
        if g is not None:
            torch.testing.assert_close(g_c, g, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")
