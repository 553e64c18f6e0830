#!/usr/bin/env bash
# On one H200: passkey with the chunk memory offloaded to host memory from 4K to 64M tokens,
# GPU peak and prefill throughput, decode latency of ramba-370m. From the repo root, with .whl carried
# (bench/train/README.md), one stage per device command (each ends inside 600 s):
#   bash bench/offload/h200_run.sh STAGE
#   STAGE = tests | train | short | 16m | 64m | footprint | memory | decode | estimate | report   (bench/offload/README.md)
#   STAGE = bar: train, short, 16m, 64m, footprint and report in one go, every cell from ONE model (its
#           weights do not outlive the machine); ~1,400 s on one H200, so run it detached (bench/detached.sh)
# Knobs (env): DEMO (which demo layout `train` trains: ramba-sm, or ramba-sm-shared, one selection shared
# by both HSA layers, half the selection work of a long prefill), RUN (the demo RAMba: a run or model
# directory; default runs/offload/$DEMO, trained by
# `train`), DEPTHS, SAMPLES, SEED, SEGMENT, FORCE=1 (run a 64M stage even when its estimate exceeds LIMIT).
set -uo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$0")/../.."
. "${DEVICE_ENV:-bench/device_env.sh}"   # DEVICE_ENV=/dev/null: the environment as it is (the CPU test)
OUT=${OUT:-/tmp/out}
WORK=${WORK:-runs/offload}
DEMO=${DEMO:-ramba-sm}
RUN=${RUN:-$WORK/$DEMO}
SEGMENT=${SEGMENT:-65536}   # tokens per prefill segment: 16K segments cost 4x the per-segment host work (run 3)
SEED=${SEED:-1234}
GPUS=${GPUS:-$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')}  # 16m and 64m use them all
GPU_IDS=(${GPU_IDS:-$(seq 0 $((GPUS - 1)))})  # which GPUs those are (GPU_IDS="1" GPUS=1: GPU 1 alone, the other busy)
LIMIT=${LIMIT:-540}            # seconds per hsa call (the device command limit is 600)
mkdir -p "$OUT" "$WORK"
stage=${1:-short}
TASKOPTS=(--task-option min_gap=128 --task-option key_len=4)   # as the demo was trained (bench/train/demo_one.sh)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
free -g | head -2

# ev NAME LENGTHS DEPTHS SAMPLES [hsa eval options]: one passkey eval (offloaded unless told
# --no-offload), its JSON kept in $WORK/NAME and copied to $OUT/passkey_NAME.json.
ev() {
  local name=$1 lengths=$2 depths=$3 samples=$4
  shift 4
  timeout "$LIMIT" hsa eval passkey "$RUN" --lengths "$lengths" --depths "$depths" --samples "$samples" \
    --seed "$SEED" --segment-len "$SEGMENT" --batch-tokens "${BATCH_TOKENS:-4194304}" "${TASKOPTS[@]}" \
    --offload "$@" --out "$WORK/$name"
  local rc=$?
  [ "$rc" = 124 ] && echo "!!! $name: stopped by timeout $LIMIT s"
  [ -f "$WORK/$name/eval_passkey.json" ] && cp "$WORK/$name/eval_passkey.json" "$OUT/passkey_$name.json"
  return $rc
}

# pev NAME LENGTH DEPTHS SAMPLES [options]: ev spread over the GPUS GPUs of the machine, one process each
# (GPU g: seed SEED+g, ceil(SAMPLES/GPUS) samples per depth; report.py pools the cells), so that the
# two-H200 machine halves a 16M or 64M stage. Each process pins its own host K/V (32 GiB per 64M sample).
pev() {
  local name=$1 length=$2 depths=$3 samples=$4 g rc=0 pids=()
  shift 4
  local per=$(( (samples + GPUS - 1) / GPUS ))
  for g in $(seq 0 $((GPUS - 1))); do
    SEED=$((SEED + g)) CUDA_VISIBLE_DEVICES=${GPU_IDS[$g]} ev "${name}_g$g" "$length" "$depths" "$per" "$@" &
    pids+=($!)
  done
  for g in "${pids[@]}"; do wait "$g" || rc=1; done
  return $rc
}

# unsplit DIR: model.safetensors from the parts `train` sends back (carried to a fresh machine as RUN)
unsplit() {
  if [ ! -f "$1/model.safetensors" ] && ls "$1"/model.safetensors.part* >/dev/null 2>&1; then
    cat "$1"/model.safetensors.part* > "$1/model.safetensors.tmp" && mv "$1/model.safetensors.tmp" "$1/model.safetensors"
  fi
  return 0
}

# estimate LENGTH: seconds per sample at LENGTH from the newest measured length below it. Selection
# scores every landmark for every token: O(T^2 / S) in all, so a sample costs between (ratio) x (the
# linear part: backbone, encoder, copies) and (ratio)^2 x (selection-bound); prints both bounds.
estimate() {
  python3 - "$1" "$WORK" <<'PY'
import glob, json, sys
target, work = int(sys.argv[1]), sys.argv[2]
best = None
for f in glob.glob(f"{work}/*/eval_passkey.json"):
    d = json.load(open(f))
    for c in d["cells"]:
        if c["length"] < target and c["samples"] and (best is None or c["length"] >= best[0]):
            per = c["seconds"] / c["samples"]
            if best is None or c["length"] > best[0] or per > best[1]:
                best = (c["length"], per)
if best is None:
    print("no measurement below this length yet: run `short` (and `16m`) first"); sys.exit(0)
n, per = best
r = target / n
print(f"estimate for {target:,} tokens from {n:,} ({per:.1f} s/sample): {per * r:.0f} to {per * r * r:.0f} s/sample")
print(f"UPPER={per * r * r:.0f}")
PY
}

# Before any stage reads RUN's weights: join the parts `train` sends back, when a model was carried so
unsplit "$RUN/model"; unsplit "$RUN"

case "$stage" in
  tests)  # the offload tests on CUDA (pinned buffers, copy stream, Triton kernels on gathered chunks) + a
          # decode smoke run: a minute
    timeout 300 python3 -m pytest -q -x -m gpu tests/model/test_offload.py 2>&1 | tail -5
    timeout 200 python3 bench/offload/decode_latency.py --spec ramba-cpu --contexts 4k,1m --steps 16 --warmup 4
    ;;
  train)  # (a) the demo RAMba of bench/results/h200_train (ramba-demo-sm, <= 4K tokens, ~4 min), same commands
    if [ -f "$RUN/model/config.json" ] || [ -f "$RUN/config.json" ]; then
      echo "found $RUN"
    else
      RUNS=$WORK S1_TIME=${S1_TIME:-70} S2_TIME=${S2_TIME:-160} LENGTHS=4k DEPTHS=0.5 SAMPLES=8 RANDOM_LENGTHS= \
        timeout 570 bash bench/train/demo_one.sh "$DEMO"
    fi
    mdir=$RUN/model; [ -f "$mdir/config.json" ] || mdir=$RUN
    # the weights come back in parts under the device tool's 16 MB per file; `unsplit` joins them
    mkdir -p "$OUT/model" && cp "$mdir"/config.json "$mdir"/config.yaml "$OUT/model/"
    split -b 15000000 -d "$mdir/model.safetensors" "$OUT/model/model.safetensors.part"
    [ -f "$WORK/$DEMO.train.log" ] && tail -5 "$WORK/$DEMO.train.log"
    ;;
  short)  # (b) 4K, 64K, 1M offloaded, 3 depths x SAMPLES (~1-2 min)
    ev short 4k,64k,1m "${DEPTHS:-0.1,0.5,0.9}" "${SAMPLES:-4}"
    ;;
  16m)  # (b) 16M offloaded: one sample per forward, spread over the GPUs; DEPTHS=0.1 etc. splits it over commands
    estimate 16777216
    d=${DEPTHS:-all}; pev "16m_d${d//,/-}_s$SEED" 16m "${DEPTHS:-0.1,0.5,0.9}" "${SAMPLES:-4}"
    ;;
  64m)  # (b) 64M offloaded: DEPTHS (default 0.5) x SAMPLES (default: one per GPU) per command; vary SEED for new samples
    est=$(estimate 67108864); echo "$est"
    upper=$(echo "$est" | sed -n 's/^UPPER=//p')
    per=$(( (${SAMPLES:-$GPUS} + GPUS - 1) / GPUS * $(echo "${DEPTHS:-0.5}" | tr ',' '\n' | wc -l) ))  # samples per process
    if [ -n "$upper" ] && [ $(( upper * per )) -gt "$LIMIT" ] && [ -z "${FORCE:-}" ]; then
      echo "!!! up to $(( upper * per )) s for $per sample(s) > LIMIT=$LIMIT s; FORCE=1 runs it anyway (it may be cut by the timeout)"
      exit 0
    fi
    d=${DEPTHS:-0.5}; pev "64m_d${d//,/-}_s$SEED" 64m "${DEPTHS:-0.5}" "${SAMPLES:-$GPUS}"
    ;;
  footprint)  # (c) the references of the bars, batch 1 and 64K segments as the 64M stage: the GPU peak at 64K
              # offloaded (after a 4K cell, so that its kernels are compiled; HSA_OFFLOAD_LANDMARKS=host for
              # the host-landmark 64M run), and the on-GPU throughput at 1M (after a warm-up 64K cell)
    BATCH_TOKENS=65536 ev fp64k 4k,64k 0.5 2
    BATCH_TOKENS=1048576 ev ref1m_gpu_b1 64k,1m 0.5 2 --no-offload
    ;;
  memory)  # (c) where a deep context adds to the GPU peak: what each segment begins with, and the peak
           # inside each module, second segment against the last, for a LENGTH-token prefill (default 16M)
    length=${LENGTH:-16m}
    timeout "$LIMIT" python3 bench/offload/profile_prefill.py "$RUN/model" "$length" --segment "$SEGMENT" \
      --memory | tee "$OUT/memory_$length.txt"
    ;;
  profile)  # where a long offloaded prefill spends its time: per-segment wall times along a LENGTH-token
            # prefill (default 64M) of the trained RUN, the device time per module over the whole prefill
            # (MODULES=0: without those hooks, which slow the prefill they time), then torch.profiler over
            # its last two segments
    length=${LENGTH:-64m}
    modules=(--modules); [ "${MODULES:-1}" = 0 ] && modules=()
    timeout "$LIMIT" python3 bench/offload/profile_prefill.py "$RUN/model" "$length" --segment "$SEGMENT" \
      "${modules[@]}" --period "${PERIOD:-31}" | tee "$OUT/profile_$length.txt"
    ;;
  decode)  # (d) ramba-370m, random weights, batch 1: ms/token at 4K, 1M, 64M (offloaded; on the GPU up to 1M)
    timeout "$LIMIT" python3 bench/offload/decode_latency.py --spec ramba-370m --contexts "${CONTEXTS:-4k,1m,64m}" \
      --out "$WORK/decode.json"
    cp "$WORK/decode.json" "$OUT/"
    ;;
  estimate)
    estimate 16777216; estimate 67108864
    ;;
  report)  # table + heatmap (4K..64M) + footprint/decode tables from everything measured on this machine
    # (elsewhere, e.g. on CPU from fetched files: python bench/offload/report.py DIR/passkey_*.json --decode ...)
    python3 bench/offload/report.py "$WORK"/*/eval_passkey.json --decode "${DECODE:-$WORK/decode.json}" --out "$OUT"
    ;;
  bar)  # the bars' cells for one model: 4K-1M, 16M and 64M x 3 depths x SAMPLES (default 4), then the
        # footprint references and the report. Each stage runs whatever the one before did (a stage reports
        # its own trouble with "!!!" lines, and a cut cell keeps the cells before it in its JSON).
    for s in train short 16m 64m footprint report; do
      echo "=== bar: $s ($(date +%T))"
      lim=$LIMIT; [ "$s" = 64m ] && lim=${LIMIT_64M:-1500}  # 12 samples of ~80-110 s in one process
      SAMPLES=${SAMPLES:-4} DEPTHS=${DEPTHS:-0.1,0.5,0.9} FORCE=1 LIMIT=$lim bash "$SELF" "$s"
    done
    ;;
  *) echo "unknown stage $stage (tests | train | short | 16m | 64m | footprint | memory | decode | estimate | report | bar)"; exit 2 ;;
esac
ls "$OUT"
