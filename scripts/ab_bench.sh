#!/usr/bin/env bash
# A change against a base commit on one GPU machine, in one call: the base tree (git archive of $BASE) and this
# working tree each build their CUDA extensions in their own cache (both at once), then `python -m benchmarks ARGS`
# runs in the base tree and in this one, one after the other on the same GPU, so the two are compared on the same
# card, clocks and torch (timings from different machines are not comparable). Logs in $OUT (default
# /tmp/ab_out): base.txt, change.txt, the builds'; the last lines printed are both tables' rows.
# BASE_TREE=<folder> takes a base tree made elsewhere instead (`git archive <commit> | tar x -C <folder>` on a machine
# whose repository has the commit: a GPU machine's copy of the repository may lack recent commits).
#   usage: BASE=<commit> | BASE_TREE=<folder> [EXTS="fftconv causal_conv1d"] bash scripts/ab_bench.sh --op OP [...]
set -uo pipefail
OUT=${OUT:-/tmp/ab_out}; mkdir -p "$OUT"
here=$PWD
if [ -n "${BASE_TREE:-}" ]; then
  base=$(cd "$BASE_TREE" && pwd) BASE=${BASE:-$BASE_TREE}
else
  : "${BASE:?set BASE to the commit to compare against, or BASE_TREE to a folder holding its files}"
  base=$(mktemp -d)
  git archive "$BASE" | tar x -C "$base" || { echo "cannot archive $BASE"; exit 2; }
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
build() {  # build TREE CACHE LOG: every extension named in EXTS (default: all of the tree's)
  (cd "$1" && SSM_KERNELS_CACHE=$2 PYTHONPATH=$1 python3 - "${EXTS:-}" > "$3" 2>&1 <<'PY'
import sys
from ssm_kernels import _cuda_ext
for name in sys.argv[1].split() or _cuda_ext.cuda_extension_names():
    print(name, _cuda_ext.load(name))
PY
  )
}
build "$base" /tmp/ab_cache_base "$OUT/build_base.log" &
build "$here" /tmp/ab_cache_change "$OUT/build_change.log" &
wait
for side in base change; do
  tree=$([ $side = base ] && echo "$base" || echo "$here")
  (cd "$tree" && SSM_KERNELS_CACHE=/tmp/ab_cache_$side PYTHONPATH=$tree python3 -m benchmarks "$@" > "$OUT/$side.txt" 2>&1)
done
for side in base change; do
  echo "== $side ($([ $side = base ] && echo "$BASE" || git rev-parse --short HEAD 2>/dev/null))"
  grep -v "^done:" "$OUT/$side.txt" | tail -n +2
done
