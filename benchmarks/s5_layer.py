"""The S5 layer forward+backward on each linear_scan backend that runs here (d_model 1024, d_state 256,
B 8, L 4096 by default): python -m benchmarks.s5_layer [--device cuda] [--quick]."""
from __future__ import annotations

import argparse

import torch

from ssm_kernels import _dispatch
from ssm_universal.layers.s5 import S5

from .core import Variant, forward_backward, time_ms


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch, length, d_model, d_state = (2, 512, 256, 64) if args.quick else (8, 4096, 1024, 256)
    layer = S5(d_model, d_state).to(device)
    x = torch.randn(batch, length, d_model, device=device, requires_grad=True)
    leaves = (x, *layer.parameters())
    print(f"S5 layer B{batch} L{length} d_model {d_model} d_state {d_state} on {device}")
    for backend in _dispatch.implemented_backends("linear_scan"):
        if _dispatch.backend_problem(backend, device, "linear_scan") is not None:
            continue
        with _dispatch.use_backend({"linear_scan": backend}):
            fwd = time_ms(lambda: layer(x), device, args.quick)
            both = time_ms(forward_backward(Variant(lambda: layer(x), leaves)), device, args.quick)
        print(f"  linear_scan {backend:7s} forward {fwd:9.3f} ms  forward+backward {both:9.3f} ms")


if __name__ == "__main__":
    main()
