#!/usr/bin/env bash
# The whole test suite natively on a GPU machine, in one call: builds every csrc extension beside the first tests
# (xdist workers never build one twice), `pytest -n $WORKERS`, slowest tests first (tests/durations.py: a few take
# minutes, and started last they would end the run minutes after the other workers), one CPU thread per worker
# (14 workers x 16 OpenMP threads made the CPU-bound tests, Inductor builds and the examples, 10x slower).
# Logs go to $OUT (default /tmp/gpu_out): tests.log has one line per test as it finishes (SSM_TEST_LOG), so a run
# stopped by its time limit still says what failed and what was slow; native_durations.tsv is
# tests/native_durations.tsv updated with this run's durations (commit it to keep the order right). The last lines
# printed are a summary to paste into a note: GPU, torch, Triton, commit, pass/fail counts and the failing tests.
#   usage: [WORKERS=14] [TEST_TIMEOUT=480] [PER_TEST_TIMEOUT=240] bash scripts/gpu_tests.sh [pytest args...]
#   (no args: tests -m "not parity"; `-m parity`: the native parity sweep of every GPU backend, its own run)
# The per-test timeout uses pytest-timeout's thread method: a test hung in native code (an Inductor compile once
# hung past TEST_TIMEOUT) is stopped and reported with every thread's stack, which the signal method cannot do.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SSM_KERNELS_CACHE=${SSM_KERNELS_CACHE:-/tmp/ssm_cache}
[ -d peers ] && export SSM_PEERS_DIR=${SSM_PEERS_DIR:-$PWD/peers}  # tests/test_compat.py against the originals
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-1}
start=$(date +%s)
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  echo "commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "date $(date -u +%Y-%m-%dT%H:%MZ)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# Build every extension in the background while the tests start (in parallel; most tests need none, and a
# worker that needs one waits on its build's file lock instead of building it again).
python3 - > "$OUT/build.log" 2>&1 <<'PY' &
import concurrent.futures as cf
import time
from ssm_kernels import _cuda_ext, _cpu_ext
start = time.time()
names = _cuda_ext.cuda_extension_names()
with cf.ThreadPoolExecutor(len(names) + 1) as pool:
    jobs = {pool.submit(_cuda_ext.load, n): n for n in names}
    jobs[pool.submit(_cpu_ext.load)] = "cpu"
    for job in cf.as_completed(jobs):
        try:
            print(jobs[job], job.result(), f"({time.time() - start:.0f} s)")
        except Exception as exc:  # the tests of that backend will fail and say why
            print(jobs[job], "FAILED:", exc)
PY
builds=$!

# default: every test but the parity sweep (tests/native, minutes per job: `bash scripts/gpu_tests.sh -m parity`)
args=("$@"); [ ${#args[@]} -eq 0 ] && args=(tests -m "not parity")
export SSM_TEST_LOG="$OUT/tests.log"  # tests/conftest.py: one line per test as it finishes
schedule=(--dist load --maxschedchunk 1 --slowest-first)  # (--maxschedchunk: pytest-xdist 3.4 and later)
python3 -m pytest --help 2>/dev/null | grep -q maxschedchunk || schedule=(--dist worksteal)
timeout "${TEST_TIMEOUT:-480}" python3 -m pytest -q -n "${WORKERS:-14}" "${schedule[@]}" \
  -p no:cacheprovider -p no:benchmark --timeout="${PER_TEST_TIMEOUT:-240}" --timeout-method=thread -rfE "${args[@]}" \
  > "$OUT/pytest.log" 2>&1
rc=$?
wait $builds
cp tests/native_durations.tsv "$OUT/native_durations.tsv"
python3 -m tests.durations update "$OUT/tests.log" --into "$OUT/native_durations.tsv" \
  --header "$(head -1 "$OUT/env.txt"), $(sed -n 2p "$OUT/env.txt"), $(sed -n 3,4p "$OUT/env.txt" | paste -sd' '), \
${WORKERS:-14} xdist workers (scripts/gpu_tests.sh)"
echo "================ builds"; cat "$OUT/build.log"
echo "================ failures"
grep -E "^(failed|error)" "$OUT/tests.log" | cut -f2- | cut -c1-200 | head -${SHOW_FAILURES:-80}
echo "================ slowest"
grep -E "^(passed|failed)" "$OUT/tests.log" | sort -t$'\t' -k3 -rn | head -${SHOW_SLOWEST:-15} | cut -f3-
echo "================ summary"
cat "$OUT/env.txt"
echo "pytest rc=$rc in $(( $(date +%s) - start )) s (124 = stopped by TEST_TIMEOUT): $(tail -1 "$OUT/pytest.log")"
