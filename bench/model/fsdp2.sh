#!/usr/bin/env bash
# FSDP2 on two H200s vs one, ramba-370m at 4,096 tokens per sequence (run from the repo root on the
# nvidia-h200-x2 machine after `. bench/device_env.sh`):
#   1 GPU, batch 8 (GPU 0) and 1 GPU, batch 16 (GPU 1) side by side, then FSDP2 on both GPUs with
#   global batch 16 (8 per GPU). Throughput: 2 GPUs / 1 GPU at the same per-GPU batch (8); loss
#   curves: 2 GPUs vs 1 GPU at the same global batch (16).
set +u
OUT=${OUT:-/tmp/out}
RUNS=${RUNS:-/tmp/runs/fsdp}
STEPS=${STEPS:-16}
mkdir -p "$OUT" "$RUNS"
rm -rf "$RUNS"/*
ARGS=(ramba-370m --task passkey --seq-len 4096 --steps "$STEPS" --loss-on all --lr 3e-4 --warmup 4
      --checkpoint-every 0 --no-progress)
LIMIT=${LIMIT:-150}  # seconds per run
CUDA_VISIBLE_DEVICES=0 timeout $LIMIT hsa train "${ARGS[@]}" --batch-size 8 --out "$RUNS/gpu1_b8" > "$RUNS/gpu1_b8.log" 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout $LIMIT hsa train "${ARGS[@]}" --batch-size 16 --out "$RUNS/gpu1_b16" > "$RUNS/gpu1_b16.log" 2>&1 &
wait
timeout $LIMIT torchrun --standalone --nproc-per-node 2 -m hsa_cli train "${ARGS[@]}" --batch-size 16 --fsdp \
  --out "$RUNS/gpu2_b16" > "$RUNS/gpu2_b16.log" 2>&1
for n in gpu1_b8 gpu1_b16 gpu2_b16; do  # two files back: the logs' ends and every run's metrics, one per line
  { echo "== $n"; tail -5 "$RUNS/$n.log"; } >> "$OUT/fsdp2.log"
  sed "s/^{/{\"run\": \"$n\", /" "$RUNS/$n/metrics.jsonl" >> "$OUT/fsdp2_metrics.jsonl" 2>/dev/null
done
python3 - "$RUNS" <<'PY' 2>&1 | tee -a "$OUT/fsdp2.log"
import json, statistics, sys
runs = sys.argv[1]
def steady(name):
    recs = [json.loads(l) for l in open(f"{runs}/{name}/metrics.jsonl") if '"loss"' in l]
    return recs, statistics.median(r["tokens_per_s"] for r in recs[3:])
r8, t8 = steady("gpu1_b8"); r16, t16 = steady("gpu1_b16"); f16, tf = steady("gpu2_b16")
print(f"tokens/s (median of steps 4..): 1 GPU b8 {t8:,.0f}; 1 GPU b16 {t16:,.0f}; 2 GPUs FSDP2 b16 {tf:,.0f} "
      f"= {tf / t8:.2f}x one GPU at the same per-GPU batch")
d = [abs(a["loss"] - b["loss"]) for a, b in zip(r16, f16)]
print(f"loss, 1 GPU b16 vs 2 GPUs FSDP2 b16: max |diff| {max(d):.4f}, mean {sum(d)/len(d):.4f}; "
      f"final {r16[-1]['loss']:.4f} vs {f16[-1]['loss']:.4f}")
PY
