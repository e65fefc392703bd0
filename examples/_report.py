"""What the example scripts share: where results go, the progress bar, the markdown table and the plot."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Dict, List, Sequence

import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def results_dir(name: str, base: str = None) -> Path:
    """examples/results/<name> (or <base>/<name>), created; its path is printed by the scripts."""
    root = Path(base) if base else Path(__file__).resolve().parent / "results"
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress(iterable, total: int, desc: str):
    """A tqdm progress bar (stderr), off when SSM_EXAMPLES_NO_PROGRESS=1 (the tests)."""
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, disable=os.environ.get("SSM_EXAMPLES_NO_PROGRESS") == "1",
                dynamic_ncols=True)


def write_table(path: Path, headers: Sequence[str], rows: List[Sequence], title: str) -> str:
    """A markdown table (with a title line) written to path; returns its text."""
    lines = [f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot_curves(path: Path, curves: Dict[str, Sequence[Sequence[float]]], xlabel: str, ylabel: str,
                title: str) -> None:
    """One line per curve, each a pair (xs, ys), saved as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(path: Path, labels: Sequence[str], groups: Dict[str, Sequence[float]], ylabel: str,
              title: str) -> None:
    """Grouped bars: one group per label, one bar per entry of `groups`, saved as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(labels) * len(groups)), 4.5))
    width = 0.8 / len(groups)
    for i, (name, values) in enumerate(groups.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=30)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
