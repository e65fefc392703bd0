"""python -m benchmarks ncu --op OP [--case-index I] [--variant LABEL] [--mode fwd|fwd+bwd] [--kernels REGEX]
[--stalls]: Nsight Compute's view of one benchmark case's kernels (what bounds each: occupancy, issue, memory, L2).

Runs `ncu` (Nsight Compute, on PATH and allowed to read the GPU's hardware counters) over this module in child
mode, which warms the case up, then calls it `--calls` times between cudaProfilerStart / Stop, so that only those
calls are profiled (--profile-from-start off). The clocks are left alone (--clock-control none). ncu's CSV
(details page: one row per kernel launch, section and metric) is reduced to one block per kernel: the mean of each
metric of METRICS over its launches. --stalls profiles the calls once more for the raw WarpStateStats metrics and
prints each kernel's largest stall reasons (cycles per issued instruction).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import io
import shutil
import subprocess
import sys
from collections import OrderedDict, defaultdict
from typing import Dict, List, Sequence, Tuple

SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats", "SchedulerStats", "WarpStateStats", "MemoryWorkloadAnalysis")
# Metric names as the details page spells them (sections above); a name ncu does not report is left out.
METRICS = ("Duration", "Registers Per Thread", "Theoretical Occupancy", "Achieved Occupancy", "Issue Slots Busy",
           "No Eligible", "Warp Cycles Per Issued Instruction", "Compute (SM) Throughput", "Memory Throughput",
           "DRAM Throughput", "L2 Cache Throughput", "L1/TEX Cache Throughput", "L2 Hit Rate",
           "Shared Memory Configuration Size", "Dynamic Shared Memory Per Block", "Static Shared Memory Per Block")


# Raw-page metrics of the WarpStateStats section: cycles per issued instruction a warp spends stalled for a reason.
STALL_PREFIX, STALL_SUFFIX = "smsp__average_warps_issue_stalled_", "_per_issue_active.ratio"


def ncu_command(args: argparse.Namespace, ncu: str = "ncu", page: str = "details",
                sections: Sequence[str] = SECTIONS) -> List[str]:
    """The ncu command line that profiles the child run of `args` (ncu's CSV of `page` for `sections`)."""
    child = [sys.executable, "-m", "benchmarks.ncu", "--child", "--op", args.op, "--case-index", str(args.case_index),
             "--variant", args.variant, "--mode", args.mode, "--calls", str(args.calls)]
    command = [ncu, "--clock-control", "none", "--profile-from-start", "off", "--csv", "--page", page]
    for section in sections:
        command += ["--section", section]
    if args.kernels:
        command += ["-k", f"regex:{args.kernels}"]
    return command + child


def _csv_part(text: str) -> str:
    """ncu's CSV in its output, from the header line on (ncu's own messages and the child's output before it)."""
    lines = text.splitlines()
    start = next((k for k, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise ValueError("no ncu CSV in the output (no line starting with \"ID\")")
    return "\n".join(lines[start:])


def summarize(text: str, metrics: Sequence[str] = METRICS) -> "OrderedDict[str, Dict[str, tuple]]":
    """{kernel name: {metric: (mean value, unit, launches)}} from ncu's details-page CSV (lines before its header,
    ncu's own messages and the child's output, are skipped); kernels in order of first launch."""
    values: Dict[str, Dict[str, List[float]]] = OrderedDict()
    units: Dict[str, str] = {}
    for row in csv.DictReader(io.StringIO(_csv_part(text))):
        name, metric = row.get("Kernel Name"), row.get("Metric Name")
        if not name or metric not in metrics:
            continue
        try:
            value = float(row["Metric Value"].replace(",", ""))
        except (KeyError, ValueError):
            continue
        values.setdefault(name, defaultdict(list))[metric].append(value)
        units[metric] = row.get("Metric Unit", "")
    return OrderedDict((name, {m: (sum(v) / len(v), units[m], len(v)) for m in metrics if (v := found.get(m))})
                       for name, found in values.items())


def stall_reasons(text: str) -> "OrderedDict[str, List[Tuple[str, float]]]":
    """{kernel name: [(stall reason, cycles per issued instruction), ...] largest first, the mean over its launches}
    from ncu's raw-page CSV (a header row of metric names, a row of units, a row per launch)."""
    rows = list(csv.reader(io.StringIO(_csv_part(text))))
    header, launches = rows[0], rows[2:]
    name_column = header.index("Kernel Name")
    reasons = {k: h[len(STALL_PREFIX):-len(STALL_SUFFIX)] for k, h in enumerate(header)
               if h.startswith(STALL_PREFIX) and h.endswith(STALL_SUFFIX)}
    sums: Dict[str, Dict[str, List[float]]] = OrderedDict()
    for row in launches:
        per_reason = sums.setdefault(row[name_column], defaultdict(list))
        for k, reason in reasons.items():
            try:
                per_reason[reason].append(float(row[k].replace(",", "")))
            except ValueError:
                continue
    return OrderedDict((name, sorted(((reason, sum(v) / len(v)) for reason, v in found.items() if v),
                                     key=lambda item: -item[1]))
                       for name, found in sums.items())


def format_stalls(stalls: "OrderedDict[str, List[Tuple[str, float]]]", top: int = 8) -> str:
    out = []
    for name, reasons in stalls.items():
        out.append(f"## {name[:100]}: stalled cycles per issued instruction, by reason")
        out.extend(f"  {reason:28s} {cycles:8.3f}" for reason, cycles in reasons[:top])
    return "\n".join(out)


def format_summary(summary: "OrderedDict[str, Dict[str, tuple]]") -> str:
    out = []
    for name, found in summary.items():
        launches = max((n for _, _, n in found.values()), default=0)
        out.append(f"## {name[:100]} ({launches} launches)")
        out.extend(f"  {metric:36s} {value:12.4g} {unit}" for metric, (value, unit, _) in found.items())
    return "\n".join(out)


def gpu_cases(op: str) -> list:
    """The op's benchmark cases that run on the GPU, in order: what --case-index counts."""
    return [case for case in importlib.import_module(f"benchmarks.cases.{op}").cases(quick=False)
            if "cuda" in case.device_types]


def _run_child(args: argparse.Namespace) -> int:
    import torch

    from .core import forward_backward
    device = torch.device("cuda")
    cases = gpu_cases(args.op)
    if not 0 <= args.case_index < len(cases):
        raise SystemExit(f"--case-index: {args.case_index} is not within the {len(cases)} cases of {args.op}")
    case = cases[args.case_index]
    variants = case.make(device, True)
    if args.variant not in variants:
        raise SystemExit(f"--variant: {args.variant!r} is not one of {sorted(variants)} for {case.name}")
    variant = variants[args.variant]
    fn = variant.fn if args.mode == "fwd" else forward_backward(variant)
    with torch.no_grad() if args.mode == "fwd" else torch.enable_grad():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for _ in range(args.calls):
            fn()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    print(f"# profiled {args.calls} {args.mode} call(s) of {args.op} {case.name} | {args.variant}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks ncu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", required=True, help="a module of benchmarks/cases, e.g. ssd_chunk_scan")
    parser.add_argument("--case-index", type=int, default=0, help="index into the op's GPU cases")
    parser.add_argument("--variant", default="triton", help="the case's variant label (triton, cuda, peer:...)")
    parser.add_argument("--mode", choices=("fwd", "fwd+bwd"), default="fwd+bwd")
    parser.add_argument("--kernels", default="", help="profile only kernels whose name matches this regex")
    parser.add_argument("--calls", type=int, default=1, help="profiled calls (after three warm-up calls)")
    parser.add_argument("--raw", default="", help="also write ncu's whole output (its CSV) to this file")
    parser.add_argument("--stalls", action="store_true",
                        help="profile the calls once more for the warps' stall reasons (raw WarpStateStats metrics)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls: must be at least 1")
    if args.child:
        return _run_child(args)
    ncu = shutil.which("ncu")
    if ncu is None:
        raise SystemExit("ncu (Nsight Compute) is not on PATH")
    done = _run_ncu(ncu_command(args, ncu))
    if args.raw:
        with open(args.raw, "w") as raw:
            raw.write(done.stdout)
    if done.returncode != 0:
        return done.returncode
    print(format_summary(summarize(done.stdout)))
    if args.stalls:
        done = _run_ncu(ncu_command(args, ncu, page="raw", sections=("WarpStateStats",)))
        if done.returncode != 0:
            return done.returncode
        print(format_stalls(stall_reasons(done.stdout)))
    return 0


def _run_ncu(command: List[str]) -> subprocess.CompletedProcess:
    """ncu run to the end; where it failed, the tail of its output goes to stderr."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
    return done


if __name__ == "__main__":
    sys.exit(main())
