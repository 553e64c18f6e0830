#!/usr/bin/env bash
# The first-step measurement (bench/results/h200_model/README.md, run 5) on the two-H200 machine
# (from the repo root; logs and tables go to $OUT):
#   record   every candidate of mamba-ssm's and fla's kernels timed in one training step of the backbone
#            probes of ramba-370m, gla-hsa and rwkv7-hsa, split over 16 processes (8 per GPU); the
#            fastest per kernel and key merged into runs/launch_tables/sm90.json (and $OUT/sm90.json,
#            to commit as backbones/launch_tables/sm90.json)
#   measure  with that table and an EMPTY Triton cache (what a fresh machine pays): first step and
#            tokens/s of every shipped layout at 4K (GPU 0: the Mamba2 layouts; GPU 1: the others)
#   fsdp2    bench/model/fsdp2.sh with the table (each process compiles once, no autotuning)
set +u
. bench/device_env.sh
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" runs/launch_tables
TABLE=${TABLE:-runs/launch_tables/sm90.json}
for stage in "$@"; do
case $stage in
record)  # SHARDS processes per GPU, each timing every (2 x SHARDS)-th candidate, each with its own Triton cache
  n=$((2 * ${SHARDS:-8}))
  # Empty caches: a warm machine's Triton cache answers autotuning from disk, and nothing gets timed.
  rm -rf /tmp/triton_record_* runs/launch_tables/shard*.json
  for i in $(seq 0 $((n - 1))); do
    TRITON_CACHE_DIR=/tmp/triton_record_$i CUDA_VISIBLE_DEVICES=$((i % 2)) timeout ${RECORD_S:-240} \
      python3 bench/model/record_launch_table.py gla-hsa rwkv7-hsa ramba-370m --seq-len 4096 --batch 4 \
      --shard $i/$n --out runs/launch_tables/shard$i.json > /tmp/record_$i.log 2>&1 &
  done
  wait
  cat /tmp/record_*.log | grep -v Warning > "$OUT/record.log"; grep -h "shard" /tmp/record_*.log | sort | uniq -c | head
  python3 bench/model/record_launch_table.py --merge runs/launch_tables/shard*.json --out "$TABLE" \
    && cp "$TABLE" "$OUT/sm90.json" ;;
measure)
  export HSA_LAUNCH_TABLE=$TABLE
  one() {  # one GPU, a list of layouts, each in a fresh process with a fresh Triton cache
    gpu=$1; shift
    for spec in "$@"; do
      rm -rf "/tmp/triton_fresh_$gpu"
      TRITON_CACHE_DIR="/tmp/triton_fresh_$gpu" CUDA_VISIBLE_DEVICES=$gpu timeout ${MEASURE_S:-110} hsa bench model "$spec" \
        --seq-len 4k --batch ${BATCH:-8} --steps 5 --warmup 2 --no-compare --no-parts --out "/tmp/measure_$spec" 2>&1 \
        | grep -v "^  (part" || echo "$spec: exit $?"
      cp "/tmp/measure_$spec/model_bench.json" "/tmp/measure_$spec.json" 2>/dev/null
    done > "$OUT/measure_gpu$gpu.log"
  }
  one 0 ramba-370m ramba-370m-multihop &
  one 1 gla-hsa rwkv7-hsa &
  wait
  grep -h -A12 "tokens/s" "$OUT"/measure_gpu*.log | head -60
  unset HSA_LAUNCH_TABLE ;;
fsdp2)
  HSA_LAUNCH_TABLE=$TABLE STEPS=${STEPS:-16} bash bench/model/fsdp2.sh ;;
esac
done
