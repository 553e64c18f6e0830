#!/usr/bin/env bash
# One H200 call: GPU tests of the backbone fast paths, `hsa info`, then `hsa bench model` rows.
# Usage (on the device, from the repo root, with .whl carried): bash bench/model/h200_run.sh STAGE
#   STAGE = tests | ramba | compare | all   (logs and JSON go to $OUT)
set +u
. bench/device_env.sh
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
stage=${1:-all}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
if [ "$stage" = tests ] || [ "$stage" = all ]; then
  timeout 240 python3 -m pytest -q -x -m gpu tests/backbones/test_gpu.py 2>&1 | tail -15
  hsa info 2>&1 | tail -14
fi
if [ "$stage" = ramba ] || [ "$stage" = all ]; then
  timeout 420 hsa bench model ramba-370m --seq-len 4k,4k,16k --batch 1,8,2 --steps 5 --warmup 2 --no-compare \
    --out "$OUT/ramba" 2>&1 | tee "$OUT/ramba.log" | grep -v "^  (part"
fi
if [ "$stage" = compare ]; then  # GPU 0: the bars' comparisons at 4K and 64K
  timeout 330 hsa bench model ramba-370m --seq-len 4k --batch 8 --steps 5 --warmup 2 \
    --out "$OUT/compare4k" > "$OUT/compare4k.log" 2>&1
  timeout 240 hsa bench model ramba-370m --seq-len 64k --batch 1 --steps 3 --warmup 1 --no-parts \
    --checkpointing on --out "$OUT/compare64k" > "$OUT/compare64k.log" 2>&1
fi
if [ "$stage" = others ]; then  # GPU 1: the other shipped layouts, first step and tokens/s at 4K
  for spec in swa-hsa ramba-370m-multihop gla-hsa rwkv7-hsa; do
    timeout 150 hsa bench model $spec --seq-len 4k --batch 4 --steps 3 --warmup 1 --no-compare --no-parts \
      --out "$OUT/others_$spec" > "$OUT/others_$spec.log" 2>&1 || echo "$spec: exit $?" >> "$OUT/others_$spec.log"
  done
fi
