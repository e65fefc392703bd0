"""The CUDA kernels of one decoding step of the generation benchmark's language models, ours beside mamba_ssm:

    python -m benchmarks step-kernels [--case "mamba B1"] [--peers] [--iters 5] [--prefill]

For each case of `python -m benchmarks generate` (24 layers, d_model 1024, bf16, random weights): one eager
step under torch.profiler (a CUDA graph replays the same kernels), each kernel's calls and device time per
step, largest first. Ours twice: with the step constants computed in the step (an eager step outside
generate) and frozen as generate and GraphedStep run it (ssm_universal.layers._step_constants). mamba_ssm
(--peers): MambaLMHeadModel's step through inference_params (seqlen_offset 1), as its generate calls it.
--prefill: the same for the prompt's forward (PROMPT tokens from the default state: SSMLanguageModel.prefill
with the constants frozen, as in generate; mamba_ssm's forward with inference_params at seqlen_offset 0), with
its wall time per call beside the kernel time (the difference is host time the GPU waits through).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

import torch

from .core import wall_seconds
from .generation import CASES, D_MODEL, LAYERS, PROMPT, VOCAB, our_model, peer_model
from .profile import kernel_times


def print_kernels(label: str, step: Callable[[], object], iters: int, wall: bool = False) -> None:
    times = kernel_times(step, iters)
    total = sum(us for us, _ in times.values())
    calls = sum(n for _, n in times.values())
    timed = f", wall {wall_seconds(step, torch.device('cuda')) * 1e6:.1f} us per call" if wall else ""
    print(f"\n== {label}: {calls:.0f} kernels, {total:.1f} us of kernel time per call{timed}")
    for name, (us, n) in sorted(times.items(), key=lambda kv: -kv[1][0]):
        print(f"  {n:6.0f} x {us / n:7.2f} us  {us:8.1f} us  {name[:110]}")
    sys.stdout.flush()


def peer_call(model, dtype: torch.dtype, ids: torch.Tensor, offset: int) -> Optional[Callable[[], object]]:
    """mamba_ssm's forward of `model` over ids (B, L) through its inference cache at position `offset` (1: a
    decoding step, as its generate calls it; 0: the prompt), or None without mamba_ssm."""
    from . import peers
    params_class = peers.load("mamba_ssm.utils.generation", "InferenceParams")
    if params_class is None:
        return None
    batch = ids.shape[0]
    params = params_class(max_seqlen=2048, max_batch_size=batch)
    params.key_value_memory_dict = model.allocate_inference_cache(batch, 2048, dtype=dtype)
    params.seqlen_offset = offset
    return lambda: model(ids, inference_params=params, num_last_tokens=1)


def profile_case(name: str, with_peers: bool, iters: int, prefill: bool) -> None:
    from ssm_universal.layers._step_constants import FrozenStepConstants
    device, dtype = torch.device("cuda"), torch.bfloat16
    architecture, batch, options, peer_layer = CASES[name]
    ids = torch.randint(0, VOCAB, (batch, PROMPT if prefill else 1), device=device)
    model = our_model(architecture, options, LAYERS, D_MODEL, dtype, device)
    state = model.default_state(batch, device=device)
    with torch.no_grad():
        if prefill:  # with the constants frozen, as generate runs it
            with FrozenStepConstants(model):
                print_kernels(f"{name} ours, prefill of {PROMPT} tokens", lambda: model.prefill(ids, state), iters,
                              wall=True)
        else:
            print_kernels(f"{name} ours, constants per step", lambda: model.step(ids[:, 0], state), iters)
            with FrozenStepConstants(model):
                print_kernels(f"{name} ours, constants frozen (generate)", lambda: model.step(ids[:, 0], state),
                              iters)
        if with_peers and peer_layer is not None:
            peer = peer_model(peer_layer, options, LAYERS, D_MODEL, dtype, device)
            call = None if peer is None else peer_call(peer, dtype, ids, 0 if prefill else 1)
            if call is None:
                print(f"\n== {name} mamba_ssm: unavailable (SSM_PEERS_DIR, its CUDA extension)")
            else:
                print_kernels(f"{name} mamba_ssm{', prefill' if prefill else ''}", call, iters, wall=prefill)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks step-kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument("--peers", action="store_true", help="mamba_ssm beside ours (SSM_PEERS_DIR)")
    parser.add_argument("--iters", type=int, default=5, help="calls profiled after the warm-up")
    parser.add_argument("--prefill", action="store_true", help="the prompt's forward instead of a step")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("step-kernels profiles CUDA kernels: it needs a CUDA GPU")
    for name in args.case or list(CASES):
        profile_case(name, args.peers, args.iters, args.prefill)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
