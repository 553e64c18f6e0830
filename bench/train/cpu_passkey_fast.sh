#!/usr/bin/env bash
# The few-minute CPU passkey recipe (bench/results/cpu_passkey.md, first section): ramba-cpu-passkey
# trained by a two-stage curriculum, 64 tokens (800 steps) -> 256 tokens (150 steps), the second stage
# starting from the first's weights (--init-from), then evaluated at 1x, 2x, 4x and 8x of 256 tokens.
# About 4.4 minutes of training (260-266 s measured) on the 2-core development CPU with OMP_NUM_THREADS=1
# (activate the venv first: `hsa` must be on PATH).
#
#   OMP_NUM_THREADS=1 bash bench/train/cpu_passkey_fast.sh             # RUNS=runs/cpu-fast by default
#   OMP_NUM_THREADS=1 RUNS=runs/cpu-fast-mamba2 LAYOUT=bench/train/layouts/mamba2-cpu-passkey.yaml \
#       bash bench/train/cpu_passkey_fast.sh                             # the no-HSA baseline
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/cpu-fast}
LAYOUT=${LAYOUT:-bench/train/layouts/ramba-cpu-passkey.yaml}
S1_STEPS=${S1_STEPS:-800}
S2_STEPS=${S2_STEPS:-150}
SEED=${SEED:-0}   # training seed (data and init); the results file reports seeds 0 and 1
# min_gap 32 = two chunks of ramba-cpu-passkey (set explicitly so the baseline sees the same task)
COMMON=(--task passkey --task-option min_gap=32 --checkpoint-every 1000 --no-progress --device cpu --seed "$SEED")
mkdir -p "$RUNS"
rm -rf "$RUNS/s64" "$RUNS/s256"
start=$(date +%s)
# stage 1: 64 tokens = 4 chunks of 16, all inside top-8, so the key chunk always gets gradient
hsa train "$LAYOUT" "${COMMON[@]}" --seq-len 64 --batch-size 32 --steps "$S1_STEPS" --lr 5e-3 --warmup 20 \
    --out "$RUNS/s64" | tee "$RUNS/s64.log"
# stage 2: 256 tokens (16 chunks, top-8 must now select)
hsa train "$LAYOUT" "${COMMON[@]}" --seq-len 256 --batch-size 16 --steps "$S2_STEPS" --lr 1e-3 --warmup 10 \
    --eval-every 50 --eval-samples 32 --init-from "$RUNS/s64" --out "$RUNS/s256" | tee "$RUNS/s256.log"
echo "training wall time: $(( $(date +%s) - start )) s" | tee "$RUNS/train_time.txt"
hsa eval passkey "$RUNS/s256" --lengths 256,512,1k,2k --depths 0.1,0.3,0.5,0.7,0.9 --samples 20 --device cpu \
    | tee "$RUNS/s256.eval.log"
