"""Sequential pixel classification on scikit-learn's digits: every architecture in one run.

    python examples/sequence_classification.py            # full configuration
    python examples/sequence_classification.py --quick    # small: under 2 minutes on a 2-core CPU

Each 8x8 digit (1797 images, shipped with scikit-learn) is read pixel by pixel as a length-64 sequence, in
raster order and (full configuration) in one fixed random permutation, which scatters neighbouring pixels
far apart in time. A
linear encoder, a create_model stack of every architecture (and HiSS), mean pooling and a linear classifier
are trained on 80% of the images; the table gives test accuracy, parameters and training time per
architecture and order, the plot the accuracies. Every model is saved (safetensors), reloaded and checked to
predict the same. Writes accuracy.png and results.md into the folder it prints.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import ssm_universal as su

from _report import plot_bars, progress, results_dir, seed_everything, write_table

ARCHITECTURES = ["s4", "s4d", "dss", "s5", "mamba", "mamba2", "h3", "gated_mlp", "gss", "hiss"]
CONFIGS = {  # quick: raster order only; full: both orders
    "quick": dict(d_model=32, d_state=16, n_layer=2, epochs=8, batch=96, lr=5e-3, orders=("raster",)),
    "full": dict(d_model=128, d_state=64, n_layer=4, epochs=40, batch=64, lr=2e-3, orders=("raster", "permuted")),
}
# per-architecture options: HiSS reads chunks of 8 pixels (one image row) with a Mamba low level
OPTIONS = {"hiss": dict(chunk_size=8), "gss": dict(dss_kernel_H=32)}


class PixelClassifier(nn.Module):
    """(B, 64) pixels -> (B, 10) logits: Linear(1, d) per pixel, a create_model stack, mean, Linear(d, 10)."""

    def __init__(self, architecture: str, d_model: int, d_state: int, n_layer: int):
        super().__init__()
        self.encoder = nn.Linear(1, d_model)
        self.backbone = su.create_model(architecture, d_model=d_model, d_state=d_state, n_layer=n_layer,
                                        **OPTIONS.get(architecture, {}))
        self.head = nn.Linear(d_model, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.encoder(pixels[..., None])).mean(dim=1))


def digits(seed: int):
    """(train x, train y, test x, test y): pixels scaled to [0, 1], a stratified 80 / 20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(data.data / 16.0, data.target, test_size=0.2,
                                                        random_state=seed, stratify=data.target)
    as_tensor = lambda a, dtype: torch.tensor(a, dtype=dtype)  # noqa: E731
    return (as_tensor(x_train, torch.float32), as_tensor(y_train, torch.int64),
            as_tensor(x_test, torch.float32), as_tensor(y_test, torch.int64))


def accuracy(model, x, y, device) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(x.to(device)).argmax(-1).cpu() == y).float().mean().item()
    model.train()
    return correct


def train_one(architecture, order_name, order, data, cfg, device, seed, out):
    x_train, y_train, x_test, y_test = (t[:, order] if t.dim() == 2 else t for t in data)
    seed_everything(seed)
    build = lambda: PixelClassifier(architecture, cfg["d_model"], cfg["d_state"], cfg["n_layer"]).to(device)  # noqa: E731
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    steps = cfg["epochs"] * -(-len(x_train) // cfg["batch"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg["lr"], total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(cfg["epochs"]):
        for idx in torch.randperm(len(x_train), generator=gen).split(cfg["batch"]):
            loss = F.cross_entropy(model(x_train[idx].to(device)), y_train[idx].to(device))
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    acc = accuracy(model, x_test, y_test, device)
    path = out / f"{architecture}_{order_name}.safetensors"
    su.save_state_dict(model, path)
    reloaded = build()
    reloaded.load_state_dict(su.load_state_dict(path, device=device))
    if accuracy(reloaded, x_test, y_test, device) != acc:
        raise SystemExit(f"{architecture}: the reloaded model predicts differently")
    return acc, sum(p.numel() for p in model.parameters()), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--arch", action="append", choices=ARCHITECTURES, help="default: all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="results folder root (default examples/results)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = CONFIGS["quick" if args.quick else "full"]
    device = torch.device(args.device)
    out = results_dir(f"sequence_classification{'_quick' if args.quick else ''}", args.out)
    data = digits(args.seed)
    orders = {"raster": torch.arange(64), "permuted": torch.randperm(64, generator=torch.Generator().manual_seed(1))}
    orders = {name: orders[name] for name in cfg["orders"]}
    architectures = args.arch or ARCHITECTURES
    rows, accuracies = [], {name: [] for name in orders}
    runs = [(a, o) for a in architectures for o in orders]
    for architecture, order_name in progress(runs, len(runs), "architectures"):
        acc, params, seconds = train_one(architecture, order_name, orders[order_name], data, cfg, device, args.seed,
                                         out)
        accuracies[order_name].append(100 * acc)
        rows.append([architecture, order_name, f"{100 * acc:.1f}", f"{params:,}", f"{seconds:.1f}"])
    plot_bars(out / "accuracy.png", architectures, accuracies, "test accuracy (%)",
              f"sequential digits (8x8, length 64), {cfg['epochs']} epochs")
    table = write_table(out / "results.md", ["architecture", "pixel order", "test accuracy (%)", "parameters",
                                             "train time (s)"], rows,
                        f"Sequential digits: {len(data[0])} training / {len(data[2])} test images, "
                        f"{cfg['epochs']} epochs, d_model {cfg['d_model']}, {cfg['n_layer']} layers, {device.type}")
    print(table)
    print(f"results in {out}")
    return out


if __name__ == "__main__":
    main()
