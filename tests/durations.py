"""Slowest-first test order for a parallel native run (`pytest -n W --dist load --maxschedchunk 1 --slowest-first`,
which scripts/gpu_tests.sh uses).

On the GPU machine a few tests take minutes (Inductor builds, multi-minute Triton compiles) among ~2000 that take
under a second. In collection order they start late and the run ends long after the other workers are idle;
started first, they overlap with everything else (longest-processing-time-first scheduling). Durations come from
native_durations.tsv (`seconds<TAB>node id`, written from a native run's SSM_TEST_LOG by `python -m
tests.durations update`); a test it does not know is expected to take UNKNOWN_SECONDS.

xdist's load scheduler first hands each worker two consecutive tests, then one more each time a test finishes (so
each worker holds the test it runs and the next one). Two slow tests must not start on one worker, so the first
2 W positions pair the W slowest tests with the fastest ones."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence, TypeVar

DURATIONS_FILE = Path(__file__).with_name("native_durations.tsv")
UNKNOWN_SECONDS = 1.0
RECORDED_FROM_SECONDS = 1.0  # shorter tests are not recorded (their order does not matter)
Item = TypeVar("Item")


def load(path: Path = DURATIONS_FILE) -> Dict[str, float]:
    """node id -> seconds, from a `seconds<TAB>node id` file ('#' lines are comments); {} if there is none."""
    if not path.exists():
        return {}
    durations = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            seconds, node_id = line.split("\t", 1)
            durations[node_id] = float(seconds)
    return durations


def slowest_first(items: Sequence[Item], node_ids: Sequence[str], durations: Dict[str, float],
                  workers: int) -> List[Item]:
    """items reordered for `workers` xdist workers: descending expected duration (ties keep collection order),
    the first 2 * workers positions alternating the slowest tests with the fastest."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    expected = [durations.get(node_id, UNKNOWN_SECONDS) for node_id in node_ids]
    order = sorted(range(len(items)), key=lambda i: -expected[i])  # stable: ties in collection order
    pairs = min(workers, len(order) // 2)
    slow, fast = order[:pairs], order[len(order) - pairs:][::-1]
    order = [i for pair in zip(slow, fast) for i in pair] + order[pairs:len(order) - pairs]
    return [items[i] for i in order]


def update(test_log: Path, durations_file: Path = DURATIONS_FILE, header: str = "") -> int:
    """Merge a native run's SSM_TEST_LOG (`outcome<TAB>phase<TAB>seconds<TAB>node id` lines) into durations_file:
    tests that finished take their new duration, tests the run did not reach keep their old one. Returns the
    number of tests recorded."""
    durations = load(durations_file)
    for line in test_log.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and fields[1] == "call":
            durations[fields[3]] = float(fields[2])
    kept = sorted(((s, n) for n, s in durations.items() if s >= RECORDED_FROM_SECONDS), key=lambda sn: (-sn[0], sn[1]))
    lines = [f"# seconds<TAB>test: native durations of the tests taking {RECORDED_FROM_SECONDS:g} s or more "
             "(python -m tests.durations update); read by --slowest-first"]
    lines += [f"# {header}"] if header else []
    durations_file.write_text("\n".join(lines + [f"{s:.1f}\t{n}" for s, n in kept]) + "\n")
    return len(kept)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.durations", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("update", help="merge a native run's SSM_TEST_LOG into the durations file")
    merge.add_argument("test_log", type=Path)
    merge.add_argument("--into", type=Path, default=DURATIONS_FILE)
    merge.add_argument("--header", default="", help="a comment line: where and when the durations were measured")
    args = parser.parse_args(argv)
    print(f"{update(args.test_log, args.into, args.header)} tests recorded in {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
