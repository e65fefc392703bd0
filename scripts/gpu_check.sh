#!/usr/bin/env bash
# One device-tool call on the GPU machine: build the csrc extension(s), report, run the test suite natively,
# the quickstart demo and the benchmarks; full logs under $OUT, a short summary printed last.
#   usage (device tool): [SKIP_AOT=1] [BENCH_OPS="op ..."] [TEST_TIMEOUT=s] bash scripts/gpu_check.sh [pytest args...]
#   (default: the whole suite; BENCH_OPS default causal_conv1d; with a carried ./peers the benchmarks add the
#   peers, linking their CUDA extensions from peers/objs: scripts/build_peer_objects.sh)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SSM_KERNELS_CACHE=/tmp/ssm_cache
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee "$OUT/versions.txt"

start=$(date +%s)
python3 -c "from ssm_kernels import _cuda_ext; print(_cuda_ext.load('causal_conv1d'))" > "$OUT/build.log" 2>&1
summary "build csrc/causal_conv1d: rc=$? in $(( $(date +%s) - start )) s: $(tail -1 "$OUT/build.log")"

python3 -m ssm_kernels > "$OUT/report.txt" 2>&1
summary "python -m ssm_kernels: rc=$?"

tests=("$@"); [ ${#tests[@]} -eq 0 ] && tests=(tests)
timeout "${TEST_TIMEOUT:-400}" python3 -m pytest -q -rs "${tests[@]}" > "$OUT/pytest.log" 2>&1
summary "pytest ${tests[*]}: rc=$? $(tail -1 "$OUT/pytest.log")"

python3 -m ssm_universal.demo > "$OUT/demo.log" 2>&1
summary "demo: rc=$? $(tail -1 "$OUT/demo.log")"

peer_flag=(); [ -d peers ] && { export SSM_PEERS_DIR=$PWD/peers; peer_flag=(--peers); }
for op in ${BENCH_OPS:-causal_conv1d}; do
  timeout "${BENCH_TIMEOUT:-300}" python3 -m benchmarks --op "$op" "${peer_flag[@]}" --json "$OUT/bench_$op.json" \
    >> "$OUT/bench.txt" 2>> "$OUT/bench.err"
  summary "benchmark $op: rc=$?"
done

# Ahead-of-time build through setup.py, then check the prebuilt library is what gets loaded.
if [ "${SKIP_AOT:-0}" != 1 ]; then
start=$(date +%s)
SSM_KERNELS_BUILD_CUDA=1 python3 setup.py -q build_ext --inplace > "$OUT/aot_build.log" 2>&1
rc=$?
python3 -c "from ssm_kernels import _cuda_ext; print(_cuda_ext.load('causal_conv1d'))" >> "$OUT/aot_build.log" 2>&1
summary "AOT build: rc=$rc in $(( $(date +%s) - start )) s: $(tail -1 "$OUT/aot_build.log")"
rm -f ssm_kernels/_C_*.so
fi

echo "================ report"; cat "$OUT/report.txt"
echo "================ failures"; grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -30
echo "================ demo"; cat "$OUT/demo.log"
echo "================ benchmarks"; grep -v "^#" "$OUT/bench.txt" | grep -v "^op " 
echo "================ summary"; cat "$OUT/summary.txt"
