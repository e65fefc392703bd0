"""Native GPU check of the Triton ssd_chunk_scan backward, in one run of under 4 minutes:

    python scripts/check_ssd_bwd.py [--skip-parity] [--skip-bench] [--out DIR]

1. parity of the output, the states and every gradient against the sequential fp32 reference (fp32 / fp16 /
   bf16; ngroups; D per head and per head-dim; seq_idx; cu_seqlens with varlen states; headdim / d_state not
   powers of two), PASS / FAIL against ssm_kernels.testing.tolerance;
2. bitwise reproducibility of the backward under torch.use_deterministic_algorithms(True);
3. do_bench (median ms) of forward and forward + backward for the two issue cases, beside mamba_ssm's
   mamba_chunk_scan_combined when it imports (../shared/tools/peer_packages.sh).
Writes DIR/check_ssd_bwd.json when --out is given.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssm_kernels import ssd_chunk_scan  # noqa: E402
from ssm_kernels.testing import tolerance  # noqa: E402
from tests.helpers import parity_errors  # noqa: E402
from tests.ssd_chunk_scan.test_ssd_chunk_scan import grads_of, make_inputs, random_seq_idx, reference  # noqa: E402

DEV = "cuda"


def parity_cases():
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    # (name, dtype, make_inputs args (batch, L, H, P, G, N), make_inputs kwargs, extra inputs, call kwargs)
    yield "bf16 L1024 H8 P64 N128 T256 (issue-like)", bf16, (2, 1024, 8, 64, 1, 128), {}, {}, \
        dict(chunk_size=256, dt_softplus=True, return_final_states=True)
    yield "fp16 L2047 H8 P64 N64 G2 T256 D(H,P)", f16, (1, 2047, 8, 64, 2, 64), dict(D_shape="HP"), {}, \
        dict(chunk_size=256, dt_softplus=True, dt_limit=(0.0, 0.3), return_final_states=True)
    yield "fp32 L777 H4 P48 N40 G2 T128 seq_idx (exact-dot shapes)", f32, (2, 777, 4, 48, 2, 40), \
        dict(D_shape="HP"), dict(seq_idx=True), dict(chunk_size=128, dt_softplus=True, return_final_states=True)
    yield "bf16 L1500 H4 P24 N40 T64 seq_idx (non-pow2, fp32 dots)", bf16, (2, 1500, 4, 24, 1, 40), {}, \
        dict(seq_idx=True), dict(chunk_size=64, dt_softplus=True, return_final_states=True)
    for dtype in (f32, bf16):
        name = "fp32" if dtype == f32 else "bf16"
        yield f"{name} L3000 H4 P64 N64 T256 cu_seqlens + seq_idx, varlen states", dtype, \
            (1, 3000, 4, 64, 1, 64), {}, dict(cu=[0, 1, 256, 700, 2047, 2048, 3000], seq_idx=True), \
            dict(chunk_size=256, dt_softplus=True, return_final_states=True, return_varlen_states=True)


def run_parity(results):
    ok = True
    for name, dtype, shape, make_kw, extra, kw in parity_cases():
        torch.manual_seed(0)
        inputs = make_inputs(*shape, dtype, DEV, **make_kw)
        if extra.get("seq_idx"):
            inputs["seq_idx"] = random_seq_idx(shape[0], shape[1], DEV)
        if "cu" in extra:
            inputs["cu_seqlens"] = torch.tensor(extra["cu"], dtype=torch.int32, device=DEV)
        t0 = time.time()
        errors = parity_errors(lambda **a: ssd_chunk_scan(**a, backend="triton"), reference, inputs,
                               grads_of(inputs), **kw)
        worst_name, worst = max(errors.items(), key=lambda kv: kv[1] if kv[1] == kv[1] else math.inf)
        passed = all(e == e and e <= tolerance(dtype) for e in errors.values())
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'} {name}: worst {worst_name} {worst:.2e} (tol {tolerance(dtype):.0e}) "
              f"[{time.time() - t0:.1f}s]", flush=True)
        if not passed:
            print("    " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
        results["parity"].append(dict(case=name, dtype=str(dtype), passed=passed, errors=errors))
    return ok


def run_reproducible(results):
    torch.manual_seed(0)
    inputs = make_inputs(1, 2048, 16, 64, 2, 128, torch.bfloat16, DEV, D_shape="HP")
    cu = torch.tensor([0, 100, 1000, 2048], dtype=torch.int32, device=DEV)
    names = grads_of(inputs)
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            leaves = {k: (v.detach().requires_grad_(k in names) if v is not None else None)
                      for k, v in inputs.items()}
            outs = ssd_chunk_scan(**leaves, chunk_size=256, dt_softplus=True, cu_seqlens=cu, return_final_states=True,
                                  return_varlen_states=True, backend="triton")
            gen = torch.Generator(device=DEV).manual_seed(1)
            loss = sum((o.float() * torch.randn(o.shape, generator=gen, device=DEV)).sum() for o in outs)
            runs.append(torch.autograd.grad(loss, [leaves[n] for n in names]))
    finally:
        torch.use_deterministic_algorithms(False)
    same = {n: bool(torch.equal(a, b)) for n, a, b in zip(names, *runs)}
    ok = all(same.values())
    print(f"{'PASS' if ok else 'FAIL'} bitwise reproducible backward (deterministic mode, bf16 cu_seqlens): {same}")
    results["reproducible"] = same
    return ok


def bench_cases():
    yield "x (4, 4096, 64, 64) bf16, B/C (4, 4096, 1, 128), chunk 256", (4, 4096, 64, 64, 1, 128)
    yield "x (8, 2048, 32, 64) bf16, B/C (8, 2048, 1, 64), chunk 256", (8, 2048, 32, 64, 1, 64)


def run_bench(results):
    from triton.testing import do_bench
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as peer
    except Exception as exc:  # noqa: BLE001
        peer = None
        print(f"(mamba_ssm not importable: {type(exc).__name__}: {exc})")
    for name, (batch, length, heads, headdim, groups, dstate) in bench_cases():
        torch.manual_seed(0)
        inputs = make_inputs(batch, length, heads, headdim, groups, dstate, torch.bfloat16, DEV, z=False,
                             init=False)
        leaves = {k: v.detach().requires_grad_() for k, v in inputs.items() if v is not None}
        dout = torch.randn_like(leaves["x"])
        args = [leaves[k] for k in ("x", "dt", "A", "B", "C")]
        kw = dict(D=leaves["D"], dt_bias=leaves["dt_bias"], dt_softplus=True)
        grads = list(leaves.values())
        row = {"case": name}
        impls = [("ours (triton)", lambda: ssd_chunk_scan(*args, 256, **kw, backend="triton"))]
        if peer is not None:
            impls.append(("mamba_ssm", lambda: peer(*args, 256, **kw)))
        for label, fn in impls:
            with torch.no_grad():
                fwd = do_bench(fn, warmup=25, rep=200)

            def fwd_bwd():
                fn().backward(dout)
            both = do_bench(fwd_bwd, warmup=25, rep=200, grad_to_none=grads)
            torch.cuda.synchronize()
            mem = torch.cuda.max_memory_allocated() / 2**30
            print(f"{name} | {label}: forward {fwd:.3f} ms, forward+backward {both:.3f} ms "
                  f"(backward ~{both - fwd:.3f} ms), peak memory so far {mem:.2f} GiB", flush=True)
            row[label] = dict(forward_ms=fwd, forward_backward_ms=both)
        results["bench"].append(row)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import triton
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    results = {"parity": [], "bench": [], "device": torch.cuda.get_device_name(),
               "torch": torch.__version__, "triton": triton.__version__}
    start = time.time()
    ok = True
    if not args.skip_parity:
        ok &= run_parity(results)
        ok &= run_reproducible(results)
    if not args.skip_bench:
        run_bench(results)
    print(f"{'ALL PASS' if ok else 'FAILURES'} in {time.time() - start:.0f}s")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "check_ssd_bwd.json"), "w") as f:
            json.dump(results, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
