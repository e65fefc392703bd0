"""Native GPU parity of every GPU backend against the sequential fp32 reference.

    python scripts/gpu_parity.py [--out DIR] [--ops op,op] [--quick]

For each op, backend (triton, cuda) and dtype (fp32, fp16, bf16): forward, every gradient and the states,
on fresh random inputs built by the op's test module (tests/<op>/test_<op>.py: make_inputs, reference), at
lengths around block and chunk edges (EDGE_LENGTHS: 1, 2, 63, 64, 65, 4095; SSD crossed with chunk sizes 1, 16,
64 and 256), alternately with non-contiguous inputs, plus 2047, 4096 and 65536 (the longest with a narrow channel
count so the sequential reference stays affordable), packed sequences and states. Prints the worst norm-relative
error per (op, backend, dtype) with the case and tensor it came from, PASS/FAIL against
ssm_kernels.testing.tolerance, and bitwise reproducibility of the backward; writes everything to DIR/parity.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssm_kernels import (_dispatch, causal_conv1d, causal_conv1d_update, gated_rmsnorm,  # noqa: E402
                         selective_scan, selective_state_update, ssd_chunk_scan)
from ssm_kernels.testing import tolerance  # noqa: E402
from tests.helpers import parity_errors  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# lengths at block and chunk edges (the SSD cases cross them with chunk sizes); odd cases use non-contiguous inputs
EDGE_LENGTHS = (1, 2, 63, 64, 65, 4095)
QUICK_EDGE_LENGTHS = (1, 2, 65)
BACKEND_OF_UPDATES = ["triton"]
DEV = os.environ.get("PARITY_DEVICE", "cuda")


def selective_scan_cases(quick):
    from tests.selective_scan.test_selective_scan import ALL_GRADS, make_inputs
    lengths = (1, 63, 2047) if quick else (1, 63, 2047, 4096)
    for dtype in DTYPES:
        for length in lengths:
            yield (f"L{length} D32 N16 variable", dtype, make_inputs(2, 32, length, 16, dtype, DEV), ALL_GRADS,
                   dict(delta_softplus=True, return_final_state=True))
        for i, length in enumerate(QUICK_EDGE_LENGTHS if quick else EDGE_LENGTHS):
            layout = "transposed" if i % 2 else "contiguous"
            yield (f"L{length} D24 N16 variable {layout}", dtype,
                   make_inputs(2, 24, length, 16, dtype, DEV, transposed=i % 2 == 1), ALL_GRADS,
                   dict(delta_softplus=True, return_final_state=True))
        yield ("L2047 D32 N16 grouped G2", dtype, make_inputs(2, 32, 2047, 16, dtype, DEV, bc="grouped"),
               ALL_GRADS, dict(delta_softplus=True, return_final_state=True))
        yield ("L2047 D16 N64 fixed", dtype, make_inputs(2, 16, 2047, 64, dtype, DEV, bc="fixed"), ALL_GRADS,
               dict(delta_softplus=True, return_final_state=True))
        yield ("L1025 D16 N16 complex A interleaved B/C", dtype,
               make_inputs(2, 16, 1025, 16, dtype, DEV, complex_A=True, interleaved=True), ALL_GRADS,
               dict(delta_softplus=True, return_final_state=True, _complex=True))
        yield ("L4096 D16 N256 variable", dtype, make_inputs(1, 16, 4096, 256, dtype, DEV), ALL_GRADS,
               dict(delta_softplus=True, return_final_state=True))
        if not quick:
            if dtype != torch.float16:  # the sequential reference takes ~a minute at this length
                yield ("L65536 D4 N16 variable", dtype, make_inputs(1, 4, 65536, 16, dtype, DEV), ALL_GRADS,
                       dict(delta_softplus=True, return_final_state=True))
    cu = torch.tensor([0, 1, 700, 700, 2047], device=DEV, dtype=torch.int32)
    inputs = make_inputs(1, 16, 2047, 16, torch.float32, DEV)
    inputs["initial_state"] = torch.randn(4, 16, 16, device=DEV)
    yield ("L2047 cu_seqlens (4 sequences, one empty)", torch.float32, inputs, ALL_GRADS,
           dict(delta_softplus=True, return_final_state=True, cu_seqlens=cu))


def _run_selective_scan(backend, kwargs):
    from tests.selective_scan.test_selective_scan import real_outputs, reference
    fn = lambda **kw: selective_scan(**kw, backend=backend)  # noqa: E731
    return (real_outputs(fn), real_outputs(reference)) if kwargs.pop("_complex", False) else (fn, reference)


def causal_conv1d_cases(quick):
    from tests.causal_conv1d.test_causal_conv1d import make_inputs
    lengths = (1, 63, 2047, 4096) if quick else (1, 63, 2047, 4096, 65536)
    for dtype in DTYPES:
        for length in lengths:
            dim = 64 if length < 65536 else 16
            yield (f"L{length} D{dim} W4 silu states", dtype, make_inputs(2, dim, length, 4, dtype, DEV, init=True),
                   ["x", "weight", "bias", "initial_states"], dict(activation="silu", return_final_states=True))
        for i, length in enumerate(QUICK_EDGE_LENGTHS if quick else EDGE_LENGTHS):
            layout = "channel-last" if i % 2 else "channel-first"
            yield (f"L{length} D40 W4 silu states {layout}", dtype,
                   make_inputs(2, 40, length, 4, dtype, DEV, init=True, transposed=i % 2 == 1),
                   ["x", "weight", "bias", "initial_states"], dict(activation="silu", return_final_states=True))
        yield ("L2047 D48 W3 seq_idx channel-last", dtype,
               make_inputs(2, 48, 2047, 3, dtype, DEV, seq=True, transposed=True), ["x", "weight", "bias"],
               dict(activation="silu"))
        yield ("L1000 D40 W8 no act", dtype, make_inputs(2, 40, 1000, 8, dtype, DEV, init=True),
               ["x", "weight", "bias", "initial_states"], dict(activation=None, return_final_states=True))


def _run_causal_conv1d(backend, kwargs):
    from tests.causal_conv1d.test_causal_conv1d import reference
    return (lambda **kw: causal_conv1d(**kw, backend=backend)), reference


def gated_rmsnorm_cases(quick):
    from tests.gated_rmsnorm.test_gated_rmsnorm import make_inputs
    for dtype in DTYPES:
        for group, before in ((None, True), (64, False), (512, True)):
            yield (f"(4, 2047, 1024) group {group} norm_before_gate={before}", dtype,
                   make_inputs((4, 2047, 1024), dtype, DEV), ["x", "weight", "z"],
                   dict(eps=1e-5, group_size=group, norm_before_gate=before))


def _run_gated_rmsnorm(backend, kwargs):
    from ssm_kernels.gated_rmsnorm.reference import gated_rmsnorm_ref
    return (lambda **kw: gated_rmsnorm(**kw, backend=backend)), gated_rmsnorm_ref


def ssd_chunk_scan_cases(quick):
    from tests.ssd_chunk_scan.test_ssd_chunk_scan import grads_of, make_inputs, random_seq_idx
    lengths = (1, 63, 2047) if quick else (1, 63, 2047, 4096)
    for dtype in DTYPES:
        for length in lengths:
            inputs = make_inputs(2, length, 4, 64, 2, 128, dtype, DEV)
            yield (f"L{length} H4 P64 N128 G2 chunk256", dtype, inputs, grads_of(inputs),
                   dict(chunk_size=256, dt_softplus=True, return_final_states=True))
        inputs = make_inputs(2, 1000, 4, 24, 1, 40, dtype, DEV, D_shape="HP")
        inputs["seq_idx"] = random_seq_idx(2, 1000, DEV)
        yield ("L1000 P24 N40 D(H,P) seq_idx dt_limit chunk64", dtype, inputs, grads_of(inputs),
               dict(chunk_size=64, dt_softplus=True, dt_limit=(0.01, 0.2), return_final_states=True))
    # every chunk size the GPU must compile (1 to 256) at the lengths around chunk edges, alternating
    # contiguous / non-contiguous inputs and plain / packed (cu_seqlens, varlen states) sequences
    lengths = QUICK_EDGE_LENGTHS if quick else EDGE_LENGTHS
    for dtype in DTYPES:
        for i, (length, chunk) in enumerate((l, c) for l in lengths for c in (1, 16, 64, 256)):
            packed = i % 2 == 1 and length > 2
            inputs = make_inputs(1 if packed else 2, length, 4, 16, 2, 16, dtype, DEV, transposed=i % 2 == 0)
            kwargs = dict(chunk_size=chunk, dt_softplus=True, return_final_states=True)
            if packed:
                kwargs.update(cu_seqlens=torch.tensor([0, 1, length // 2, length], device=DEV),
                              return_varlen_states=True)
            layout = "transposed" if i % 2 == 0 else "contiguous"
            yield (f"L{length} chunk{chunk} H4 P16 N16 {layout}{' varlen' if packed else ''}", dtype, inputs,
                   grads_of(inputs), kwargs)
        if not quick:
            inputs = make_inputs(1, 65536, 2, 16, 1, 16, dtype, DEV)
            yield ("L65536 chunk256 H2 P16 N16", dtype, inputs, grads_of(inputs),
                   dict(chunk_size=256, dt_softplus=True, return_final_states=True))
    inputs = make_inputs(1, 2047, 4, 32, 2, 64, torch.float32, DEV)
    inputs["initial_states"] = None
    yield ("L2047 cu_seqlens varlen states", torch.float32, inputs, grads_of(inputs),
           dict(chunk_size=128, dt_softplus=True, cu_seqlens=torch.tensor([0, 5, 900, 2047], device=DEV),
                return_varlen_states=True))


def _run_ssd_chunk_scan(backend, kwargs):
    from tests.ssd_chunk_scan.test_ssd_chunk_scan import reference
    return (lambda **kw: ssd_chunk_scan(**kw, backend=backend)), reference


def update_cases(quick):
    """The two decoding steps (forward only, in place), checked on a copy of the state as well."""
    from tests.causal_conv1d_update.test_causal_conv1d_update import make_inputs as conv_inputs
    for dtype in DTYPES:
        yield ("causal_conv1d_update B4 D256 T1 W4", dtype, ("conv", conv_inputs(4, 256, 1, 4, 3, dtype, DEV)))
        yield ("causal_conv1d_update B4 D256 T5 W4 S7", dtype, ("conv", conv_inputs(4, 256, 5, 4, 7, dtype, DEV)))
        for form, shape in (("mamba1", (3, 512, None, 16)), ("mamba2", (3, 8, 64, 128))):
            yield (f"selective_state_update {form} {shape}", dtype, ("ssu", _ssu_inputs(dtype, *shape)))


def _ssu_inputs(dtype, batch, channels, headdim, dstate):
    lead = (batch, channels) if headdim is None else (batch, channels, headdim)
    per = lead[1:]
    A = -torch.rand(*per, dstate, device=DEV)
    groups = 2 if headdim is not None else 1
    bc = (batch, dstate) if headdim is None else (batch, groups, dstate)
    return dict(state=torch.randn(*lead, dstate, device=DEV), x=torch.randn(*lead, device=DEV).to(dtype),
                dt=torch.randn(*lead, device=DEV).to(dtype), A=A, B=torch.randn(*bc, device=DEV).to(dtype),
                C=torch.randn(*bc, device=DEV).to(dtype), D=torch.randn(*per, device=DEV),
                z=torch.randn(*lead, device=DEV).to(dtype), dt_bias=torch.randn(*per, device=DEV))


OPS = {
    "selective_scan": (selective_scan_cases, _run_selective_scan),
    "causal_conv1d": (causal_conv1d_cases, _run_causal_conv1d),
    "gated_rmsnorm": (gated_rmsnorm_cases, _run_gated_rmsnorm),
    "ssd_chunk_scan": (ssd_chunk_scan_cases, _run_ssd_chunk_scan),
}


def gpu_backends(op):
    """The op's implemented backends that run on a GPU (the registry's, less torch and the CPU-only cpp)."""
    return tuple(b for b in _dispatch.implemented_backends(op) if b not in ("torch", "cpp"))


def run_update_cases(quick, results):
    from ssm_kernels.causal_conv1d_update.reference import causal_conv1d_update_ref
    from ssm_kernels.selective_state_update.reference import selective_state_update_ref
    from ssm_kernels.testing import relative_error
    for name, dtype, (kind, inputs) in update_cases(quick):
        upcast = {k: (v.float() if isinstance(v, torch.Tensor) and v.dtype in (torch.float16, torch.bfloat16)
                      else v) for k, v in inputs.items()}
        if kind == "conv":
            ref_state = upcast["conv_state"].clone()
            ref = causal_conv1d_update_ref(upcast["x"], ref_state, upcast["weight"], upcast["bias"], "silu")
            state = inputs["conv_state"].clone()
            out = causal_conv1d_update(inputs["x"], state, inputs["weight"], inputs["bias"], "silu",
                                       backend=BACKEND_OF_UPDATES[0])
            op = "causal_conv1d_update"
        else:
            ref_state = upcast["state"].clone()
            ref_args = {k: v for k, v in upcast.items() if k != "state"}
            if ref_state.dim() == 3:  # the Mamba-1 form is the reference's canonical form with P = 1, G = 1
                ref_args = {k: (v.unsqueeze(1) if k in ("B", "C") else v.unsqueeze(-2) if k == "A" else
                                v.unsqueeze(-1)) for k, v in ref_args.items()}
                ref = selective_state_update_ref(ref_state.unsqueeze(2), **ref_args, dt_softplus=True).squeeze(-1)
            else:
                ref = selective_state_update_ref(ref_state, **ref_args, dt_softplus=True)
            state = inputs["state"].clone()
            out = selective_state_update(state, **{k: v for k, v in inputs.items() if k != "state"},
                                         dt_softplus=True, backend=BACKEND_OF_UPDATES[0])
            op = "selective_state_update"
        errors = {"out0": relative_error(out, ref), "state": relative_error(state, ref_state)}
        record(results, op, BACKEND_OF_UPDATES[0], dtype, name, errors)


def record(results, op, backend, dtype, case, errors, seconds=0.0, error=None):
    results.append(dict(op=op, backend=backend, dtype=str(dtype).replace("torch.", ""), case=case,
                        errors=errors, seconds=round(seconds, 2), error=error, bound=tolerance(dtype)))


def reproducible_backward(op, backend, run, case_inputs, grads, kwargs):
    """Two backward passes on the same inputs and cotangent give bitwise equal gradients."""
    outs = []
    for _ in range(2):
        leaves = {k: (v.detach().requires_grad_(k in grads) if isinstance(v, torch.Tensor) and
                      (v.is_floating_point() or v.is_complex()) else v) for k, v in case_inputs.items()}
        y = run(**leaves, **kwargs)
        y = y[0] if isinstance(y, tuple) else y
        torch.manual_seed(7)
        g = torch.randn_like(y)
        outs.append(torch.autograd.grad(y, [leaves[n] for n in grads], g, allow_unused=True))
    return all(a is None and b is None or torch.equal(a, b) for a, b in zip(*outs))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--ops", default=",".join(list(OPS) + ["updates"]))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--match", help="only cases whose name contains one of these comma-separated strings")
    parser.add_argument("--backends", help="override the backends checked (e.g. torch, to try the script on a CPU)")
    parser.add_argument("--dtypes", help="only these comma-separated dtypes (float32,float16,bfloat16)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results, repro = [], {}
    for op in args.ops.split(","):
        if op == "updates":
            BACKEND_OF_UPDATES[0] = args.backends.split(",")[0] if args.backends else "triton"
            run_update_cases(args.quick, results)
            continue
        make_cases, make_run = OPS[op]
        backends = args.backends.split(",") if args.backends else gpu_backends(op)
        for backend in backends:
            first = True
            for case, dtype, inputs, grads, kwargs in make_cases(args.quick):
                if args.match and not any(m in case for m in args.match.split(",")):
                    continue
                if args.dtypes and str(dtype)[6:] not in args.dtypes.split(","):
                    continue
                kwargs = dict(kwargs)
                start = time.perf_counter()
                try:
                    torch.manual_seed(0)
                    run, ref = make_run(backend, kwargs)
                    grads = [g for g in grads if inputs.get(g) is not None]
                    errors = parity_errors(run, ref, inputs, grads, **kwargs)
                    if first and dtype == torch.float32:
                        repro[f"{op} {backend} {case}"] = reproducible_backward(op, backend, run, inputs, grads,
                                                                               kwargs)
                        first = False
                    record(results, op, backend, dtype, case, errors, time.perf_counter() - start)
                except Exception as exc:  # report and go on: one broken case must not hide the others
                    record(results, op, backend, dtype, case, {}, time.perf_counter() - start,
                           f"{type(exc).__name__}: {str(exc)[:300]}")
                    traceback.print_exc()
                print(f"{op:22s} {backend:6s} {str(dtype)[6:]:9s} {case:45s} "
                      f"{max(results[-1]['errors'].values(), default=float('nan')):.2e} "
                      f"{results[-1]['seconds']:.1f}s {results[-1]['error'] or ''}", flush=True)
        save(args.out, results, repro)  # after every op: a run cut short keeps what it measured
    save(args.out, results, repro)
    summarize(results, repro)


def save(out, results, repro):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "parity.json"), "w") as f:
        json.dump({"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if DEV == "cuda" else DEV,
                   "results": results, "reproducible_backward": repro}, f, indent=1)


def summarize(results, repro):
    print("\n================ worst relative error per op / backend / dtype (bound in brackets)")
    groups = {}
    for r in results:
        groups.setdefault((r["op"], r["backend"], r["dtype"]), []).append(r)
    failures = 0
    for (op, backend, dtype), rows in groups.items():
        worst, where = -1.0, ""
        broken = [r for r in rows if r["error"]]
        for r in rows:
            for tensor, err in r["errors"].items():
                err = math.inf if err != err else err
                if err > worst:
                    worst, where = err, f"{r['case']}: {tensor}"
        ok = not broken and worst <= rows[0]["bound"]
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} {op:22s} {backend:6s} {dtype:9s} {worst:.2e} [{rows[0]['bound']:.0e}] "
              f"({len(rows)} cases) worst at {where}" + (f"; {len(broken)} raised: {broken[0]['error']}"
                                                          if broken else ""))
    for name, same in repro.items():
        print(f"{'PASS' if same else 'FAIL'} bitwise reproducible backward: {name}")
        failures += not same
    print(f"{failures} failing groups")


if __name__ == "__main__":
    main()
