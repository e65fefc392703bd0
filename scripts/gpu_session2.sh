#!/usr/bin/env bash
# Device-tool steps for issues 5/6. MODE=parity: native parity of every GPU backend against the sequential
# reference (scripts/gpu_parity.py). MODE=bench: the selective_scan and SSD benchmarks beside the peers.
# Logs under $OUT (also packed in logs.tgz); the summary prints last.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SSM_KERNELS_CACHE=/tmp/ssm_cache
[ -d peers ] && export SSM_PEERS_DIR=$PWD/peers
if [ "${MODE:-parity}" = parity ]; then
  python3 -c "from ssm_kernels import _cuda_ext; print(_cuda_ext.load('causal_conv1d'))" > "$OUT/build.log" 2>&1
  timeout "${PARITY_TIMEOUT:-540}" python3 scripts/gpu_parity.py --out "$OUT" ${PARITY_ARGS:-} > "$OUT/parity.log" 2>&1
  echo "parity rc=$?"
  tar czf /tmp/logs.tgz -C "$OUT" . 2>/dev/null && mv /tmp/logs.tgz "$OUT/"
  sed -n '/================ worst/,$p' "$OUT/parity.log"
  grep -E "Error" "$OUT/parity.log" | sort | uniq -c | head -20
else
  for spec in "selective_scan triton peer:mamba_ssm" "ssd_chunk_scan triton peer:mamba_ssm peer:fla"; do
    set -- $spec; op=$1; shift
    only=(); for v in "$@"; do only+=(--only "$v"); done
    timeout "${BENCH_TIMEOUT:-240}" python3 -m benchmarks --op "$op" --peers "${only[@]}" \
      --json "$OUT/bench_$op.json" >> "$OUT/bench.txt" 2>> "$OUT/bench.err"; echo "bench $op rc=$?"
  done
  ${EXTRA:-true}
  grep -v "^#" "$OUT/bench.txt" | grep -v "^op "
  grep -v "^done" "$OUT/bench.err" | tail -8
fi
