"""torch alone: the Inductor bug that keeps S4's kernel generation out of torch.compile (S4.kernel is
@torch.compiler.disable). The gradient with respect to dt of S4's generating-function kernel (Cauchy sums over
complex modes, conjugate columns, then a Conv1d) comes out wrong by O(1) relative under Inductor on the CPU with
torch 2.13 (eager and aot_eager agree); torch 2.14.1 computes it right. Expected to fail where the bug is known,
strictly, so that a torch that fixes it makes this test report it (then S4.kernel may compile there too)."""
import pytest
import torch
import torch.nn.functional as F

from ssm_kernels.testing import relative_error, tolerance

BROKEN = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) < (2, 14)


def _s4_like_loss(conj_p: bool):
    """dt (H,) -> a scalar through S4's kernel math; the constants are drawn here from a fixed seed."""
    generator = torch.Generator().manual_seed(0)
    L, H, half, c = 24, 4, 4, 1

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=generator, dtype=dtype)
    cw, cb = randn(8, 4, 1), randn(8)
    P, B = randn(H, half, dtype=torch.complex64), randn(H, half, dtype=torch.complex64)
    Lambda = torch.complex(-torch.rand(H, half, generator=generator), randn(H, half))
    Ct, z = randn(1, H, half, dtype=torch.complex64), randn(L // 2 + 1, dtype=torch.complex64)

    def loss(dt):
        outs = torch.cat([Ct, (P.conj() if conj_p else P).unsqueeze(0)])
        v = (outs.unsqueeze(1) * torch.stack([B, P]) * dt[:, None]).reshape(-1, half)
        w = Lambda.repeat(2 * (c + 1), 1)
        v, w = torch.cat([v, v.conj()], -1), torch.cat([w, w.conj()], -1)
        kernel = (v[:, :, None] / (z[None, None, :] - w[:, :, None])).sum(1).view(c + 1, 2, H, -1)
        return F.conv1d(torch.view_as_real(kernel[0, 0]).flatten(-2)[None], cw, cb).sum()
    return loss


@pytest.mark.xfail(BROKEN, strict=True, reason="torch < 2.14: Inductor's gradient of this complex kernel is wrong")
@pytest.mark.parametrize("conj_p", [True, False])
def test_inductor_gradient_of_s4_kernel_math(conj_p):
    loss = _s4_like_loss(conj_p)
    dt = torch.rand(4, generator=torch.Generator().manual_seed(1)) + 0.5
    eager, = torch.autograd.grad(loss(dt.requires_grad_()), [dt])
    torch._dynamo.reset()
    compiled, = torch.autograd.grad(torch.compile(loss, fullgraph=True)(dt), [dt])
    assert relative_error(compiled, eager) <= tolerance(torch.float32)
