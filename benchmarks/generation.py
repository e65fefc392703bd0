"""Generation beside mamba_ssm: a language model's prompt (prefill) and per-token decoding, timed apart.

    python -m benchmarks generate [--quick] [--device cuda|cpu] [--peers] [--case NAME] [--json PATH]

Cases: 24 layers, d_model 1024, vocab 50277 (padded to a multiple of 8), bf16 on a GPU (fp32 on a CPU), random
weights, greedy decoding of NEW_TOKENS after a PROMPT-token prompt; Mamba at batch 1 and 16, Mamba-2 at batch
16, and S5 / S4D language models of the same size. Ours: SSMLanguageModel.generate with
cuda_graph=True on a GPU. mamba_ssm (--peers, SSM_PEERS_DIR): MambaLMHeadModel(...).generate(cg=True); with
--peers the cases without a mamba_ssm counterpart run first (after mamba_ssm's generate, torch's cuDNN Conv1d
in the S4D model crashed the process on the H200: benchmarks/results/h200_generation_prefill.txt).

Times are wall-clock medians of `repeats` synchronised calls after a warm-up (the whole call is what a user
waits for, host time included), ours and mamba_ssm's calls taking turns (a host-bound batch-1 prefill drifts
with the machine's load; measured one variant after the other it differed 2x between runs):
    prefill          generate(max_length = prompt + 1): the prompt's forward and the first token
    total            generate(max_length = prompt + new)
    decode / token   (total - prefill) / (new - 1)
    floor            what one decoding step must move over the copy bandwidth (our model's sizes; on a GPU):
                     every parameter once (a tied embedding counted once: the LM head reads it all, the lookup
                     only B rows) and the recurrent state read and written; "floor %" = floor / decode per token
"""
from __future__ import annotations

import argparse
import functools
from typing import Callable, Dict, List, Optional

import torch

from . import peers
from .core import copy_bandwidth_gbps, wall_seconds_interleaved

LAYERS, D_MODEL, VOCAB = 24, 1024, 50277
PROMPT, NEW_TOKENS = 1024, 128
# name -> (architecture, batch, create_model options, mamba_ssm layer or None)
CASES = {
    "mamba B1": ("mamba", 1, dict(d_state=16), "Mamba1"),
    "mamba B16": ("mamba", 16, dict(d_state=16), "Mamba1"),
    "mamba2 B16": ("mamba2", 16, dict(d_state=128, headdim=64), "Mamba2"),
    "s5 B16": ("s5", 16, dict(d_state=256), None),
    "s4d B16": ("s4d", 16, dict(d_state=64), None),
}


def _timings(generates: Dict[str, Callable[[int], object]], prompt: int, new: int, batch: int,
             device: torch.device, repeats: int) -> Dict[str, Dict[str, float]]:
    """{variant: timings}: the variants' prefills measured in turns, then their whole generations in turns
    (wall_seconds_interleaved: a host-bound batch-1 prefill drifts with the machine's load)."""
    prefill = wall_seconds_interleaved({k: functools.partial(g, prompt + 1) for k, g in generates.items()},
                                       device, repeats)
    total = wall_seconds_interleaved({k: functools.partial(g, prompt + new) for k, g in generates.items()},
                                     device, repeats)
    out = {}
    for k in generates:
        per_token = (total[k] - prefill[k]) / max(1, new - 1)
        out[k] = {"prefill_ms": prefill[k] * 1e3, "total_ms": total[k] * 1e3, "decode_ms_per_token": per_token * 1e3,
                  "tokens_per_s": batch * new / total[k]}
    return out


def decode_step_bytes(model: torch.nn.Module, batch: int) -> int:
    """Bytes a decoding step of `model` at `batch` must move at least: its parameters (shared ones once) and
    its default state read and written."""
    from torch.utils._pytree import tree_flatten
    params = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() yields a tied one once
    state = model.default_state(batch)
    state_bytes = sum(t.numel() * t.element_size() for t in tree_flatten(state)[0] if isinstance(t, torch.Tensor))
    return params + 2 * state_bytes


def our_model(architecture: str, options: dict, layers: int, d_model: int, dtype: torch.dtype,
              device: torch.device):
    """SSMLanguageModel of the benchmark's size, random weights (seed 0), in eval mode."""
    from ssm_universal.models import SSMLanguageModel
    torch.manual_seed(0)
    model = SSMLanguageModel(VOCAB, architecture, d_model=d_model, n_layer=layers, pad_vocab_size_multiple=8,
                             **options)
    return model.to(device=device, dtype=dtype).eval()


def ours(architecture: str, options: dict, layers: int, d_model: int, dtype: torch.dtype, device: torch.device):
    model = our_model(architecture, options, layers, d_model, dtype, device)

    def generate(ids: torch.Tensor, max_length: int):
        return model.generate(ids, max_length=max_length, top_k=1, cuda_graph=device.type == "cuda")
    generate.step_bytes = lambda batch: decode_step_bytes(model, batch)
    return generate


def peer_model(layer: str, options: dict, layers: int, d_model: int, dtype: torch.dtype, device: torch.device):
    """mamba_ssm's MambaLMHeadModel of the same size (eval mode), or None where it does not import."""
    model_class = peers.load("mamba_ssm.models.mixer_seq_simple", "MambaLMHeadModel")
    config_class = peers.load("mamba_ssm.models.config_mamba", "MambaConfig")
    if model_class is None or config_class is None:
        return None
    ssm_cfg = dict(layer=layer, d_state=options["d_state"])
    if layer == "Mamba2":
        ssm_cfg["headdim"] = options["headdim"]
    torch.manual_seed(0)
    config = config_class(d_model=d_model, n_layer=layers, d_intermediate=0, vocab_size=VOCAB, ssm_cfg=ssm_cfg,
                          rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8)
    return model_class(config, device=device, dtype=dtype).eval()


def mamba_ssm_model(layer: str, options: dict, layers: int, d_model: int, dtype: torch.dtype,
                    device: torch.device):
    """peer_model's generate (cg=True on a GPU), or None where mamba_ssm does not import."""
    model = peer_model(layer, options, layers, d_model, dtype, device)
    if model is None:
        return None

    def generate(ids: torch.Tensor, max_length: int):
        return model.generate(input_ids=ids, max_length=max_length, cg=device.type == "cuda", top_k=1)
    return generate


def run(names: List[str], device: torch.device, with_peers: bool, quick: bool) -> List[dict]:
    layers, d_model, prompt, new, repeats = (2, 64, 32, 8, 2) if quick else (LAYERS, D_MODEL, PROMPT, NEW_TOKENS, 3)
    bandwidth = copy_bandwidth_gbps(device)  # GB/s, None off a GPU
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    if with_peers:  # after mamba_ssm's generate has run, torch's cuDNN Conv1d segfaults in the S4D model (H200)
        names = sorted(names, key=lambda name: CASES[name][3] is not None)
    for name in names:
        architecture, batch, options, peer_layer = CASES[name]
        ids = torch.randint(0, VOCAB, (batch, prompt), device=device)
        variants = {"ours": ours(architecture, options, layers, d_model, dtype, device)}
        step_bytes = variants["ours"].step_bytes(batch)
        floor = {"step_bytes": step_bytes, "floor_ms_per_token": step_bytes / bandwidth / 1e6 if bandwidth else None}
        if with_peers and peer_layer is not None:
            try:
                peer = mamba_ssm_model(peer_layer, options, layers, d_model, dtype, device)
            except Exception as error:  # a peer that imports but fails to build: reported, not fatal
                peer, why = None, f"{type(error).__name__}: {error}"
            else:
                why = "does not import here (SSM_PEERS_DIR, its CUDA extension)"
            if peer is None:
                print(f"{name}: mamba_ssm unavailable: {why}", flush=True)
            else:
                variants["mamba_ssm"] = peer
        runnable = {}
        for variant, generate in variants.items():  # one call each first: a variant that fails is reported alone
            try:
                generate(ids, prompt + 1)
            except Exception as error:
                print(f"{name} {variant}: failed: {type(error).__name__}: {error}", flush=True)
            else:
                runnable[variant] = functools.partial(generate, ids)
        try:
            timings = _timings(runnable, prompt, new, batch, device, repeats) if runnable else {}
        except Exception as error:  # reported, not fatal: the later cases still run
            print(f"{name}: failed while timing: {type(error).__name__}: {error}", flush=True)
            timings = {}
        for variant, timing in timings.items():
            rows.append(dict(case=name, variant=variant, batch=batch, prompt=prompt, new_tokens=new,
                             layers=layers, d_model=d_model, dtype=str(dtype).replace("torch.", ""), **timing,
                             **floor))
            print(format_rows(rows[-1:]).splitlines()[-1], flush=True)  # kept if a later case dies
        del variants
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def format_rows(rows: List[dict]) -> str:
    header = (f"{'case':<12} {'variant':<10} {'prefill ms':>10} {'total ms':>9} {'ms/token':>9} {'tok/s':>9} "
              f"{'step MB':>8} {'floor %':>8}")
    lines = [header]
    for r in rows:
        floor = r.get("floor_ms_per_token")
        share = f"{100 * floor / r['decode_ms_per_token']:>7.0f}%" if floor and r["decode_ms_per_token"] > 0 else \
            f"{'-':>8}"
        lines.append(f"{r['case']:<12} {r['variant']:<10} {r['prefill_ms']:>10.1f} {r['total_ms']:>9.1f} "
                     f"{r['decode_ms_per_token']:>9.3f} {r['tokens_per_s']:>9.0f} {r['step_bytes'] / 1e6:>8.0f} "
                     f"{share}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="2 layers, d_model 64, 32 + 8 tokens")
    parser.add_argument("--peers", action="store_true", help="mamba_ssm beside ours (SSM_PEERS_DIR)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the rows and the environment here")
    args = parser.parse_args(argv)
    from .__main__ import report
    device = torch.device(args.device)
    rows = run(args.case or list(CASES), device, args.peers, args.quick)
    report(device, rows, format_rows(rows), args.json)
    return 0
