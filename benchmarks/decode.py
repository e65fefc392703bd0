"""Decoding-step probe on the GPU: where the microseconds of one selective_state_update /
causal_conv1d_update call go at batch 1, and the Mamba-2 B=64 step's bandwidth per tile size.

    python -m benchmarks decode
Host-loop times are (wall time of n calls + one synchronize) / n, best of 3: what a decoding loop sees.
The last lines time a whole language-model step, eager and replayed from a CUDA graph (GraphedStep)."""
import argparse
import importlib
import time

import torch
import triton

from ssm_kernels import causal_conv1d_update, selective_state_update

SSU = importlib.import_module("ssm_kernels.selective_state_update.triton")
dev = "cuda"


def host_loop(fn, n=3000, repeats=3):
    """Best of `repeats` runs of (wall time of n calls + one synchronize) / n, in us (the host is noisy)."""
    for _ in range(200):
        fn()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def mamba1(batch=1, dim=4096, dstate=16, dtype=torch.bfloat16):
    return dict(state=torch.randn(batch, dim, dstate, device=dev), x=torch.randn(batch, dim, device=dev, dtype=dtype),
                dt=torch.randn(batch, dim, device=dev, dtype=dtype), A=-torch.rand(dim, dstate, device=dev),
                B=torch.randn(batch, dstate, device=dev, dtype=dtype), C=torch.randn(batch, dstate, device=dev, dtype=dtype),
                D=torch.randn(dim, device=dev), z=torch.randn(batch, dim, device=dev, dtype=dtype),
                dt_bias=torch.randn(dim, device=dev))


def mamba2(batch, heads=64, headdim=64, dstate=128, dtype=torch.bfloat16):
    lead = (batch, heads, headdim)
    return dict(state=torch.randn(*lead, dstate, device=dev), x=torch.randn(*lead, device=dev, dtype=dtype),
                dt=torch.randn(*lead, device=dev, dtype=dtype),
                A=-torch.rand(heads, device=dev)[:, None, None].expand(heads, headdim, dstate),
                B=torch.randn(batch, 1, dstate, device=dev, dtype=dtype), C=torch.randn(batch, 1, dstate, device=dev, dtype=dtype),
                D=torch.randn(heads, headdim, device=dev), z=torch.randn(*lead, device=dev, dtype=dtype),
                dt_bias=torch.randn(heads, headdim, device=dev))


def graph_per_step(fn, steps=64):
    """Per-step time when `steps` calls are captured in one CUDA graph and replayed (mamba_ssm's cg=True)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            fn()
    return host_loop(graph.replay, n=300) / steps


def kernel_steps():
    """Host and device time of one decoding kernel call, and the Mamba-2 B64 update per tile size."""
    p = mamba1()
    print(f"ssu B1 D4096 N16 public fn        : {host_loop(lambda: selective_state_update(**p, dt_softplus=True)):6.1f} us")
    print(f"ssu B1 D4096 N16 _launch only      : {host_loop(lambda: SSU._launch(p['state'], p['x'], p['dt'], p['A'], p['B'], p['C'], p['D'], p['z'], p['dt_bias'], True, None)):6.1f} us")
    print(f"ssu B1 do_bench public fn          : {triton.testing.do_bench(lambda: selective_state_update(**p, dt_softplus=True)) * 1e3:6.1f} us")
    print(f"torch.empty                        : {host_loop(lambda: torch.empty(4096, device=dev)):6.1f} us")
    xs = torch.randn(1, 4096, device=dev, dtype=torch.bfloat16)
    cs = torch.randn(1, 4096, 3, device=dev, dtype=torch.bfloat16)
    w = torch.randn(4096, 4, device=dev)
    b = torch.randn(4096, device=dev)
    print(f"conv update B1 D4096 W4 public fn  : {host_loop(lambda: causal_conv1d_update(xs, cs, w, b, activation='silu')):6.1f} us")

    q = mamba2(64)
    defaults = SSU.TILE, SSU.WARPS
    state_bytes = q["state"].numel() * 4 * 2
    for tile, warps in ((1024, 2), (1024, 4), (2048, 2), (2048, 4), (4096, 4), (4096, 8)):
        SSU.TILE, SSU.WARPS = tile, warps
        SSU._config.cache_clear()
        ms = triton.testing.do_bench(lambda: selective_state_update(**q, dt_softplus=True), rep=200)
        print(f"ssu mamba2 B64 tile {tile:5d} warps {warps}: {ms * 1e3:6.1f} us  {state_bytes / ms / 1e9:5.2f} TB/s",
              flush=True)
    SSU.TILE, SSU.WARPS = defaults
    SSU._config.cache_clear()

    q1 = mamba2(1)
    print(f"ssu mamba2 B1 public fn            : {host_loop(lambda: selective_state_update(**q1, dt_softplus=True)):6.1f} us")
    print(f"ssu mamba1 B1 CUDA graph per step  : {graph_per_step(lambda: selective_state_update(**p, dt_softplus=True)):6.2f} us")
    print(f"ssu mamba2 B1 CUDA graph per step  : {graph_per_step(lambda: selective_state_update(**q1, dt_softplus=True)):6.2f} us")
    print(f"conv update B1 CUDA graph per step : {graph_per_step(lambda: causal_conv1d_update(xs, cs, w, b, activation='silu')):6.2f} us")
    print(f"empty-ish torch.add host loop      : {host_loop(lambda: torch.add(xs, xs)):6.1f} us")


def model_steps():
    """A whole decoding step of a language model: eager (one launch per kernel) against GraphedStep."""
    from ssm_universal.models import SSMLanguageModel
    from ssm_universal.models.cuda_graph import GraphedStep

    for arch in ("mamba", "mamba2"):
        lm = SSMLanguageModel(1000, arch, d_model=768, n_layer=8).cuda().eval()
        tok = torch.zeros(1, dtype=torch.long, device=dev)
        with torch.no_grad():
            state = [lm.default_state(1)]

            def eager_step():
                _, state[0] = lm.step(tok, state[0])
            graphed = GraphedStep(lm, 1, dev)
            print(f"LM {arch} d768 x8 layers B1 per token: eager {host_loop(eager_step, n=300):7.1f} us, "
                  f"CUDA graph {host_loop(lambda: graphed(tok), n=300):6.1f} us", flush=True)


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="python -m benchmarks decode", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    kernel_steps()
    model_steps()
    return 0
