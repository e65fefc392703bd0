#!/usr/bin/env bash
# Device-tool steps of session 4. STEPS picks what runs (space-separated): conv decode scan_cuda scan_triton ssd
# bench graph.
# Logs under $OUT; a short summary prints last.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD SSM_KERNELS_CACHE=/tmp/ssm_cache
[ -d peers ] && export SSM_PEERS_DIR=$PWD/peers
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$OUT/gpu.txt"
for step in ${STEPS:-conv decode}; do
  case $step in
    conv)
      timeout 200 python3 scripts/gpu_parity.py --ops causal_conv1d,updates --out "$OUT/parity_conv" > "$OUT/parity_conv.log" 2>&1
      echo "parity conv rc=$?"; sed -n '/================ worst/,$p' "$OUT/parity_conv.log"
      timeout 200 python3 scripts/tune_causal_conv1d.py --quick > "$OUT/tune_conv.log" 2>&1; echo "tune conv rc=$?"
      tail -40 "$OUT/tune_conv.log";;
    decode)
      timeout 120 python3 -m pytest -q -x tests/ssm_universal/test_models.py -k cuda_graph > "$OUT/cuda_graph_test.log" 2>&1
      echo "cuda graph test rc=$?"; tail -5 "$OUT/cuda_graph_test.log"
      timeout 150 python3 scripts/gpu_decode_probe.py > "$OUT/decode.log" 2>&1; echo "decode rc=$?"; cat "$OUT/decode.log";;
    scan_cuda)
      timeout 300 python3 scripts/check_selective_scan_cuda.py > "$OUT/scan_cuda.log" 2>&1; echo "scan cuda rc=$?"
      tail -60 "$OUT/scan_cuda.log";;
    scan_triton)
      timeout 240 python3 scripts/gpu_parity.py --ops selective_scan --backends triton --quick --out "$OUT/parity_scan" > "$OUT/parity_scan.log" 2>&1
      echo "parity scan rc=$?"; sed -n '/================ worst/,$p' "$OUT/parity_scan.log"
      timeout 240 python3 scripts/tune_selective_scan.py > "$OUT/tune_scan.log" 2>&1; echo "tune scan rc=$?"; tail -40 "$OUT/tune_scan.log";;
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
    graph)
      timeout 150 python3 -m pytest -q tests/ssm_universal/test_models.py -k cuda_graph > "$OUT/cuda_graph_test.log" 2>&1
      echo "cuda graph test rc=$?"; tail -8 "$OUT/cuda_graph_test.log";;
    ssd)
      timeout 300 python3 scripts/check_ssd_bwd.py > "$OUT/ssd.log" 2>&1; echo "ssd rc=$?"; tail -60 "$OUT/ssd.log";;
  esac
done
