"""Block-size sweep of the Triton selective scan on the issue-5 H100 case (u, delta, z (4, 4096, 4096) bf16,
N=16, D, z, delta_bias, softplus): prints forward and forward+backward medians per (MAX_BLOCK_L, tile) so the
winners can be written into ssm_kernels/selective_scan/triton.py (FWD_TILE, BWD_TILE, MAX_BLOCK_L)."""
import importlib

import torch
import triton

from ssm_kernels import selective_scan

# the public function shadows the subpackage attribute, so import the module by name
T = importlib.import_module("ssm_kernels.selective_scan.triton")

torch.manual_seed(0)
dev, dt, Bb, D, L, N = "cuda", torch.bfloat16, 4, 4096, 4096, 16
u, z = (torch.randn(Bb, D, L, device=dev).to(dt) for _ in range(2))
delta = (torch.randn(Bb, D, L, device=dev) * 0.5 - 1).to(dt)
A = -torch.arange(1, N + 1, device=dev).float().repeat(D, 1)
B, C = (torch.randn(Bb, N, L, device=dev).to(dt) for _ in range(2))
Dp = torch.randn(D, device=dev)
bias = torch.rand(D, device=dev) - 1.5
leaves = [t.requires_grad_() for t in (u, delta, A, B, C, Dp, z, bias)]
g = torch.randn_like(u)


def f():
    return selective_scan(u, delta, A, B, C, D=Dp, z=z, delta_bias=bias, delta_softplus=True, backend="triton")


defaults = (T.MAX_BLOCK_L, T.FWD_TILE, T.BWD_TILE)
for ml in (16, 32, 64):
    for ft in ((2048, 4), (4096, 4), (8192, 8)):
        T.MAX_BLOCK_L, T.FWD_TILE = ml, ft
        with torch.no_grad():
            print(f"fwd  MAX_BLOCK_L={ml} FWD_TILE={ft}: {triton.testing.do_bench(f):.3f} ms", flush=True)
T.MAX_BLOCK_L, T.FWD_TILE, T.BWD_TILE = defaults
for ml in (16, 32):
    for bt in ((4096, 4), (4096, 8), (8192, 8)):
        T.MAX_BLOCK_L, T.BWD_TILE = ml, bt
        ms = triton.testing.do_bench(lambda: torch.autograd.grad(f(), leaves, g))
        print(f"fwd+bwd MAX_BLOCK_L={ml} BWD_TILE={bt}: {ms:.3f} ms", flush=True)
