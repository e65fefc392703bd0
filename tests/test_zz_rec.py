import torch
import importlib
T = importlib.import_module("ssm_kernels.selective_scan.triton")
from ssm_kernels.selective_scan import selective_scan


def test_big_case_constexprs(monkeypatch):
    monkeypatch.setattr(T, "MIN_PROGRAMS", 1)
    torch.manual_seed(0)
    b, d, l, n = 1, 32, 128, 16
    dt = torch.bfloat16
    u = torch.randn(b, d, l, dtype=dt, requires_grad=True)
    delta = (0.1 * torch.randn(b, d, l)).to(dt).requires_grad_()
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1).requires_grad_()
    B = torch.randn(b, n, l, dtype=dt, requires_grad=True)
    C = torch.randn(b, n, l, dtype=dt, requires_grad=True)
    D = torch.randn(d, requires_grad=True)
    z = torch.randn(b, d, l, dtype=dt, requires_grad=True)
    bias = torch.randn(d, requires_grad=True)
    y = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, backend="triton")
    y.float().sum().backward()
