"""A character-level language model on real text that ships with Python: the standard library's own sources.

    python examples/char_lm.py --arch mamba            # full configuration (a GPU: a few minutes)
    python examples/char_lm.py --arch s5 --quick       # small: under 2 minutes on a 2-core CPU

Bytes of the stdlib's .py files (sorted, concatenated; the last 10% held out for validation) train an
SSMLanguageModel of any create_model architecture (--arch) to predict the next byte. Reported in bits per
character; at the end the model continues a prompt with generate, is saved (safetensors), reloaded and checked
to give the same logits. Writes curves.png and results.md into the folder it prints.
"""
from __future__ import annotations

import argparse
import math
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ssm_universal as su

from _report import plot_curves, progress, results_dir, seed_everything, write_table

CONFIGS = {  # quick: a 2-core CPU in under 2 minutes; full: a GPU
    "quick": dict(corpus_bytes=300_000, d_model=64, n_layer=2, length=128, batch=16, steps=120, eval_every=40,
                  lr=3e-3),
    "full": dict(corpus_bytes=20_000_000, d_model=384, n_layer=6, length=512, batch=32, steps=4000, eval_every=250,
                 lr=1e-3),
}


def stdlib_bytes(limit: int) -> torch.Tensor:
    """The first `limit` bytes of the sorted standard-library sources, as a (limit,) uint8 tensor."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        data = path.read_bytes()
        chunks.append(data)
        size += len(data)
        if size >= limit:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:limit]), dtype=torch.uint8)


def batch_of(data: torch.Tensor, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - length - 1, (batch,), generator=gen)
    return torch.stack([data[s:s + length + 1] for s in starts.tolist()]).long()


@torch.no_grad()
def bits_per_char(model, data: torch.Tensor, length: int, device, windows: int = 32) -> float:
    """Mean next-byte cross-entropy in bits over evenly spaced validation windows."""
    model.eval()
    starts = torch.linspace(0, len(data) - length - 2, windows).long().tolist()
    tokens = torch.stack([data[s:s + length + 1] for s in starts]).long().to(device)
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    model.train()
    return loss.item() / math.log(2)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="mamba", choices=sorted(set(su.ARCHITECTURES)))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="results folder root (default examples/results)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = CONFIGS["quick" if args.quick else "full"]
    seed_everything(args.seed)
    device = torch.device(args.device)
    out = results_dir(f"char_lm_{args.arch}{'_quick' if args.quick else ''}", args.out)

    data = stdlib_bytes(cfg["corpus_bytes"])
    split = int(0.9 * len(data))
    train, valid = data[:split], data[split:]
    model = su.SSMLanguageModel(256, args.arch, d_model=cfg["d_model"], n_layer=cfg["n_layer"]).to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg["lr"], total_steps=cfg["steps"], pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    train_curve, valid_curve = ([], []), ([], [])
    start = time.perf_counter()
    bar = progress(range(1, cfg["steps"] + 1), cfg["steps"], f"char_lm {args.arch}")
    for step in bar:
        tokens = batch_of(train, cfg["batch"], cfg["length"], gen).to(device)
        _, loss = model(tokens, labels=tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        train_curve[0].append(step)
        train_curve[1].append(loss.item() / math.log(2))
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            valid_curve[0].append(step)
            valid_curve[1].append(bits_per_char(model, valid, cfg["length"], device))
            bar.set_postfix(valid_bpc=f"{valid_curve[1][-1]:.3f}")
    seconds = time.perf_counter() - start

    prompt = torch.tensor([list(b"def ")], device=device)
    sample = model.generate(prompt, max_length=120, temperature=0.8, top_k=20,
                            generator=torch.Generator(device=device).manual_seed(args.seed))
    text = bytes(sample[0].tolist()).decode("utf-8", errors="replace")

    su.save_state_dict(model, out / "model.safetensors")
    reloaded = su.SSMLanguageModel(256, args.arch, d_model=cfg["d_model"], n_layer=cfg["n_layer"]).to(device)
    reloaded.load_state_dict(su.load_state_dict(out / "model.safetensors", device=device))
    check = valid[:cfg["length"]].long()[None].to(device)
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        same = torch.equal(model(check), reloaded(check))
    if not same:
        raise SystemExit("the reloaded model predicts differently")

    plot_curves(out / "curves.png", {"train": train_curve, "validation": valid_curve}, "step", "bits per character",
                f"char LM on the Python standard library ({args.arch})")
    table = write_table(out / "results.md", ["architecture", "parameters", "steps", "validation bpc", "train time (s)",
                                             "device"],
                        [[args.arch, f"{params:,}", cfg["steps"], f"{valid_curve[1][-1]:.3f}", f"{seconds:.1f}",
                          device.type]],
                        f"Character LM on {len(data):,} bytes of Python's standard library")
    (out / "sample.txt").write_text(text)
    print(table)
    print("sample:", repr(text))
    print(f"reloaded from {out / 'model.safetensors'}: same logits")
    print(f"results in {out}")
    return out


if __name__ == "__main__":
    main()
