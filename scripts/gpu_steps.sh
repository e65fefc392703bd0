#!/usr/bin/env bash
# Native GPU checks that are not tests yet, in one device-tool call: STEPS picks what runs (space-separated, in
# that order); logs under $OUT, short summaries on stdout. Tuning, profiles, the decode probe and benchmarks are
# `python -m benchmarks [tune OP | profile | decode | --op OP]`; the test suite is scripts/gpu_tests.sh.
#   parity      scripts/gpu_parity.py over every GPU backend, one process per job in PARITY_OPS, side by side: a job
#               is op[:backend[:dtype]] (e.g. selective_scan:triton:bfloat16; ops joined by commas share a process)
#               (PARITY_ARGS, e.g. "--quick" or "--match L65536"; a log per job, cut ones say how far they got)
#   scan_cuda   scripts/check_selective_scan_cuda.py --quick and the CUDA selective_scan tests
#   ssd         scripts/check_ssd_bwd.py (SSD_ARGS, e.g. --skip-parity)
#   bench       python -m benchmarks per op beside the peers (BENCH_TIMEOUT per op)
# A carried ./peers (../shared/tools/peer_packages.sh, benchmarks/build_peer_objects.sh) adds the peers.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SSM_KERNELS_CACHE=/tmp/ssm_cache
[ -d peers ] && export SSM_PEERS_DIR=$PWD/peers
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$OUT/gpu.txt"
git rev-parse --short HEAD >> "$OUT/gpu.txt" 2>/dev/null
cat "$OUT/gpu.txt"
for step in ${STEPS:-scan_cuda}; do
  case $step in
    parity)  # one process per op, side by side: Triton compiles dominate and use one core each
      for job in ${PARITY_OPS:-ssd_chunk_scan selective_scan causal_conv1d gated_rmsnorm,updates}; do
        IFS=: read -r op backend dtype <<< "$job"; name=${job//[,:]/_}
        timeout "${PARITY_TIMEOUT:-400}" python3 scripts/gpu_parity.py --ops "$op" --out "$OUT/parity_$name" \
          ${backend:+--backends "$backend"} ${dtype:+--dtypes "$dtype"} ${PARITY_ARGS:-} > "$OUT/parity_$name.log" 2>&1 &
      done
      wait
      # the JSON of every op in one archive: the device tool brings back at most 8 files
      (cd "$OUT" && tar czf parity_json.tgz parity_*/ && rm -rf parity_*/)
      for log in "$OUT"/parity_*.log; do
        echo "== $log ($(grep -c . "$log") lines)"; sed -n '/================ worst/,$p' "$log"
      done;;
    scan_cuda)
      timeout 200 python3 scripts/check_selective_scan_cuda.py --quick > "$OUT/scan_cuda.log" 2>&1
      echo "scan cuda check rc=$?"; tail -12 "$OUT/scan_cuda.log"
      timeout 150 python3 -m pytest -q tests/selective_scan -k "cuda and not validation" > "$OUT/scan_cuda_pytest.log" 2>&1
      echo "scan cuda pytest rc=$?"; tail -3 "$OUT/scan_cuda_pytest.log";;
    ssd)
      timeout 300 python3 scripts/check_ssd_bwd.py ${SSD_ARGS:-} > "$OUT/ssd.log" 2>&1; echo "ssd rc=$?"; tail -30 "$OUT/ssd.log";;
    bench)
      for spec in "causal_conv1d triton cuda peer:causal_conv1d" "selective_scan triton cuda peer:mamba_ssm" \
                  "ssd_chunk_scan triton peer:mamba_ssm peer:fla" "selective_state_update triton peer:mamba_ssm" \
                  "causal_conv1d_update triton peer:causal_conv1d"; do
        set -- $spec; op=$1; shift
        only=(); for v in "$@"; do only+=(--only "$v"); done
        timeout "${BENCH_TIMEOUT:-150}" python3 -m benchmarks --op "$op" --peers "${only[@]}" \
          --json "$OUT/bench_$op.json" >> "$OUT/bench.txt" 2>> "$OUT/bench.err"; echo "bench $op rc=$?"
      done
      grep -v "^#" "$OUT/bench.txt" | grep -v "^op "; grep -v "^done" "$OUT/bench.err" | tail -5;;
    *) echo "unknown step $step";;
  esac
done
