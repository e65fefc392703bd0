#!/usr/bin/env bash
# Cross-compile the peers' CUDA kernels that the H100 benchmarks compare against (mamba_ssm 2.3.2's selective
# scan, bf16/fp32 real; causal-conv1d 1.7.0) into PEERS/objs for sm_90, on any machine with nvcc, against the
# GPU machine's torch headers (TORCH_INCLUDE: torch/include of the same torch version, e.g. unpacked from its
# wheel). benchmarks/peers.py links them on the GPU machine. Saves the ~8 minutes of GPU-machine time that
# building mamba_ssm costs.   usage: TORCH_INCLUDE=... benchmarks/build_peer_objects.sh [PEERS=./peers]
set -u
PEERS=${1:-peers}
T=${TORCH_INCLUDE:?set TORCH_INCLUDE to the GPU torch version's torch/include}
CUDA=$(dirname "$(dirname "$(command -v nvcc)")")
OUTD=$PEERS/objs
mkdir -p "$OUTD"
FLAGS=(-O3 -std=c++17 -gencode arch=compute_90,code=sm_90 --use_fast_math -lineinfo --expt-relaxed-constexpr
       --expt-extended-lambda -U__CUDA_NO_HALF_OPERATORS__ -U__CUDA_NO_HALF_CONVERSIONS__
       -U__CUDA_NO_BFLOAT16_OPERATORS__ -U__CUDA_NO_BFLOAT16_CONVERSIONS__ -U__CUDA_NO_BFLOAT162_OPERATORS__
       -U__CUDA_NO_BFLOAT162_CONVERSIONS__ -D_GLIBCXX_USE_CXX11_ABI=1 -Xcompiler -fPIC
       -I"$T" -I"$T/torch/csrc/api/include" -I"$CUDA/include")
compile() {  # src name
  local start=$SECONDS
  nvcc "${FLAGS[@]}" -I"$(dirname "$1")" -c "$1" -o "$OUTD/$2.o" > "$OUTD/$2.log" 2>&1
  echo "$2 rc=$? $((SECONDS - start)) s" | tee -a "$OUTD/times.txt"
}
for f in fwd_bf16 fwd_fp32 bwd_bf16_real bwd_fp32_real; do
  compile "$PEERS/mamba/csrc/selective_scan/selective_scan_$f.cu" "ss_$f"
done
for f in fwd bwd update; do compile "$PEERS/cconv/csrc/causal_conv1d_$f.cu" "cc_$f"; done
