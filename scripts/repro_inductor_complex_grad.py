"""Reproduces, with torch alone, the torch.compile (Inductor) bug that makes S4's kernel excluded from
compilation (ssm_universal/layers/s4.py, S4.kernel): the gradient with respect to dt of S4's generating-function
kernel (pure-torch Cauchy sums over complex modes, conjugate columns, then a Conv1d) comes out wrong by O(1)
relative under Inductor on CPU (torch 2.13), while eager and aot_eager agree.

    python scripts/repro_inductor_complex_grad.py      # prints the relative gradient error per variant
"""
import torch
import torch.nn.functional as F
torch.manual_seed(0)
L, H, half, c = 24, 4, 4, 1
cw = torch.randn(8, 4, 1); cb = torch.randn(8)
P = torch.randn(H, half, dtype=torch.complex64); B = torch.randn(H, half, dtype=torch.complex64)
Lambda = torch.complex(-torch.rand(H, half), torch.randn(H, half))
Ct = torch.randn(1, H, half, dtype=torch.complex64)
z = torch.randn(L // 2 + 1, dtype=torch.complex64)
def cauchy(v, z, w):  # pure torch: (R, N) x (L,) x (R, N) -> (R, L)
    return (v[:, :, None] / (z[None, None, :] - w[:, :, None])).sum(1)
def head(dt, conj_p=True):
    outs = torch.cat([Ct, (P.conj() if conj_p else P).unsqueeze(0)])
    ins = torch.stack([B, P])
    v = (outs.unsqueeze(1) * ins * dt[:, None]).reshape(-1, half)
    w = Lambda.repeat(2 * (c + 1), 1)
    return cauchy(torch.cat([v, v.conj()], -1), z, torch.cat([w, w.conj()], -1)).view(c + 1, 2, H, -1)
cases = {
    "pure-conv": lambda dt: F.conv1d(torch.view_as_real(head(dt)[0, 0]).flatten(-2)[None], cw, cb).sum(),
    "pure-conv-noconjP": lambda dt: F.conv1d(torch.view_as_real(head(dt, False)[0, 0]).flatten(-2)[None], cw, cb).sum(),
}
for name, f in cases.items():
    dt = (torch.rand(H) + 0.5).requires_grad_()
    g_e, = torch.autograd.grad(f(dt), [dt])
    torch._dynamo.reset()
    g_c, = torch.autograd.grad(torch.compile(f, fullgraph=True)(dt), [dt])
    print(f"{name:18s} grad {((g_c-g_e).abs().max()/g_e.abs().max()).item():.1e}")
