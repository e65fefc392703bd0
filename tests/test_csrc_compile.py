"""tests.csrc_compile: ptxas' report read into one line per kernel; a real offline compile where nvcc exists."""
import shutil

import pytest

from tests import csrc_compile

PTXAS_LOG = """\
ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90'
ptxas info    : Function properties for _Z6kernelPf
    64 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 64 bytes cumulative stack size, 68 bytes smem
ptxas info    : Compiling entry function '_Z5otherv' for 'sm_90'
ptxas info    : Function properties for _Z5otherv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers, 68 bytes smem
"""


def test_usage_reads_every_kernel(monkeypatch):
    monkeypatch.setattr(csrc_compile, "demangle", lambda names: names)
    lines = csrc_compile.usage(PTXAS_LOG)
    assert lines == ["  40 regs  spills 8/4 B  stack 64 B  _Z6kernelPf",
                     "  96 regs  spills 0/0 B  stack 0 B  _Z5otherv"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit here")
def test_compiles_an_extension_offline(capsys, tmp_path):
    assert csrc_compile.main(["linear_scan", "--sass", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "linear_scan_kernel" in out and "regs" in out
    assert "linear_scan_kernel" in (tmp_path / "linear_scan.sass").read_text()
