"""A whole Mamba / Mamba2 block trained on a GPU, ours beside mamba_ssm's, in one process:

    python -m benchmarks block [--layer mamba|mamba2] [--peers] [--dtype bfloat16|float32] [--profile]
                               [--quick] [--device cuda|cpu] [--json PATH]

Ours: ssm_universal.layers.Mamba / Mamba2 with its backends chosen by dispatch. mamba_ssm (--peers,
SSM_PEERS_DIR): its Mamba (the mamba_inner_fn path) / Mamba2 (mamba_split_conv1d_scan_combined) built with the
same options and loaded with our state_dict, so both compute one function: "rel diff" is max |ours - peer| /
max |peer| of the output and of the input's gradient (the peer row shows them).
Sizes: d_model 2048, batch 4, length 4096 (Mamba: d_state 16; Mamba2: headdim 64, d_state 128), the modules
in --dtype (default bf16 on a GPU, fp32 on a CPU); --quick: d_model 64, batch 2, length 128.
Timed: the forward without autograd and forward+backward (the input and every parameter), do_bench medians on
a GPU; "peak MB" is what forward+backward allocates beyond what is live before it; "kept MB" what the forward
leaves allocated for its backward (output included: what each layer of a deep model holds at once). "ours:keep"
is our block with recompute_in_backward=False (the activations it recomputes in the backward on a GPU kept
instead); on a CPU, where the default keeps them, "ours:recompute" is the block with it True.
--profile adds each variant's kernels per call (torch.profiler, GPU only), the GPU's idle time between them (and
the largest gaps), then torch's own copies, reductions and elementwise kernels by the aten op (and its input
shapes) that launched them.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional

import torch

from . import peers
from .core import Variant, forward_backward, kept_memory_mb, peak_memory_mb, time_ms

# layer -> (our class in ssm_universal.layers, options, mamba_ssm module, class)
LAYERS = {
    "mamba": ("Mamba", dict(d_state=16), "mamba_ssm.modules.mamba_simple", "Mamba"),
    "mamba2": ("Mamba2", dict(d_state=128, headdim=64), "mamba_ssm.modules.mamba2", "Mamba2"),
}
D_MODEL, BATCH, LENGTH = 2048, 4, 4096


def blocks(layer: str, d_model: int, dtype: torch.dtype, device: torch.device, with_peers: bool,
           quick: bool) -> Dict[str, torch.nn.Module]:
    """{"ours": our block (seed 0), "peer:mamba_ssm": mamba_ssm's loaded with its state_dict (with_peers and
    where it imports)}."""
    import ssm_universal.layers as our_layers
    ours_name, options, peer_module, peer_name = LAYERS[layer]
    if quick and layer == "mamba2":
        options = dict(options, headdim=16, d_state=32)
    torch.manual_seed(0)
    found = {"ours": getattr(our_layers, ours_name)(d_model, **options).to(device=device, dtype=dtype)}
    peer_class = peers.load(peer_module, peer_name) if with_peers else None
    if peer_class is not None:
        peer = peer_class(d_model, **options).to(device=device, dtype=dtype)
        try:
            peer.load_state_dict(found["ours"].state_dict())
        except RuntimeError as error:  # reported, not fatal: our block is still timed
            print(f"mamba_ssm's {peer_name} does not take our state_dict: {error}", flush=True)
        else:
            found["peer:mamba_ssm"] = peer
    elif with_peers:
        print(f"mamba_ssm's {peer_name} does not import here (SSM_PEERS_DIR, its CUDA extension)", flush=True)
    return found


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def timed_variants(modules: Dict[str, torch.nn.Module], device: torch.device):
    """(label, module, recompute_in_backward to set or None) to time: every module as built, and ours once more
    with the other setting of its recompute_in_backward: "ours:keep" keeping the activations it recomputes in
    the backward by default on a GPU, "ours:recompute" recomputing them where the default keeps them (CPU)."""
    for label, module in modules.items():
        yield label, module, None
        if label == "ours" and hasattr(module, "recompute_in_backward"):
            if device.type == "cuda":
                yield "ours:keep", module, False
            else:
                yield "ours:recompute", module, True


# torch's own kernels in a block's step (what the block's ops should not need): copies, reductions, elementwise
LIBRARY_KERNELS = r"Memcpy|Memset|reduce_kernel|elementwise_kernel"


def print_kernels(label: str, fn, iters: int = 5) -> None:
    from .profile import kernel_gaps, kernel_sources, kernel_times
    times = kernel_times(fn, iters)
    total = sum(us for us, _ in times.values())
    print(f"\n== {label}: {sum(n for _, n in times.values()):.0f} kernels, {total:.1f} us of kernel time per call")
    for name, (us, n) in sorted(times.items(), key=lambda kv: -kv[1][0])[:16]:
        print(f"  {n:6.0f} x {us / n:8.2f} us  {us:9.1f} us  {name[:100]}")
    idle, gaps = kernel_gaps(fn, iters)
    print(f"  GPU idle between kernels: {idle:.1f} us per call; largest gaps (per call, kernel before -> after):")
    for us, before, after in gaps:
        print(f"  {us:9.1f} us  {before[:50]} -> {after[:50]}")
    sources = kernel_sources(fn, iters, LIBRARY_KERNELS)
    if sources:
        print("  torch's copies, reductions and elementwise kernels by the op that launched them:")
        for (op, shapes, name), (us, n) in sorted(sources.items(), key=lambda kv: -kv[1][0])[:12]:
            print(f"  {n:6.0f} x {us / n:8.2f} us  {us:9.1f} us  {op} {shapes[:60]}  {name[:40]}")
    sys.stdout.flush()


def run(layer: str, device: torch.device, dtype: torch.dtype, with_peers: bool, quick: bool,
        profile: bool) -> List[dict]:
    d_model, batch, length = (64, 2, 128) if quick else (D_MODEL, BATCH, LENGTH)
    modules = blocks(layer, d_model, dtype, device, with_peers, quick)
    torch.manual_seed(1)
    x = torch.randn(batch, length, d_model, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn_like(x)
    outputs = {}
    for label, module in modules.items():
        y = module(x)
        (dx,) = torch.autograd.grad(y, x, dy)
        outputs[label] = (y.detach(), dx)
    case = f"{layer} d_model {d_model} B{batch} L{length} {str(dtype).replace('torch.', '')}"
    rows = []
    for label, module, recompute in timed_variants(modules, device):
        if recompute is not None:
            module.recompute_in_backward = recompute
        variant = Variant(lambda module=module: module(x), [x, *module.parameters()])
        with torch.no_grad():
            fwd = time_ms(variant.fn, device, quick)
        train = forward_backward(variant)
        fwd_bwd = time_ms(train, device, quick)
        row = dict(case=case, layer=layer, variant=label, fwd_ms=fwd, fwd_bwd_ms=fwd_bwd,
                   peak_mb=peak_memory_mb(train, device), kept_mb=kept_memory_mb(variant.fn, device))
        if recompute is not None:
            del module.recompute_in_backward  # back to the class default
        if label.startswith("peer"):
            row["rel_diff_out"] = relative_difference(outputs["ours"][0], outputs[label][0])
            row["rel_diff_dx"] = relative_difference(outputs["ours"][1], outputs[label][1])
        rows.append(row)
        print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
        if profile and device.type == "cuda":
            with torch.no_grad():
                print_kernels(f"{case} {label} forward", variant.fn)
            print_kernels(f"{case} {label} forward+backward", train)
    return rows


def format_rows(rows: List[dict]) -> str:
    lines = [f"{'case':<34} {'variant':<15} {'fwd ms':>8} {'fwd+bwd ms':>10} {'peak MB':>8} {'kept MB':>8} "
             f"{'rel diff out / dx':>18}"]
    for r in rows:
        diff = f"{r['rel_diff_out']:.1e} / {r['rel_diff_dx']:.1e}" if "rel_diff_out" in r else ""
        peak = f"{r['peak_mb']:8.0f}" if r["peak_mb"] is not None else f"{'-':>8}"
        kept = f"{r['kept_mb']:8.1f}" if r.get("kept_mb") is not None else f"{'-':>8}"
        lines.append(f"{r['case']:<34} {r['variant']:<15} {r['fwd_ms']:8.3f} {r['fwd_bwd_ms']:10.3f} {peak} {kept} "
                     f"{diff:>18}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks block", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", action="append", choices=sorted(LAYERS), help="layers to run (default: all)")
    parser.add_argument("--peers", action="store_true", help="mamba_ssm beside ours (SSM_PEERS_DIR)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 on a GPU, else float32")
    parser.add_argument("--profile", action="store_true", help="each variant's kernels (GPU)")
    parser.add_argument("--quick", action="store_true", help="d_model 64, batch 2, length 128")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the rows and the environment here")
    args = parser.parse_args(argv)
    from .__main__ import report
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    rows = []
    for layer in args.layer or sorted(LAYERS):
        rows += run(layer, device, dtype, args.peers, args.quick, args.profile)
    report(device, rows, format_rows(rows), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
