"""One layer forward+backward on each backend of one op it is built on, everything else left to dispatch:
python -m benchmarks.layer --layer s5|h3|s4d|s4 [--op OP] [--device cuda] [--dtype float32|bfloat16] [--quick].
S5 (linear_scan): d_model 1024, d_state 256, B 8, L 4096. H3 and S4D (fftconv), S4 (cauchy_kernel): d_model 768,
d_state 64, B 8, L 4096. --op varies another op the layer calls (S4D: vandermonde_kernel). bfloat16 runs the
layer under torch.autocast (parameters stay fp32)."""
from __future__ import annotations

import argparse
import contextlib

import torch

from ssm_kernels import _dispatch

from .core import Variant, forward_backward, time_ms

# layer -> (op, d_model, d_state, constructor)
LAYERS = {
    "s5": ("linear_scan", 1024, 256, lambda d, n: __import__("ssm_universal.layers.s5", fromlist=["S5"]).S5(d, n)),
    "h3": ("fftconv", 768, 64, lambda d, n: __import__("ssm_universal.layers.h3", fromlist=["H3"]).H3(d, n)),
    "s4d": ("fftconv", 768, 64, lambda d, n: __import__("ssm_universal.layers.s4d", fromlist=["S4D"]).S4D(d, n)),
    "s4": ("cauchy_kernel", 768, 64, lambda d, n: __import__("ssm_universal.layers.s4", fromlist=["S4"]).S4(d, n)),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layer", choices=sorted(LAYERS), default="s5")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--op", help="the op whose backends are compared (default: the layer's main op)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    op, d_model, d_state, make = LAYERS[args.layer]
    op = args.op or op
    batch, length = (2, 512) if args.quick else (8, 4096)
    if args.quick:
        d_model, d_state = d_model // 4, d_state // 4
    layer = make(d_model, d_state).to(device)
    x = torch.randn(batch, length, d_model, device=device, requires_grad=True)
    leaves = (x, *layer.parameters())
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else contextlib.nullcontext())

    def call():
        with autocast:
            return layer(x)

    print(f"{args.layer.upper()} layer B{batch} L{length} d_model {d_model} d_state {d_state} {args.dtype} on {device}")
    for backend in _dispatch.implemented_backends(op):
        if _dispatch.backend_problem(backend, device, op) is not None:
            continue
        try:
            with _dispatch.use_backend({op: backend}):
                fwd = time_ms(call, device, args.quick)
                both = time_ms(forward_backward(Variant(call, leaves)), device, args.quick)
        except _dispatch.BackendUnavailableError as error:  # e.g. a length or dtype the backend does not take
            print(f"  {op} {backend:7s} cannot run this layer: {error}")
            continue
        print(f"  {op} {backend:7s} forward {fwd:9.3f} ms  forward+backward {both:9.3f} ms")


if __name__ == "__main__":
    main()
