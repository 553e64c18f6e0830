#!/usr/bin/env bash
# The CPU passkey result (bench/results/cpu_passkey.md): a Mamba2 + HSA model trained on this 2-core
# CPU with a short-to-long curriculum (128 -> 256 -> 512 tokens, each stage starting from the previous
# stage's weights with --init-from), then evaluated at 1x..8x the final training length.
#
#   OMP_NUM_THREADS=1 bash bench/train/cpu_passkey.sh              # RUNS=runs/cpu by default
#   OMP_NUM_THREADS=1 RUNS=runs/cpu-mamba2 LAYOUT=bench/train/layouts/mamba2-cpu-passkey.yaml \
#       bash bench/train/cpu_passkey.sh                              # the no-HSA baseline
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/cpu}
LAYOUT=${LAYOUT:-bench/train/layouts/ramba-cpu-passkey.yaml}   # the baseline: LAYOUT=bench/train/layouts/mamba2-cpu-passkey.yaml
# min_gap 32 = two chunks of ramba-cpu-passkey (set explicitly so the baseline sees the same task)
COMMON=(--task passkey --task-option min_gap=32 --warmup 10 --checkpoint-every 100 --no-progress --device cpu)
mkdir -p "$RUNS"
rm -rf "$RUNS/s128" "$RUNS/s256" "$RUNS/s512"
start=$(date +%s)
hsa train "$LAYOUT" "${COMMON[@]}" --seq-len 128 --batch-size 32 --steps 600 --lr 3e-3 --warmup 20 \
    --out "$RUNS/s128" | tee "$RUNS/s128.log"
hsa train "$LAYOUT" "${COMMON[@]}" --seq-len 256 --batch-size 16 --steps 200 --lr 1e-3 \
    --init-from "$RUNS/s128" --out "$RUNS/s256" | tee "$RUNS/s256.log"
hsa train "$LAYOUT" "${COMMON[@]}" --seq-len 512 --batch-size 16 --steps 300 --lr 1e-3 --eval-every 100 \
    --eval-samples 32 --init-from "$RUNS/s256" --out "$RUNS/s512" | tee "$RUNS/s512.log"
echo "training wall time: $(( $(date +%s) - start )) s" | tee "$RUNS/train_time.txt"
hsa eval passkey "$RUNS/s512" --lengths 512,1k,2k,4k --depths 0.1,0.3,0.5,0.7,0.9 --samples 20 \
    | tee "$RUNS/s512.eval.log"
