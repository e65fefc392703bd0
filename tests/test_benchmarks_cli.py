"""python -m benchmarks and its subcommands: the settings a tune sweep changes are restored, a sweep on the CPU
(interpreter) times its settings and names the best, the subcommands parse, generate times a small model."""
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.cases.fftconv import _case
from benchmarks.tune import module_settings, sweep


def test_module_settings_restores_even_after_an_error():
    backend = importlib.import_module("ssm_kernels.causal_conv1d.triton")
    before = backend.CONFIG
    with pytest.raises(RuntimeError):
        with module_settings(backend, {"CONFIG": "changed"}):
            assert backend.CONFIG == "changed"
            raise RuntimeError
    assert backend.CONFIG is before


@pytest.mark.triton
def test_sweep_times_each_setting_and_restores(triton_device, capsys):
    if triton_device.type != "cpu":
        pytest.skip("the sweep's timing on a GPU is the tuner's own business")
    backend = importlib.import_module("ssm_kernels.fftconv.triton")
    chunk = backend.CHUNK
    variant = _case(1, 2, 40, False, torch.float32, False).make(torch.device("cpu"), False)["triton"]
    results = sweep(backend, variant, torch.device("cpu"), [{"CHUNK": 16}], quick=True, modes=("fwd",))
    assert [settings for _, settings in results] == [{}, {"CHUNK": 16}]
    assert all(times["fwd"] > 0 for times, _ in results)
    assert backend.CHUNK == chunk
    assert "best fwd" in capsys.readouterr().out


@pytest.mark.triton
def test_sweep_keeps_only_the_named_settings(triton_device, monkeypatch, capsys):
    """--setting NAME: only the grid's settings that set NAME run (after the defaults)."""
    if triton_device.type != "cpu":
        pytest.skip("the sweep's timing on a GPU is the tuner's own business")
    import benchmarks.tune as tune
    backend = importlib.import_module("ssm_kernels.fftconv.triton")
    monkeypatch.setattr(tune, "_setting_names", {"CHUNK"})
    variant = _case(1, 2, 40, False, torch.float32, False).make(torch.device("cpu"), False)["triton"]
    grid = [{"CHUNK": 16}, {"NUM_WARPS": backend.NUM_WARPS}]
    results = sweep(backend, variant, torch.device("cpu"), grid, quick=True, modes=("fwd",))
    assert [settings for _, settings in results] == [{}, {"CHUNK": 16}]


@pytest.mark.parametrize("subcommand", ["tune", "profile", "decode", "generate", "transformers", "step-kernels",
                                        "block", "ncu", "stubbed-host"])
def test_subcommands_parse(subcommand):
    with pytest.raises(SystemExit) as exit_:
        main([subcommand, "--help"])
    assert exit_.value.code == 0


@pytest.mark.parametrize("op", ["cauchy_kernel", "vandermonde_kernel", "ssd_chunk_scan"])
def test_tuner_settings_name_backend_attributes(op):
    """A misspelt setting would be set on the module, never read, and time the defaults under its name."""
    tuner = importlib.import_module(f"benchmarks.tune.{op}")
    grids = ([tuner.grid(quick)] if hasattr(tuner, "grid") else
             [tuner.forward_grid(quick), tuner.backward_grid(quick, {})] for quick in (True, False))
    names = {name for per_quick in grids for grid in per_quick for settings in grid for name in settings}
    assert names and all(hasattr(tuner.backend, name) for name in names), names


def test_tune_rejects_an_op_without_a_tuner():
    with pytest.raises(SystemExit):
        main(["tune", "not_an_op"])


def test_generate_times_prefill_and_decoding_apart(tmp_path, capsys):
    path = tmp_path / "generation.json"
    assert main(["generate", "--quick", "--device", "cpu", "--case", "mamba2 B16", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]
    assert [(r["case"], r["variant"]) for r in rows] == [("mamba2 B16", "ours")]
    row = rows[0]
    # prefill and total are two separate calls' times: on a loaded CPU the first may exceed the second, and the
    # per-token time (their difference) be negative
    assert row["prefill_ms"] > 0 and row["total_ms"] > 0 and math.isfinite(row["decode_ms_per_token"])
    assert row["step_bytes"] > 0 and row["floor_ms_per_token"] is None  # no copy bandwidth off a GPU
    assert "ms/token" in capsys.readouterr().out


def test_block_times_ours_and_a_peer_loaded_with_our_weights(tmp_path, monkeypatch):
    """The peer path, with our own classes standing in for mamba_ssm's: same weights, so no difference."""
    import ssm_universal.layers as our_layers
    from benchmarks import block
    monkeypatch.setattr(block.peers, "load", lambda module, name: getattr(our_layers, name))
    path = tmp_path / "block.json"
    assert main(["block", "--quick", "--peers", "--device", "cpu", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["results"]
    assert [(r["layer"], r["variant"]) for r in rows] == [
        ("mamba", "ours"), ("mamba", "ours:recompute"), ("mamba", "peer:mamba_ssm"),
        ("mamba2", "ours"), ("mamba2", "ours:recompute"), ("mamba2", "peer:mamba_ssm")]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in rows)
    kept = {(r["layer"], r["variant"]): r["kept_mb"] for r in rows}
    for layer in ("mamba", "mamba2"):  # the recomputed activations are not held between forward and backward
        assert 0 < kept[layer, "ours:recompute"] < kept[layer, "ours"]
    assert all(r["rel_diff_out"] == 0 and r["rel_diff_dx"] == 0 for r in rows if r["variant"].startswith("peer"))


def test_decode_step_bytes_count_a_tied_embedding_once_and_the_state_twice():
    from benchmarks.generation import decode_step_bytes
    from ssm_universal.models import SSMLanguageModel
    tied, untied = (SSMLanguageModel(50, "mamba", d_model=16, n_layer=2, tie_embeddings=tie) for tie in (True, False))
    embedding = 50 * 16 * 4
    assert decode_step_bytes(untied, 3) - decode_step_bytes(tied, 3) == embedding
    state = sum(t.numel() * 4 for layer in tied.default_state(1) for t in layer[0])  # fp32 model
    assert decode_step_bytes(tied, 2) - decode_step_bytes(tied, 1) == 2 * state


def test_transformers_times_patched_and_unpatched(tmp_path):
    pytest.importorskip("transformers")
    path = tmp_path / "transformers.json"
    assert main(["transformers", "--quick", "--device", "cpu", "--model", "mamba2", "--json", str(path)]) == 0
    results = json.loads(path.read_text())["results"]["mamba2"]
    assert set(results) == {"unpatched", "patched"}
    assert all(ms > 0 for row in results.values() for ms in row.values())


def test_wall_seconds_interleaved_takes_turns():
    """One warm-up call of each function, then rounds of one call each, in order; a median per function."""
    from benchmarks.core import wall_seconds_interleaved
    calls = []
    times = wall_seconds_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                     torch.device("cpu"), repeats=3)
    assert calls == ["a", "b"] * 4
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())


def test_host_time_column(tmp_path, capsys):
    """--host adds the host's time per call to every row (and to the JSON), after the peak-memory column."""
    out = tmp_path / "r.json"
    assert main(["--op", "gated_rmsnorm", "--quick", "--host", "--only", "torch", "--device", "cpu",
                 "--json", str(out)]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("op "))
    assert header.index("peak MB") < header.index("host ms") < header.index("x vs best ours")
    rows = json.loads(out.read_text())["results"]
    assert rows and all(r["host_ms"] > 0 for r in rows)


def test_tflops_column(tmp_path, capsys):
    """A case that counts its flops gets TFLOP/s in every row (after the floor column) and in the JSON."""
    out = tmp_path / "r.json"
    assert main(["--op", "fftconv", "--quick", "--only", "torch", "--device", "cpu", "--json", str(out)]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("op "))
    assert header.index("floor") < header.index("TFLOP/s") < header.index("peak MB")
    rows = json.loads(out.read_text())["results"]
    assert rows and all(r["tflops"] > 0 for r in rows)


def test_fftconv_flops_count_transforms_products_and_gates():
    """N = 2L = 8: a real transform 2.5 N log2 N = 60, a complex product 6 (N / 2 + 1) = 30; per row, forward two
    transforms, one product, 4 L of gates and D, backward two transforms, two products, 8 L; per head the kernel's
    transform (forward) and dk's inverse (backward)."""
    from benchmarks.cases.fftconv import flops
    assert flops(1, 1, 4) == (2 * 60 + 30 + 16 + 60, 2 * 60 + 60 + 32 + 60)
    assert flops(3, 2, 4) == (3 * (2 * 60 + 30 + 16) + 2 * 60, 3 * (2 * 60 + 60 + 32) + 2 * 60)


NCU_HEADER = ("ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size",
              "Grid Size", "Device", "CC", "Section Name", "Metric Name", "Metric Unit", "Metric Value")
NCU_ROWS = [  # (launch, kernel, section, metric, unit, value)
    ("0", "_bwd_dx_kernel", "GPU Speed Of Light Throughput", "Duration", "us", "610.50"),
    ("0", "_bwd_dx_kernel", "Occupancy", "Achieved Occupancy", "%", "23.10"),
    ("0", "_bwd_dx_kernel", "Launch Statistics", "Registers Per Thread", "register/thread", "128"),
    ("1", "_bwd_dgm_kernel", "GPU Speed Of Light Throughput", "Duration", "us", "1,020.00"),
    ("1", "_bwd_dgm_kernel", "GPU Speed Of Light Throughput", "Elapsed Cycles", "cycle", "999"),
    ("2", "_bwd_dx_kernel", "GPU Speed Of Light Throughput", "Duration", "us", "620.50"),
]


def ncu_details_output() -> str:
    """What ncu --csv --page details prints: its own messages, then one quoted CSV row per launch and metric."""
    lines = ["==PROF== Connected to process 123", '==PROF== Profiling "_bwd_dx_kernel": 0%....100% - 9 passes',
             ",".join(f'"{h}"' for h in NCU_HEADER)]
    for launch, kernel, section, metric, unit, value in NCU_ROWS:
        fields = (launch, "123", "python3", "h", kernel, "1", "7", "(256, 1, 1)", "(512, 1, 1)", "0", "9.0",
                  section, metric, unit, value)
        lines.append(",".join(f'"{f}"' for f in fields))
    return "\n".join(lines) + "\n"


def test_ncu_summary_means_each_metric_per_kernel_in_launch_order():
    from benchmarks.ncu import format_summary, summarize
    summary = summarize(ncu_details_output())
    assert list(summary) == ["_bwd_dx_kernel", "_bwd_dgm_kernel"]
    assert summary["_bwd_dx_kernel"]["Duration"] == (615.5, "us", 2)
    assert summary["_bwd_dx_kernel"]["Achieved Occupancy"] == (23.1, "%", 1)
    assert list(summary["_bwd_dx_kernel"]) == ["Duration", "Registers Per Thread", "Achieved Occupancy"]
    assert summary["_bwd_dgm_kernel"] == {"Duration": (1020.0, "us", 1)}  # thousands separator; unlisted metric out
    text = format_summary(summary)
    assert "## _bwd_dx_kernel (2 launches)" in text and "615.5 us" in text
    with pytest.raises(ValueError, match="no ncu CSV"):
        summarize("==PROF== nothing profiled\n")


def test_ncu_command_profiles_the_child_run_only():
    import argparse

    from benchmarks.ncu import ncu_command
    args = argparse.Namespace(op="ssd_chunk_scan", case_index=0, variant="triton", mode="fwd+bwd",
                              kernels="_bwd_(dx|dgm)", calls=2)
    command = ncu_command(args, "/usr/bin/ncu")
    assert command[:3] == ["/usr/bin/ncu", "--clock-control", "none"]
    assert "--profile-from-start" in command and command[command.index("--profile-from-start") + 1] == "off"
    assert command[command.index("-k") + 1] == "regex:_bwd_(dx|dgm)"
    child = command[command.index("-m"):]
    assert child[:3] == ["-m", "benchmarks.ncu", "--child"] and child[child.index("--calls") + 1] == "2"


def _fake_profiler(monkeypatch, events):
    """torch.profiler.profile replaced by one whose events() are `events` (CPU-only machines have no CUDA ones)."""
    class Profile:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def events(self):
            return events
    monkeypatch.setattr(torch.profiler, "profile", Profile)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)


def test_kernel_gaps_sum_idle_time_between_kernels(monkeypatch):
    """Idle time is the span between kernels not covered by any (an overlapping kernel extends the busy time),
    per call, with the largest (before, after) pairs first."""
    from types import SimpleNamespace
    from benchmarks.profile import kernel_gaps

    def event(start, end, name, device=torch.autograd.DeviceType.CUDA):
        return SimpleNamespace(time_range=SimpleNamespace(start=start, end=end), name=name, device_type=device)
    _fake_profiler(monkeypatch, [event(0, 10, "a"), event(12, 20, "b"), event(15, 18, "c"), event(30, 40, "d"),
                                 event(40, 41, "e"), event(50, 60, "a"),
                                 event(0, 100, "cpu op", torch.autograd.DeviceType.CPU)])
    idle, gaps = kernel_gaps(lambda: None, iters=2)
    assert idle == 10.5
    assert gaps == [(5.0, "b", "d"), (4.5, "e", "a"), (1.0, "a", "b")]


def test_kernel_sources_name_the_op_behind_matching_kernels(monkeypatch):
    from types import SimpleNamespace
    from benchmarks.profile import kernel_sources
    copy = SimpleNamespace(name="aten::copy_", input_shapes=[[4, 8], [4, 8], []],
                           kernels=[SimpleNamespace(name="Memcpy DtoD (Device -> Device)", duration=85.0)])
    gemm = SimpleNamespace(name="aten::mm", input_shapes=[[2, 2]],
                           kernels=[SimpleNamespace(name="nvjet", duration=9.0)])
    launch = SimpleNamespace(name="cudaLaunchKernel", input_shapes=[], kernels=None)
    _fake_profiler(monkeypatch, [copy, gemm, launch])
    assert kernel_sources(lambda: None, 2, r"Memcpy|reduce_kernel") == {
        ("aten::copy_", "[[4, 8], [4, 8], []]", "Memcpy DtoD (Device -> Device)"): (42.5, 0.5)}


def test_ncu_case_index_counts_gpu_cases_only():
    from benchmarks.cases import fftconv
    from benchmarks.ncu import gpu_cases
    every = fftconv.cases(quick=False)
    assert any("cuda" not in case.device_types for case in every)  # the CPU-sized cases come first
    assert [case.name for case in gpu_cases("fftconv")] == [case.name for case in every if "cuda" in case.device_types]
    assert gpu_cases("fftconv")[0].name == "B8 H768 L4096 causal bfloat16"


def test_ncu_stall_reasons_from_the_raw_page():
    from benchmarks.ncu import format_stalls, stall_reasons
    stalled = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"
    header = ['"ID"', '"Kernel Name"', f'"{stalled.format("long_scoreboard")}"', f'"{stalled.format("barrier")}"',
              '"smsp__cycles_active.avg"']
    text = "\n".join(["==PROF== Connected to process 1",
                      ",".join(header), '"","","ratio","ratio","cycle"',
                      '"0","fwd","3.5","0.5","100"', '"1","bwd","1.0","2.0","100"', '"2","fwd","4.5","0.25","100"'])
    stalls = stall_reasons(text)
    assert list(stalls) == ["fwd", "bwd"]
    assert stalls["fwd"] == [("long_scoreboard", 4.0), ("barrier", 0.375)]  # means over launches, largest first
    assert stalls["bwd"] == [("barrier", 2.0), ("long_scoreboard", 1.0)]
    assert "long_scoreboard" in format_stalls(stalls, top=1) and "0.375" not in format_stalls(stalls, top=1)
    with pytest.raises(ValueError, match="no ncu CSV"):
        stall_reasons("==PROF== nothing profiled\n")


def test_ncu_stalls_command_asks_for_the_raw_page():
    import argparse

    from benchmarks.ncu import ncu_command
    args = argparse.Namespace(op="fftconv", case_index=0, variant="cuda", mode="fwd", kernels="", calls=1)
    command = ncu_command(args, "ncu", page="raw", sections=("WarpStateStats",))
    assert command[command.index("--page") + 1] == "raw"
    assert [command[k + 1] for k, part in enumerate(command) if part == "--section"] == ["WarpStateStats"]


def test_stubbed_host_times_every_backend_with_its_kernels_counted(tmp_path):
    """stubbed-host (in its own process: it defines the CUDA extension's ops as CPU no-ops) times the CUDA and
    Triton backends of each op and counts the kernels a call would launch: a forward+backward launches at least
    its forward and backward kernels."""
    out = tmp_path / "host.json"
    env = {k: v for k, v in os.environ.items() if k != "SSM_PEERS_DIR"}
    subprocess.run([sys.executable, "-m", "benchmarks", "stubbed-host", "--calls", "2", "--json", str(out)],
                   check=True, env=env, cwd=Path(__file__).resolve().parent.parent, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["results"]
    got = {(r["case"].split()[0], r["variant"], r["mode"]): r for r in rows}
    for op in ("selective_scan", "causal_conv1d"):
        for backend in ("cuda", "triton"):
            assert got[op, backend, "fwd"]["host_us"] > 0
            assert got[op, backend, "fwd no grad"]["launches"] >= 1
            assert got[op, backend, "fwd+bwd"]["launches"] >= 2


def test_stubbed_host_defines_every_extension_op():
    from benchmarks.stubbed_host import _extension_schemas
    names = {schema.split("(", 1)[0] for schema in _extension_schemas()}
    assert {"selective_scan_fwd", "selective_scan_bwd", "causal_conv1d_fwd", "causal_conv1d_bwd"} <= names
