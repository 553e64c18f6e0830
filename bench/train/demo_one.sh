#!/usr/bin/env bash
# Train one layout of the passkey demonstration (two-stage curriculum) and evaluate it.
# Called by run_demo.sh once per layout (one GPU each); usable alone:
#   bash bench/train/demo_one.sh ramba-mem0            # RUNS=runs/demo, knobs below via env vars
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1
declare -A LAYOUT=([ramba]=ramba-demo [ramba-mem0]=ramba-demo-mem0 [ramba-sm]=ramba-demo-sm [ramba-sm-shared]=ramba-demo-sm-shared [mamba2]=mamba2-demo [swa-hsa]=swa-hsa-demo)
spec="bench/train/layouts/${LAYOUT[$name]:?unknown layout name $name (ramba, ramba-mem0, ramba-sm, ramba-sm-shared, mamba2, swa-hsa)}.yaml"

RUNS=${RUNS:-runs/demo}
# Stage 1: 512 tokens (7 visible chunks of 64 < top-8, so the key chunk always gets gradient);
# stage 2: 4K tokens starting from stage 1's weights (--init-from).
SHORT_SEQ=${SHORT_SEQ:-512}; SHORT_STEPS=${SHORT_STEPS:-600}; SHORT_BATCH=${SHORT_BATCH:-64}; SHORT_LR=${SHORT_LR:-2e-3}
SEQ=${SEQ:-4096}; STEPS=${STEPS:-900}; BATCH=${BATCH:-16}; LR=${LR:-1e-3}
RESET=${RESET:-}              # e.g. RESET=1024: backbone state reset inside the 4K sequences (HSA layouts only)
LENGTHS=${LENGTHS:-4k,16k,64k,256k,1m}
RANDOM_LENGTHS=${RANDOM_LENGTHS-4k,16k,64k}    # non-periodic filler (set but empty: skip)
DEPTHS=${DEPTHS:-0.1,0.3,0.5,0.7,0.9}
SAMPLES=${SAMPLES:-20}
SEGMENT=${SEGMENT:-16384}
BATCH_TOKENS=${BATCH_TOKENS:-16777216}         # 16 sequences of 1M tokens per forward
# Wall-clock limits (s) per stage, so that a run fits a fixed device lease: training stops at the
# limit with a checkpoint and its model (hsa train --time-limit); eval starts no further length.
S1_TIME=${S1_TIME:-}; S2_TIME=${S2_TIME:-}; EVAL_TIME=${EVAL_TIME:-}; RANDOM_EVAL_TIME=${RANDOM_EVAL_TIME:-}
lim() { [ -n "$1" ] && echo "--time-limit $1"; true; }
TASKOPTS=(--task-option min_gap=128 --task-option key_len=${KEY_LEN:-4})
run="$RUNS/$name"
mkdir -p "$RUNS"
extra=()
[ -n "$RESET" ] && [ "$name" != mamba2 ] && extra=(--state-reset-every "$RESET")

echo "=== $name stage 1: $SHORT_SEQ tokens, $SHORT_STEPS steps ($(date -u +%H:%M:%S))"
resume=(); [ -f "$run.short/checkpoints/latest" ] && resume=(--resume)  # a complete checkpoint exists
hsa train "$spec" --task passkey --seq-len "$SHORT_SEQ" --batch-size "$SHORT_BATCH" --steps "$SHORT_STEPS" \
    --lr "$SHORT_LR" --warmup 50 --eval-every 200 --eval-samples 32 --checkpoint-every 200 "${TASKOPTS[@]}" \
    "${resume[@]}" $(lim "$S1_TIME") --no-progress --out "$run.short" 2>&1 | tee -a "$run.train.log"
if [ -n "$S2_TIME" ]; then
  # Fit the stage-2 schedule into S2_TIME: steps from stage 1's measured tokens/s (x0.8 for the longer
  # sequences and the periodic evals), at most STEPS, so that the cosine schedule completes; the
  # time limit stays as a safety net.
  STEPS=$(python3 - "$run.short/metrics.jsonl" "$S2_TIME" "$BATCH" "$SEQ" "$STEPS" <<'PY'
import json, statistics, sys
path, budget, batch, seq, cap = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
tps = [r["tokens_per_s"] for r in map(json.loads, open(path)) if "tokens_per_s" in r][-50:]
print(min(cap, max(10, int(0.8 * budget * statistics.median(tps) / (batch * seq)))))
PY
)
fi
echo "=== $name stage 2: $SEQ tokens, $STEPS steps ($(date -u +%H:%M:%S))"
resume=(); [ -f "$run/checkpoints/latest" ] && resume=(--resume)  # a complete checkpoint exists
hsa train "$spec" --task passkey --seq-len "$SEQ" --batch-size "$BATCH" --steps "$STEPS" --lr "$LR" \
    --warmup 50 --eval-every 300 --eval-samples 32 --checkpoint-every 300 "${TASKOPTS[@]}" "${extra[@]}" \
    --init-from "$run.short" "${resume[@]}" $(lim "$S2_TIME") --no-progress --out "$run" 2>&1 | tee -a "$run.train.log"
echo "=== $name eval ($(date -u +%H:%M:%S))"
hsa eval passkey "$run" --lengths "$LENGTHS" --depths "$DEPTHS" --samples "$SAMPLES" \
    --segment-len "$SEGMENT" --batch-tokens "$BATCH_TOKENS" $(lim "$EVAL_TIME") 2>&1 | tee "$run.eval.log"
if [ -n "$RANDOM_LENGTHS" ]; then
  echo "=== $name eval, random filler ($(date -u +%H:%M:%S))"
  hsa eval passkey "$run" --lengths "$RANDOM_LENGTHS" --depths "$DEPTHS" --samples "$SAMPLES" \
      --segment-len "$SEGMENT" --batch-tokens "$BATCH_TOKENS" --task-option filler=random $(lim "$RANDOM_EVAL_TIME") \
      --out "$run/random_filler" 2>&1 | tee "$run.eval_random.log"
fi
echo "=== $name done ($(date -u +%H:%M:%S))"
