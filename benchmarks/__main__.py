"""python -m benchmarks --op OP [--quick] [--peers] [--memory] [--host] [--json PATH] [--device cpu|cuda]: time ops.

Subcommands (python -m benchmarks SUBCOMMAND --help):
  tune OP     sweep a Triton backend's launch settings (benchmarks/tune/)
  profile     per-kernel GPU time of the benchmark cases, ours beside the peers (benchmarks/profile.py)
  decode      where the time of one decoding step goes, kernel and whole model (benchmarks/decode.py)
  generate    a language model's prefill and per-token decoding, beside mamba_ssm (benchmarks/generation.py)
  step-kernels  the CUDA kernels of one decoding step of those models, beside mamba_ssm's
              (benchmarks/step_kernels.py)
  block       a Mamba / Mamba2 block's forward and forward+backward, beside mamba_ssm's with the same weights
              (benchmarks/block.py)
  transformers  transformers' Mamba / Mamba2 / FalconMamba models with and without patch()
              (benchmarks/transformers_patch.py)
  ncu         Nsight Compute's view of one case's kernels: occupancy, issue, memory (benchmarks/ncu.py)
  stubbed-host  the host time of small calls with the kernels stubbed, on any machine (CPU tensors, no GPU),
              beside the peers' (benchmarks/stubbed_host.py)
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys
from pathlib import Path

import torch

from . import cases as cases_pkg
from .core import copy_bandwidth_gbps, format_table, run_case


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": str(device), "cpu_threads": torch.get_num_threads(),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["compute_capability"] = list(torch.cuda.get_device_capability(device))
    try:  # $COMMIT first: a copied working tree's git metadata may name an older commit
        env["commit"] = os.environ.get("COMMIT") or subprocess.run(["git", "-c", "safe.directory=*", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        env["commit"] = None
    return env


def report(device: torch.device, rows: list, table: str, json_path=None) -> None:
    """A subcommand's ending: the environment and its table printed, both written to json_path if given."""
    env = environment(device)
    print(f"# {env}")
    print(table)
    if json_path:
        Path(json_path).write_text(json.dumps({"environment": env, "results": rows}, indent=1))


def available_ops() -> list:
    return sorted(m.name for m in pkgutil.iter_modules(cases_pkg.__path__))


SUBCOMMANDS = {"tune": "benchmarks.tune", "profile": "benchmarks.profile", "decode": "benchmarks.decode",
               "generate": "benchmarks.generation", "transformers": "benchmarks.transformers_patch",
               "step-kernels": "benchmarks.step_kernels", "block": "benchmarks.block", "ncu": "benchmarks.ncu",
               "stubbed-host": "benchmarks.stubbed_host"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", action="append", help=f"op(s) to time (default: all): {available_ops()}")
    parser.add_argument("--quick", action="store_true", help="small cases, short timing")
    parser.add_argument("--peers", action="store_true", help="add peer packages that import here")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory per variant")
    parser.add_argument("--host", action="store_true",
                        help="also measure the host's time per call (calls issued back to back): above the GPU "
                             "time, a call is host-bound")
    parser.add_argument("--only", action="append", help="variant labels to run (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write results and environment here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    ops = args.op or available_ops()
    unknown = sorted(set(ops) - set(available_ops()))
    if unknown:
        parser.error(f"no benchmark cases for {unknown}; available: {available_ops()}")
    bandwidth = copy_bandwidth_gbps(device)
    results = []
    for op in ops:
        module = importlib.import_module(f"benchmarks.cases.{op}")
        for case in module.cases(args.quick):
            if device.type not in case.device_types:
                continue
            results.extend(run_case(case, device, args.quick, args.peers, bandwidth, args.memory, args.only,
                                    args.host))
            print(f"done: {op} {case.name}", file=sys.stderr, flush=True)
    env = environment(device)
    env["copy_bandwidth_GBps"] = bandwidth
    print(f"# {env}")
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "results": [dataclasses.asdict(r) for r in results]},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
