#!/usr/bin/env bash
# One layout of the real-text demonstration (issue 10): a language model trained at SEQ tokens on the
# prepared corpus for about TRAIN_TIME seconds, then (PK=1) a passkey fine-tune mixed with LM data
# for about PK_TIME seconds. Resumable: re-running continues from the newest checkpoints.
#   bash bench/train/realtext/lm_one.sh ramba          # ramba | mamba2 | swa-hsa; knobs via env vars
set -euo pipefail
cd "$(dirname "$0")/../../.."
name=$1
declare -A LAYOUT=([ramba]=ramba-100m [mamba2]=mamba2-100m [swa-hsa]=swa-hsa-100m)
LAYOUTS=${LAYOUTS:-bench/train/realtext/layouts}
spec="$LAYOUTS/${LAYOUT[$name]:?unknown layout name $name (ramba, mamba2, swa-hsa)}.yaml"
DATA=${DATA:-runs/realtext/data}
RUNS=${RUNS:-runs/realtext}
SEQ=${SEQ:-4096}; BATCH=${BATCH:-16}; LR=${LR:-1e-3}; WARMUP=${WARMUP:-200}; STEPS=${STEPS:-100000}
TRAIN_TIME=${TRAIN_TIME:-1080}     # seconds of LM training (the bar: <= 20 minutes); STEPS caps the fitted count
CALIB_STEPS=${CALIB_STEPS:-30}     # a short run measures tokens/s; the step count is fitted to TRAIN_TIME
                                   # (0: no calibration, train STEPS steps: equal tokens for every layout)
EVAL_EVERY=${EVAL_EVERY:-200}; EVAL_SAMPLES=${EVAL_SAMPLES:-32}; CKPT_EVERY=${CKPT_EVERY:-200}
PK=${PK:-1}; PK_TIME=${PK_TIME:-280}; PK_STEPS_MAX=${PK_STEPS_MAX:-100000}; PK_MIX=${PK_MIX:-0.5}; PK_LR=${PK_LR:-3e-4}; PK_DIGITS=${PK_DIGITS:-5}
PACKING=${PACKING:-concat}
run="$RUNS/$name"
mkdir -p "$RUNS"
common=(--data "$DATA" --seq-len "$SEQ" --batch-size "$BATCH" --packing "$PACKING" --no-progress)

fit_steps() {  # fit_steps METRICS BUDGET_S CAP: steps that fill BUDGET_S at the measured tokens/s (x0.9)
  python3 - "$1" "$2" "$SEQ" "$BATCH" "$3" <<'PY'
import json, statistics, sys
path, budget, seq, batch, cap = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
tps = [r["tokens_per_s"] for r in map(json.loads, open(path)) if "tokens_per_s" in r][3:] or [1.0]
print(min(cap, max(10, int(0.9 * budget * statistics.median(tps) / (batch * seq)))))
PY
}

if [ ! -d "$run/checkpoints" ] && [ "$CALIB_STEPS" -gt 0 ]; then
  echo "=== $name calibration: $CALIB_STEPS steps ($(date -u +%H:%M:%S))"
  rm -rf "$run.calib"
  hsa train "$spec" "${common[@]}" --steps "$CALIB_STEPS" --warmup 1 --lr "$LR" --checkpoint-every 0 \
      --out "$run.calib" 2>&1 | tee -a "$run.train.log"
  STEPS=$(fit_steps "$run.calib/metrics.jsonl" "$TRAIN_TIME" "$STEPS")
  rm -rf "$run.calib"
fi
# on --resume the run keeps its own step count (--steps would set a new total)
resume=(--steps "$STEPS"); [ -d "$run/checkpoints" ] && resume=(--resume)
echo "=== $name LM: $SEQ tokens x $BATCH, ${resume[*]}, at most ${TRAIN_TIME}s ($(date -u +%H:%M:%S))"
hsa train "$spec" "${common[@]}" --lr "$LR" --warmup "$WARMUP" --eval-every "$EVAL_EVERY" \
    --eval-samples "$EVAL_SAMPLES" --checkpoint-every "$CKPT_EVERY" --time-limit "$TRAIN_TIME" "${resume[@]}" \
    --out "$run" 2>&1 | tee -a "$run.train.log"

if [ "$PK" = 1 ]; then
  pk="$run.pk"
  PK_STEPS=$(fit_steps "$run/metrics.jsonl" "$PK_TIME" "$PK_STEPS_MAX")
  echo "=== $name passkey fine-tune: mix $PK_MIX, $PK_STEPS steps, at most ${PK_TIME}s ($(date -u +%H:%M:%S))"
  resume=(--steps "$PK_STEPS"); [ -d "$pk/checkpoints" ] && resume=(--resume)
  hsa train "$spec" "${common[@]}" --passkey-mix "$PK_MIX" --task-option "digits=$PK_DIGITS" --init-from "$run" \
      --lr "$PK_LR" --warmup 20 --eval-every "$PK_STEPS" --eval-samples 16 \
      --eval-lengths "$SEQ" --checkpoint-every 100 --time-limit "$PK_TIME" "${resume[@]}" \
      --out "$pk" 2>&1 | tee -a "$run.train.log"
fi
