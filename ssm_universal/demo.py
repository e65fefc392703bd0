"""`python -m ssm_universal.demo`: the quickstart.

Builds a small model, runs forward and backward on the best device here, prints which backend each
ssm_kernels op used, and compares output and every parameter gradient with the same model run in fp64 on
the CPU through the torch backend (the reference).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn as nn

import ssm_kernels
from ssm_kernels.testing import relative_error, tolerance
from ssm_universal.models import create_model


def build_model(d_model: int, n_layer: int) -> tuple:
    model = create_model(architecture="mamba", d_model=d_model, n_layer=n_layer)
    return model, f"create_model('mamba'): {n_layer} pre-norm residual Mamba blocks"


def run(model: nn.Module, x: torch.Tensor, cotangent: torch.Tensor):
    model.zero_grad(set_to_none=True)
    y = model(x)
    (y * cotangent).sum().backward()
    return y.detach(), {n: p.grad.detach() for n, p in model.named_parameters()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssm_universal.demo", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--length", type=int, default=257)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device(args.device)
    model, kind = build_model(args.d_model, args.n_layer)
    model = model.to(device)
    x = torch.randn(2, args.length, args.d_model, device=device)
    cotangent = torch.randn_like(x)
    print(f"model: {kind}, {sum(p.numel() for p in model.parameters())} parameters, device {device}, "
          f"input {tuple(x.shape)} fp32")

    run(model, x, cotangent)  # warm-up: builds or compiles kernels on first use
    with ssm_kernels.record_backends() as used:
        start = time.perf_counter()
        y, grads = run(model, x, cotangent)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    print(f"forward+backward: {elapsed * 1e3:.1f} ms")
    for op, counts in sorted(used.items()):
        print(f"  {op}: " + ", ".join(f"{backend} x{n}" for backend, n in counts.items()))

    reference = copy.deepcopy(model).to("cpu", torch.float64)
    with ssm_kernels.use_backend("torch"):
        y_ref, grads_ref = run(reference, x.to("cpu", torch.float64), cotangent.to("cpu", torch.float64))
    bound = tolerance(torch.float32)
    errors = {"output": relative_error(y.cpu(), y_ref)}
    errors.update({f"grad {n}": relative_error(g.cpu(), grads_ref[n]) for n, g in grads.items()})
    worst = max(errors, key=errors.get)
    ok = all(e <= bound for e in errors.values())
    print(f"vs fp64 CPU reference: output rel. error {errors['output']:.2e}; worst of {len(errors) - 1} "
          f"gradients {errors[worst]:.2e} ({worst}); bound {bound:.0e}: {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
