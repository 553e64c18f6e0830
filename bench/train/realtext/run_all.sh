#!/usr/bin/env bash
# The real-text demonstration (README.md beside this file) end to end: every layout in NAMES trained
# concurrently (layout i on GPU i % GPUS; lm_one.sh), then perplexity by position for all of them on
# the same validation documents (one `hsa eval ppl` with --compare), passkey in natural-text filler
# for the fine-tuned models, and the result files collected into OUT_DIR with a summary
# (summarize.py).
#   bash bench/train/realtext/run_all.sh               # after build_data.sh; knobs via env vars
set -uo pipefail
cd "$(dirname "$0")/../../.."
NAMES=${NAMES:-ramba mamba2 swa-hsa}
DATA=${DATA:-runs/realtext/data}
RUNS=${RUNS:-runs/realtext}
OUT_DIR=${OUT_DIR:-bench/results/h200_realtext}
GPUS=${GPUS:-$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')}
PPL_LENGTHS=${PPL_LENGTHS:-2k,4k,16k,64k,256k}
PPL_DOCS=${PPL_DOCS:-8}
PK_NAMES=${PK_NAMES:-$NAMES}       # which layouts get the passkey fine-tune and its eval
PK_LENGTHS=${PK_LENGTHS:-4k,16k,64k}
DEPTHS=${DEPTHS:-0.1,0.3,0.5,0.7,0.9}
SAMPLES=${SAMPLES:-20}
SEGMENT=${SEGMENT:-16384}
EVAL_TIME=${EVAL_TIME:-600}
STAGES=${STAGES:-train eval}      # "train" alone: a first device call that leaves the evaluations to the next
mkdir -p "$RUNS" "$OUT_DIR"
i=0
pids=()
status=0
case " $STAGES " in *" train "*) ;; *) NAMES_TO_TRAIN="" ;; esac
for name in ${NAMES_TO_TRAIN-$NAMES}; do
  # the passkey fine-tune only for the layouts in PK_NAMES (the twin's curve is shown as it is)
  pk=0; case " $PK_NAMES " in *" $name "*) pk=${PK:-1} ;; esac
  PK=$pk CUDA_VISIBLE_DEVICES=$((i % GPUS)) bash bench/train/realtext/lm_one.sh "$name" > "$RUNS/$name.log" 2>&1 &
  pids+=($!)
  echo "started $name on GPU $((i % GPUS)) (log $RUNS/$name.log)"
  i=$((i + 1))
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ $status = 0 ] || echo "a training failed: see $RUNS/*.log"
case " $STAGES " in *" eval "*) ;; *) exit $status ;; esac

first=""; compare=()
for name in $NAMES; do
  [ -d "$RUNS/$name/model" ] || continue
  if [ -z "$first" ]; then first="$RUNS/$name"; else compare+=(--compare "$RUNS/$name"); fi
done
if [ -n "$first" ]; then
  echo "=== eval ppl ($(date -u +%H:%M:%S))"
  hsa eval ppl "$first" "${compare[@]}" --data "$DATA" --lengths "$PPL_LENGTHS" --docs "$PPL_DOCS" \
      --segment-len "$SEGMENT" --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/eval_ppl.log"
fi
i=0
pids=()
for name in $PK_NAMES; do
  pk="$RUNS/$name.pk"
  [ -d "$pk/model" ] || continue
  echo "=== eval passkey in text: $name ($(date -u +%H:%M:%S))"
  CUDA_VISIBLE_DEVICES=$((i % GPUS)) hsa eval passkey "$pk" --filler "text:$DATA" --lengths "$PK_LENGTHS" \
      --depths "$DEPTHS" --samples "$SAMPLES" --segment-len "$SEGMENT" --time-limit "$EVAL_TIME" \
      > "$RUNS/$name.pk.eval.log" 2>&1 &
  pids+=($!)
  i=$((i + 1))
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
for name in $NAMES; do
  for f in metrics.jsonl train_config.json; do [ -f "$RUNS/$name/$f" ] && cp "$RUNS/$name/$f" "$OUT_DIR/${name}_$f"; done
  for stage in "$RUNS/$name".pk "$RUNS/$name".pk[0-9]*; do  # the 4K stage and the short first stage (lm_one.sh)
    [ -f "$stage/metrics.jsonl" ] && cp "$stage/metrics.jsonl" "$OUT_DIR/${name}_${stage##*.}_metrics.jsonl"
  done
  for f in eval_passkey_text.json eval_passkey_text.png; do
    [ -f "$RUNS/$name.pk/$f" ] && cp "$RUNS/$name.pk/$f" "$OUT_DIR/${name}_$f"
  done
  for f in "$RUNS/$name.log" "$RUNS/$name.pk.eval.log"; do [ -f "$f" ] && cp "$f" "$OUT_DIR/"; done
done
cp "$DATA/manifest.json" "$OUT_DIR/data_manifest.json" 2>/dev/null
python3 bench/train/realtext/summarize.py "$OUT_DIR" > "$OUT_DIR/realtext.md" && cat "$OUT_DIR/realtext.md"
exit $status
