"""HiSS against flat Mamba and S5 on a real time series that ships offline: Mauna Loa weekly CO2 (statsmodels).

    python examples/hiss_forecasting.py            # full configuration
    python examples/hiss_forecasting.py --quick    # small: under 2 minutes on a 2-core CPU

The HiSS paper's setting (arXiv 2402.10211): a low-level SSM reads each chunk of the sequence, a high-level SSM
runs over the chunk features and predicts once per chunk. Here every model reads windows of the normalised
series and predicts, at the end of each chunk of 8 weeks, the value of the week after it; the flat models
(Mamba, S5) are read at the same positions. Trained on the first 80% of 1958-2001, tested on windows ending in
the last 20%. Writes forecast.png (one-step-ahead predictions over the test years) and results.md (MSE in
ppm^2, parameters, time) into the folder it prints; every model is saved (safetensors), reloaded and checked.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import ssm_universal as su

from _report import plot_curves, progress, results_dir, seed_everything, write_table

CHUNK = 8
CONFIGS = {
    "quick": dict(d_model=32, d_state=16, n_layer=1, window=128, batch=32, steps=150, lr=3e-3),
    "full": dict(d_model=64, d_state=16, n_layer=2, window=512, batch=64, steps=2000, lr=2e-3),
}
MODELS = {"hiss": dict(chunk_size=CHUNK, low_level="mamba", high_level="mamba"), "mamba": {}, "s5": {}}


class Forecaster(nn.Module):
    """(B, T) series -> (B, T / CHUNK) predictions of the value after each chunk (in the series' units)."""

    def __init__(self, name: str, d_model: int, d_state: int, n_layer: int):
        super().__init__()
        self.name = name
        self.encoder = nn.Linear(1, d_model)
        self.backbone = su.create_model(name, d_model=d_model, d_state=d_state, n_layer=n_layer, **MODELS[name])
        self.head = nn.Linear(d_model, 1)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """Levels in, levels out; the network sees the window relative to its first value and predicts the
        change after each chunk (the series trends beyond the training range: levels would not extrapolate)."""
        features = self.backbone(self.encoder((series - series[:, :1])[..., None]))
        if self.name != "hiss":  # a flat model: its outputs at the last position of each chunk
            features = features[:, CHUNK - 1::CHUNK]
        return series[:, CHUNK - 1::CHUNK] + self.head(features)[..., 0]


def co2_series() -> torch.Tensor:
    """Weekly CO2 (ppm) 1958-2001, missing weeks interpolated: (2284,) float32."""
    import statsmodels.api as sm
    frame = sm.datasets.co2.load_pandas().data.interpolate()
    return torch.tensor(frame["co2"].to_numpy(), dtype=torch.float32)


def windows(series: torch.Tensor, ends: torch.Tensor, window: int):
    """(inputs (n, window), targets (n, window / CHUNK)): each window and the value after each of its chunks."""
    index = ends[:, None] - window + torch.arange(window)[None]
    inputs = series[index]
    targets = series[index[:, CHUNK - 1::CHUNK] + 1]
    return inputs, targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="results folder root (default examples/results)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)
    cfg = CONFIGS["quick" if args.quick else "full"]
    device = torch.device(args.device)
    out = results_dir(f"hiss_forecasting{'_quick' if args.quick else ''}", args.out)
    raw = co2_series()
    split = int(0.8 * len(raw))
    mean, std = raw[:split].mean(), raw[:split].std()
    series = (raw - mean) / std
    window = cfg["window"]
    # a window ends at position e (inclusive of e - 1); its last target is e: train targets stay before the split
    train_ends = torch.arange(window, split - 1)
    test_ends = torch.arange(split, len(series) - 1, CHUNK)
    test_x, test_y = windows(series, test_ends, window)

    rows, forecasts = [], {}
    for name in progress(args.models, len(args.models), "models"):
        seed_everything(args.seed)
        build = lambda: Forecaster(name, cfg["d_model"], cfg["d_state"], cfg["n_layer"]).to(device)  # noqa: E731
        model = build()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg["lr"], total_steps=cfg["steps"], pct_start=0.1)
        gen = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        for _ in range(cfg["steps"]):
            ends = train_ends[torch.randint(0, len(train_ends), (cfg["batch"],), generator=gen)]
            x, y = windows(series, ends, window)
            loss = F.mse_loss(model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            prediction = model(test_x.to(device)).cpu()
        mse = (((prediction - test_y) * std) ** 2)[:, -1].mean().item()  # the last chunk: the most context
        su.save_state_dict(model, out / f"{name}.safetensors")
        reloaded = build()
        reloaded.load_state_dict(su.load_state_dict(out / f"{name}.safetensors", device=device))
        reloaded.eval()
        with torch.no_grad():
            if not torch.equal(reloaded(test_x.to(device)).cpu(), prediction):
                raise SystemExit(f"{name}: the reloaded model predicts differently")
        params = sum(p.numel() for p in model.parameters())
        rows.append([name, f"{mse:.3f}", f"{params:,}", f"{seconds:.1f}"])
        forecasts[name] = (test_ends.tolist(), (prediction[:, -1] * std + mean).tolist())
    persistence = (((test_x[:, CHUNK - 1::CHUNK] - test_y) * std) ** 2)[:, -1].mean().item()
    rows.append(["persistence (next week = this week)", f"{persistence:.3f}", "0", "0"])
    truth = (test_ends.tolist(), (test_y[:, -1] * std + mean).tolist())
    plot_curves(out / "forecast.png", {"measured": truth, **forecasts}, "week index",
                "CO2 (ppm), one step ahead", "Mauna Loa CO2: next-week forecasts over the test years")
    table = write_table(out / "results.md", ["model", "test MSE (ppm^2)", "parameters", "train time (s)"], rows,
                        f"Weekly CO2, windows of {window} weeks, prediction after every {CHUNK} weeks, "
                        f"{cfg['steps']} steps, {device.type}")
    print(table)
    print(f"results in {out}")
    return out


if __name__ == "__main__":
    main()
