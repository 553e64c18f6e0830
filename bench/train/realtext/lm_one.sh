#!/usr/bin/env bash
# One layout of the real-text demonstration (README.md beside this file): a language model trained at
# SEQ tokens on the prepared corpus for about TRAIN_TIME seconds, then (PK=1) a passkey fine-tune
# mixed with LM data for about PK_TIME seconds. Resumable: re-running continues from the newest
# checkpoints (a stage killed midway gets what is left of its time) and skips the stages that have
# ended.
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
PK=${PK:-1}; PK_TIME=${PK_TIME:-280}; PK_BATCH=${PK_BATCH:-$BATCH}; PK_STEPS_MAX=${PK_STEPS_MAX:-100000}; PK_MIX=${PK_MIX:-0.5}; PK_LR=${PK_LR:-1e-3}; PK_DIGITS=${PK_DIGITS:-5}
# PK_TPS: the tokens/s to plan the fine-tune's steps with, instead of the LM run's measured rate. The
# shorter of two LMs trained at once on one GPU never ran alone, so its rate under-measures the fine-tune
# (which runs alone): planned from it, the fine-tune would run out of steps long before its time.
PK_TPS=${PK_TPS:-}
# The short stage (PK_SHORT_TIME seconds of PK_TIME at PK_SHORT_SEQ tokens, first) makes every passkey
# sample need HSA and lets the selection choose every chunk it may see, so the key's chunk always gets
# gradient. Its length: top-k x chunk size (8 x 64) plus the retrieval window (swa-hsa skips the 512
# tokens its window covers). Its minimum gap between the key and the question: past the window (with the
# default gap, 2 chunks, about half of swa-hsa's 1,024-token samples put the key inside its window, where
# the sliding window answers and HSA learns nothing: run 3). swa-hsa gets the longer stage.
# Every short stage runs at 1e-3. Run 5 gave swa-hsa's 2e-3 (meant to leave the plateau that its old
# memory, built after the SWA layers, kept it on): its validation ppl went 48.8 -> 125.8 in that stage
# and its memory's keys collapsed (in-chunk cosine 0.10 -> 1.00; bench/results/h200_realtext/README.md).
# PK_FREEZE: regular expressions of parameters both passkey stages leave untrained (hsa train --freeze).
# swa-hsa keeps the memory its LM phase learned ('^memories\.'): run 6 scored 82-95% in every cell to 64K
# with it, run 5 25-38% without it, when the fine-tune folded its memory's keys into one direction
# (in-chunk cosine 1.00; frozen: 0.31). ramba too since run 7: its farthest cell (64K, depth 0.1) went
# from 70% to 87.5%. Freezing the (tied) embeddings as well stops swa-hsa from learning the passkey at
# all (run 7: 0% in both stages). PK_FREEZE= (empty) trains everything.
# PK_BATCH: sequences per step of the SEQ-token passkey stage (default BATCH; the short stage keeps the
# same tokens per step). Half the batch gives twice the steps in the same PK_TIME.
# PK_STATE_RESET: the backbone (Mamba2) state is zeroed every this many tokens inside every passkey-stage
# sequence while the chunk memory carries on (hsa train --state-reset-every; the paper's trick), so that
# a key further back than that can only be read through HSA. ramba since run 11: in run 10 (digits one
# token each) its Mamba2 state carried the 5-digit key itself, up to about 8K tokens (64K at depth 0.9,
# the key 6.5K back: 99%; 16K at depth 0.1, 14.7K back: 26%; 64K at depth 0.1 and 0.5: 0%), and its
# selection found the key's chunk at 0-4% of the answer positions: the fine-tune never needed HSA, as
# every key of a 4K sample is within reach of the state. swa-hsa's window (512 tokens) does the same by
# construction, and it scored 94-100% in every cell. 512 = swa-hsa's window; the short stage mirrors its
# stage too (1,024 tokens, the key at least 520 back: always past a reset).
declare -A STATE_RESET=([ramba]=512 [mamba2]='' [swa-hsa]='')
declare -A SHORT_SEQ=([ramba]=1024 [mamba2]=512 [swa-hsa]=1024)
declare -A SHORT_GAP=([ramba]=520 [mamba2]=0 [swa-hsa]=520)
# ramba's short stage: 40 s until run 9 (its first step took 38 of them, 9 steps), 50 s in run 10 (29 s of
# compiling, 84 steps); from run 11 on, 100 s like swa-hsa's.
declare -A SHORT_TIME=([ramba]=100 [mamba2]=40 [swa-hsa]=100)
declare -A SHORT_LR=([ramba]=1e-3 [mamba2]=1e-3 [swa-hsa]=1e-3)
declare -A FREEZE=([ramba]='^memories\.' [mamba2]='' [swa-hsa]='^memories\.')
PK_FREEZE=${PK_FREEZE-${FREEZE[$name]}}
PK_STATE_RESET=${PK_STATE_RESET-${STATE_RESET[$name]}}
PK_SHORT_SEQ=${PK_SHORT_SEQ:-${SHORT_SEQ[$name]}}
PK_SHORT_GAP=${PK_SHORT_GAP:-${SHORT_GAP[$name]}}  # 0: the task's default (2 chunks)
PK_SHORT_TIME=${PK_SHORT_TIME:-${SHORT_TIME[$name]}}
PK_SHORT_LR=${PK_SHORT_LR:-${SHORT_LR[$name]}}
if [ "$PK" = 1 ] && [ "$PK_SHORT_TIME" -ge "$PK_TIME" ]; then
  echo "lm_one.sh $name: PK_SHORT_TIME=$PK_SHORT_TIME s leaves nothing of PK_TIME=$PK_TIME s for the $SEQ-token stage" \
       "(set PK_SHORT_TIME below PK_TIME, or 0 to skip the short stage)" >&2
  exit 2
fi
PK_STAGES=${PK_STAGES:-short long} # "short" alone: a first device call; "long": the next one (run_all.sh)
PACKING=${PACKING:-concat}
run="$RUNS/$name"
mkdir -p "$RUNS"
common=(--data "$DATA" --seq-len "$SEQ" --batch-size "$BATCH" --packing "$PACKING" --no-progress)

fit_steps() {  # fit_steps METRICS BUDGET_S CAP [QUANTILE [BATCH]]: steps of BATCH x SEQ tokens that fill BUDGET_S at the measured tokens/s (x0.9)
  # QUANTILE of the per-step tokens/s (default 0.5). The fine-tunes use 0.9: the LM run may have shared its
  # GPU with another layout for a while, and the fine-tune runs alone (run 2: median 110K, alone 240K).
  # FIT_TPS set: that rate instead of the measured one
  FIT_TPS=${FIT_TPS:-} python3 - "$1" "$2" "$SEQ" "${5:-$BATCH}" "$3" "${4:-0.5}" <<'PY'
import json, os, sys
path, budget, seq, batch, cap, q = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
if os.environ.get("FIT_TPS"):
    rate = float(os.environ["FIT_TPS"])
else:
    tps = sorted([r["tokens_per_s"] for r in map(json.loads, open(path)) if "tokens_per_s" in r][3:]) or [1.0]
    rate = tps[min(len(tps) - 1, int(q * len(tps)))]
print(min(cap, max(10, int(0.9 * budget * rate / (batch * seq)))))
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

seconds_used() {  # seconds_used METRICS: the wall time a stage's processes used so far (0 if none)
  python3 - "$1" <<'PY'
import json, sys
try:
    times = [r["time"] for r in map(json.loads, open(sys.argv[1])) if "time" in r]
except OSError:
    times = []
# each process counts "time" from its own start: a value below the one before begins a new process
used = sum(a for a, b in zip(times, times[1:] + [0.0]) if b < a)
print(int(used))
PY
}

pk_stage() {  # pk_stage OUT INIT SEQ_LEN TIME_S LR [MIN_GAP]: one passkey fine-tune stage (resumable), same tokens per step
  local out=$1 init=$2 seq=$3 secs=$4 lr=$5 gap=${6:-0} steps resume opts=(--task-option "digits=$PK_DIGITS") f used
  # A stage that published its model has ended (its steps or its time limit): a re-run of the pipeline
  # (after its driver died, say) goes on to what is left instead of training it again.
  if [ -d "$out/model" ]; then
    echo "=== $name: $out has ended (its model is published); not run again"
    return 0
  fi
  [ "$gap" -gt 0 ] && opts+=(--task-option "min_gap=$gap")
  for f in ${PK_FREEZE:-}; do opts+=(--freeze "$f"); done
  [ -n "$PK_STATE_RESET" ] && opts+=(--state-reset-every "$PK_STATE_RESET")
  # The planned count is an upper bound: hsa train --fit-to-time measures the stage's own speed over its
  # warm-up and shortens the run so that its cosine schedule ends at the stage's time limit (run 11's
  # ramba stages, with the state reset, run at a speed not measured before). Twice the plan leaves room
  # for a stage faster than planned.
  steps=$(( 2 * $(FIT_TPS=$PK_TPS fit_steps "$run/metrics.jsonl" "$secs" "$PK_STEPS_MAX" 0.9 "$PK_BATCH") ))
  resume=(--steps "$steps")
  if [ -d "$out/checkpoints" ]; then
    # killed mid-stage: the resumed process gets what is left of the stage's time, not all of it again
    used=$(seconds_used "$out/metrics.jsonl")
    secs=$((secs > used + 1 ? secs - used : 1))
    resume=(--resume)
  fi
  echo "=== $name passkey fine-tune at $seq tokens: mix $PK_MIX, lr $lr, at most $steps steps (fitted to the time), ${secs}s, state reset every ${PK_STATE_RESET:-(none)} ($(date -u +%H:%M:%S))"
  hsa train "$spec" --data "$DATA" --seq-len "$seq" --batch-size $((PK_BATCH * SEQ >= seq ? PK_BATCH * SEQ / seq : 1)) --packing "$PACKING" \
      --no-progress --passkey-mix "$PK_MIX" "${opts[@]}" --init-from "$init" \
      --lr "$lr" --warmup 20 --eval-every "$steps" --eval-samples 16 --eval-lengths "$seq" \
      --checkpoint-every 100 --time-limit "$secs" --fit-to-time "${resume[@]}" --out "$out" 2>&1 | tee -a "$run.train.log"
}
lm_finished() {  # the LM run has reached its step count (a --time-limit stop leaves it short: resume first)
  python3 - "$run" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
try:
    total = json.loads((run / "train_config.json").read_text())["config"]["steps"]
    latest = (run / "checkpoints" / "latest").read_text().strip()
except (OSError, KeyError, ValueError):
    sys.exit(1)
sys.exit(0 if int(latest.rsplit("_", 1)[-1]) >= total else 1)
PY
}
if ! lm_finished; then
  # on --resume the run keeps its own step count (--steps would set a new total)
  resume=(--steps "$STEPS"); [ -d "$run/checkpoints" ] && resume=(--resume)
  echo "=== $name LM: $SEQ tokens x $BATCH, ${resume[*]}, at most ${TRAIN_TIME}s ($(date -u +%H:%M:%S))"
  hsa train "$spec" "${common[@]}" --lr "$LR" --warmup "$WARMUP" --eval-every "$EVAL_EVERY" \
      --eval-samples "$EVAL_SAMPLES" --checkpoint-every "$CKPT_EVERY" --time-limit "$TRAIN_TIME" "${resume[@]}" \
      --out "$run" 2>&1 | tee -a "$run.train.log"
fi
if [ "$PK" = 1 ] && ! lm_finished; then
  echo "=== $name: LM training stopped before its last step; run this again to resume it, then the fine-tune"
elif [ "$PK" = 1 ]; then
  # A short-sequence stage first (PK_SHORT_TIME > 0), as in the synthetic demonstration's curriculum:
  # at PK_SHORT_SEQ tokens every chunk fits in the top-k, so the layers learn to read the key before
  # the selection has to learn to find it at SEQ tokens. Both stages count towards the 5-minute bar.
  init="$run"
  if [ "$PK_SHORT_TIME" -gt 0 ]; then
    case " $PK_STAGES " in *" short "*) pk_stage "$run.pk$PK_SHORT_SEQ" "$run" "$PK_SHORT_SEQ" "$PK_SHORT_TIME" "$PK_SHORT_LR" "$PK_SHORT_GAP" ;; esac
    init="$run.pk$PK_SHORT_SEQ"
  fi
  case " $PK_STAGES " in *" long "*) pk_stage "$run.pk" "$init" "$SEQ" "$((PK_TIME - PK_SHORT_TIME))" "$PK_LR" ;; esac
fi
