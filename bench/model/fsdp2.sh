#!/usr/bin/env bash
# Two H200s vs one, ramba-370m at 4,096 tokens per sequence (run from the repo root on the
# nvidia-h200-x2 machine after `. bench/device_env.sh`; logs and metrics go to $OUT):
#   1. NCCL bus bandwidth between the two GPUs (nccl_bandwidth.py), to cost the communication;
#   2. one GPU, batch BATCH (GPU 0) and batch 2 x BATCH (GPU 1) side by side;
#   3. each data-parallel VARIANT in turn on both GPUs, global batch 2 x BATCH (BATCH per GPU).
# Throughput: 2 GPUs / 1 GPU at the same per-GPU batch (BATCH, default 8); loss curves: 2 GPUs vs 1 GPU
# at the same global batch (2 x BATCH; REF_FLAGS=--checkpoint-activations lets it fit on one GPU).
# Every process gets OMP_NUM_THREADS (torchrun would set 1, the single runs would take every core), so
# that the host side is the same in all runs.
#   PROFILE   A:B: profile steps A+1..B of every run (see below)
#   VARIANTS  fsdp (FSDP2, fp32 parameters on the wire: the default), fsdp-bf16 (--fsdp-param-dtype
#             bf16), fsdp-keep (--no-fsdp-reshard), fsdp-group4 (--fsdp-blocks-per-unit 4), fsdp-prefetch2
#             (--fsdp-prefetch 2), ddp
set +u
OUT=${OUT:-/tmp/out}
RUNS=${RUNS:-/tmp/runs/fsdp}
STEPS=${STEPS:-16}
BATCH=${BATCH:-8}       # per GPU
REF_FLAGS=${REF_FLAGS:-}  # extra flags of the one-GPU run at the global batch (the loss-curve reference)
VARIANTS=${VARIANTS:-fsdp fsdp-bf16 fsdp-keep ddp}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
mkdir -p "$OUT" "$RUNS"
rm -rf "${RUNS:?}"/*
ARGS=(ramba-370m --task passkey --seq-len 4096 --steps "$STEPS" --loss-on all --lr 3e-4 --warmup 4
      --checkpoint-every 0 --no-progress)
# PROFILE=A:B profiles steps A+1..B of every run (hsa train --profile-steps): every rank's operator table
# is appended to $OUT/fsdp2_profiles.txt (one file: the device tool returns few); traces stay in $RUNS/<run>/profile
[ -n "${PROFILE:-}" ] && ARGS+=(--profile-steps "$PROFILE")
LIMIT=${LIMIT:-150}  # seconds per run
if [ "${NCCL:-1}" = 1 ]; then  # NCCL=0 skips the bandwidth probe
  timeout 60 torchrun --standalone --nproc-per-node 2 bench/model/nccl_bandwidth.py 2>&1 | grep nccl | tee "$OUT/fsdp2.log"
fi
one=gpu1_b$BATCH; ref=gpu1_b$((2 * BATCH))
CUDA_VISIBLE_DEVICES=0 timeout $LIMIT hsa train "${ARGS[@]}" --batch-size "$BATCH" --out "$RUNS/$one" > "$RUNS/$one.log" 2>&1 &
# shellcheck disable=SC2086  # REF_FLAGS holds several words on purpose
CUDA_VISIBLE_DEVICES=1 timeout $LIMIT hsa train "${ARGS[@]}" --batch-size $((2 * BATCH)) $REF_FLAGS --out "$RUNS/$ref" > "$RUNS/$ref.log" 2>&1 &
wait
declare -A FLAGS=([fsdp]="--fsdp" [fsdp-bf16]="--fsdp --fsdp-param-dtype bf16" [fsdp-keep]="--fsdp --no-fsdp-reshard"
                [fsdp-group4]="--fsdp --fsdp-blocks-per-unit 4" [fsdp-prefetch2]="--fsdp --fsdp-prefetch 2" [ddp]="")
for v in $VARIANTS; do
  # shellcheck disable=SC2086  # FLAGS holds several words on purpose
  timeout $LIMIT torchrun --standalone --nproc-per-node 2 -m hsa_cli train "${ARGS[@]}" --batch-size $((2 * BATCH)) ${FLAGS[$v]} \
    --out "$RUNS/gpu2_$v" > "$RUNS/gpu2_$v.log" 2>&1
done
for n in $one $ref $(for v in $VARIANTS; do echo "gpu2_$v"; done); do  # the logs' ends, every run's metrics
  { echo "== $n"; tail -3 "$RUNS/$n.log"; } >> "$OUT/fsdp2.log"
  for t in "$RUNS/$n"/profile/rank*_ops.txt; do
    [ -f "$t" ] && { echo "=== $n $(basename "$t")"; cat "$t"; } >> "$OUT/fsdp2_profiles.txt"
  done
  sed "s/^{/{\"run\": \"$n\", /" "$RUNS/$n/metrics.jsonl" >> "$OUT/fsdp2_metrics.jsonl" 2>/dev/null
done
python3 - "$RUNS" "$one" "$ref" $VARIANTS <<'PY' 2>&1 | tee -a "$OUT/fsdp2.log"
import json, os, statistics, sys
runs, one, ref, variants = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def steady(name):
    try:
        recs = [json.loads(l) for l in open(f"{runs}/{name}/metrics.jsonl") if '"loss"' in l]
    except OSError:
        return None, None
    # the profiled steps (PROFILE=A:B: steps A+1..B) are slower and left out of the median
    a, _, b = (os.environ.get("PROFILE") or "0:0").partition(":")
    return recs, statistics.median(r["tokens_per_s"] for r in recs[3:] if not int(a) < r["step"] <= int(b))
r_one, t_one = steady(one); r_ref, t_ref = steady(ref)
print(f"tokens/s (median of steps 4..): 1 GPU {one} {t_one:,.0f}; 1 GPU {ref} {t_ref:,.0f}")
for v in variants:
    r_two, t_two = steady(f"gpu2_{v}")
    if r_two is None:
        print(f"2 GPUs {v}: no metrics (see its log)"); continue
    d = [abs(a["loss"] - b["loss"]) for a, b in zip(r_ref, r_two)]
    print(f"2 GPUs {v} {ref[5:]}: {t_two:,.0f} tokens/s = {t_two / t_one:.2f}x one GPU at the same per-GPU batch; loss vs 1 GPU {ref[5:]}: "
          f"max |diff| {max(d):.4f}, mean {sum(d)/len(d):.4f}; final {r_ref[-1]['loss']:.4f} vs {r_two[-1]['loss']:.4f}")
PY
