"""The example scripts run their quick configuration end to end (a subset of their architectures, to keep the
suite short): training, the saved-and-reloaded check, the table and the plot in the folder they print."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for module in ("matplotlib", "tqdm", "sklearn", "statsmodels"):
    pytest.importorskip(module, reason="the examples need pip install -e '.[examples]'")


def _run(script: str, out: Path, *args: str) -> str:
    env = dict(os.environ, SSM_EXAMPLES_NO_PROGRESS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--quick", "--device", "cpu",
                             "--out", str(out), *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_char_lm(tmp_path):
    output = _run("char_lm.py", tmp_path, "--arch", "s5")
    folder = tmp_path / "char_lm_s5_quick"
    assert "same logits" in output and f"results in {folder}" in output
    assert (folder / "curves.png").stat().st_size > 0 and "validation bpc" in (folder / "results.md").read_text()


def test_sequence_classification(tmp_path):
    output = _run("sequence_classification.py", tmp_path, "--arch", "s4d", "--arch", "s5")
    folder = tmp_path / "sequence_classification_quick"
    table = (folder / "results.md").read_text()
    assert "| s4d | raster |" in table and "| s5 | raster |" in table and (folder / "accuracy.png").exists()
    assert f"results in {folder}" in output


def test_hiss_forecasting(tmp_path):
    output = _run("hiss_forecasting.py", tmp_path, "--models", "hiss", "s5")
    folder = tmp_path / "hiss_forecasting_quick"
    table = (folder / "results.md").read_text()
    assert "| hiss |" in table and "| s5 |" in table and "persistence" in table
    assert (folder / "forecast.png").exists() and f"results in {folder}" in output
