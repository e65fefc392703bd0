"""transformers' Mamba, Mamba2 and FalconMamba models, their own forward beside ssm_universal's patch():

    python -m benchmarks transformers [--quick] [--device cuda|cpu] [--model mamba|mamba2|falcon_mamba]
                                      [--json PATH]

Each model: random weights, hidden 768 and 12 layers (--quick: 4 layers of 256), in bf16 on a GPU and fp32 on a
CPU. Timed for each (wall-clock medians of whole synchronised calls: transformers' own path takes seconds per
call, too long for many repeats): the forward of (batch, length) tokens without grad, forward + backward of the
language-model loss (every parameter's gradient), and greedy generate of NEW_TOKENS after a PROMPT-token prompt. "unpatched" is what transformers runs without mamba_ssm / causal-conv1d installed (its
pure-PyTorch path): run this without SSM_PEERS_DIR on sys.path, or transformers would take mamba_ssm's kernels.
"""
from __future__ import annotations

import argparse
import json
from typing import Dict

import torch

from .core import wall_seconds

MODELS = ("mamba", "mamba2", "falcon_mamba")


def _config(kind: str, quick: bool):
    import transformers
    size = dict(vocab_size=50280, hidden_size=256 if quick else 768, num_hidden_layers=4 if quick else 12,
                pad_token_id=0, bos_token_id=0, eos_token_id=0)
    if kind == "mamba":
        return transformers.MambaConfig(state_size=16, **size), transformers.MambaForCausalLM
    if kind == "falcon_mamba":
        return transformers.FalconMambaConfig(state_size=16, mixer_rms_eps=1e-6, **size), \
            transformers.FalconMambaForCausalLM
    heads = 2 * size["hidden_size"] // 64
    return (transformers.Mamba2Config(state_size=128, num_heads=heads, head_dim=64, n_groups=1, chunk_size=256,
                                      expand=2, **size), transformers.Mamba2ForCausalLM)


def measure(kind: str, device: torch.device, quick: bool, batch: int, length: int, prompt: int,
            new_tokens: int) -> Dict[str, Dict[str, float]]:
    import ssm_universal.integrations.transformers as hf_patch
    config, cls = _config(kind, quick)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = cls(config).to(device=device, dtype=dtype)
    ids = torch.randint(3, config.vocab_size, (batch, length), device=device)
    prompt_ids = ids[:, :prompt]

    def forward():
        with torch.no_grad():
            return model(ids).logits

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()

    def generate():
        return model.generate(prompt_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    results = {}
    for label in ("unpatched", "patched"):
        if label == "patched":
            hf_patch.patch(model)
        model.eval()
        fwd = 1e3 * wall_seconds(forward, device)
        model.train()
        both = 1e3 * wall_seconds(forward_backward, device)
        model.eval()
        gen = 1e3 * wall_seconds(generate, device)
        results[label] = {"forward_ms": fwd, "forward_backward_ms": both, "generate_ms": gen}
    hf_patch.unpatch(model)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks transformers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", action="append", choices=MODELS, help="default: all")
    parser.add_argument("--json", help="write the results and environment here")
    args = parser.parse_args(argv)
    import transformers
    device = torch.device(args.device)
    batch, length, prompt, new_tokens = (2, 256, 32, 8) if args.quick else (4, 1024, 256, 64)
    print(f"transformers {transformers.__version__}, {device}, batch {batch}, length {length}, "
          f"generate {prompt} + {new_tokens} tokens")
    print(f"{'model':14s} {'variant':10s} {'fwd ms':>10s} {'fwd+bwd ms':>11s} {'generate ms':>12s}")
    table = {}
    for kind in args.model or MODELS:
        table[kind] = measure(kind, device, args.quick, batch, length, prompt, new_tokens)
        for label, row in table[kind].items():
            print(f"{kind:14s} {label:10s} {row['forward_ms']:10.2f} {row['forward_backward_ms']:11.2f} "
                  f"{row['generate_ms']:12.1f}")
        ratio = {k: table[kind]["unpatched"][k] / table[kind]["patched"][k] for k in table[kind]["patched"]}
        print(f"{kind:14s} {'speed-up':10s} {ratio['forward_ms']:9.2f}x {ratio['forward_backward_ms']:10.2f}x "
              f"{ratio['generate_ms']:11.2f}x")
    if args.json:
        from .__main__ import environment
        with open(args.json, "w") as f:
            json.dump({"environment": {**environment(device), "transformers": transformers.__version__},
                       "batch": batch, "length": length, "prompt": prompt, "new_tokens": new_tokens,
                       "results": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
