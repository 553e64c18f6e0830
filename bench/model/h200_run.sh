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
if [ "$stage" = long ] || [ "$stage" = all ]; then
  timeout 300 hsa bench model ramba-370m --seq-len 64k --batch 1 --steps 3 --warmup 1 --no-compare --no-parts \
    --checkpointing on --out "$OUT/long" 2>&1 | tee "$OUT/long.log"
fi
