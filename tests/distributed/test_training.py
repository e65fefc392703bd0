"""examples/train_distributed.py under torchrun on CPU processes (gloo): context parallelism with FSDP2 and
DDP trains with the losses of one undistributed process on the same global batches (--verify), and a run
resumed from its torch.distributed.checkpoint continues with the losses of an uninterrupted one."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_distributed.py"


def _torchrun(ranks: int, *args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               str(SCRIPT), "--device", "cpu", "--length", "32", "--print-every", "1", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _losses(output: str):
    return [float(x) for x in re.findall(r"^step +\d+ +loss ([0-9.]+)", output, flags=re.M)]


@pytest.mark.parametrize("ranks,args", [
    (4, ["--cp", "2", "--parallel", "fsdp", "--architecture", "mamba"]),
    (2, ["--cp", "2", "--parallel", "ddp", "--architecture", "mamba2"]),
    (2, ["--cp", "1", "--parallel", "fsdp", "--architecture", "s5"]),
], ids=["fsdp-2x2-mamba", "ddp-cp2-mamba2", "fsdp-dp2-s5"])
def test_distributed_training_equals_one_process(ranks, args):
    output = _torchrun(ranks, "--steps", "3", "--verify", *args)
    assert output.count("(= one process)") == 3, output


def test_checkpoint_resume_continues_the_run(tmp_path):
    straight = _losses(_torchrun(2, "--steps", "4"))
    first = _losses(_torchrun(2, "--steps", "2", "--checkpoint-dir", str(tmp_path / "ckpt")))
    resumed = _losses(_torchrun(2, "--steps", "2", "--checkpoint-dir", str(tmp_path / "ckpt"), "--resume"))
    assert len(straight) == 4 and first + resumed == straight, (straight, first, resumed)
