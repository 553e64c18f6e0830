#!/usr/bin/env bash
# The check "the same kernel and model tables before and after the restructuring, within
# run-to-run noise", measured in ONE call on one H200 (from the repo root; results into $OUT):
#   kernels  `bench_kernels.py` of the code before the kernel restructuring (commit in
#            third_party/before_kernels/COMMIT: run7's) and of this checkout, alternated
#            before / after / before / after, same flags, same published kernel file;
#   model    `hsa bench model ramba-370m` of the code before the application split (commit in
#            third_party/before_model/COMMIT: run 3's) and of this checkout, alternated likewise.
#            Both with full autotuning (HSA_AUTOTUNE=full: the old code has no launch tables); the first
#            run fills Triton's on-disk autotuning cache, so the later ones compare steady states.
# Prepare here (git-ignored, carried with `carry: [".whl", "third_party"]`):
#   for p in "before_kernels 2a4598a" "before_model 10758c4"; do set -- $p; mkdir -p third_party/$1
#     git archive $2 hsa_core kernels backbones cli bench/bench_kernels.py pyproject.toml README.md examples \
#       plugins | tar x -C third_party/$1; echo $2 > third_party/$1/COMMIT; done
#   (cd third_party/before_model && pip wheel --no-deps --no-build-isolation . -w ../before_model_whl)
#   third_party/hsa_pub/hsa_triton.py: ops/hsa_triton.py of RamstorageAI/long-context-modeling
set +u
. bench/device_env.sh
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
PUB=third_party/hsa_pub/hsa_triton.py
SHAPES=${SHAPES:-4096x4,16384x2,65536x1}
ROUNDS=${ROUNDS:-2}
# An environment for the old trees: their own links and wheel (entry points), the carried dependencies,
# but not this checkout's wheel (its entry points name hsa_app, which the old code does not have).
before_env() {  # before_env DIR -> prints a PYTHONPATH (link_packages: bench/device_env.sh)
  local pk=/tmp/pkgs_$(basename "$1")
  link_packages "$PWD/$1" "$pk"
  echo "$pk:/tmp/site_before"
}
if [ ! -f /tmp/site_before/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_before \
    $(ls .whl/*.whl | grep -v hsa_toolkit) third_party/before_model_whl/*.whl && touch /tmp/site_before/.installed
fi
stage=${1:-all}
if [ "$stage" = kernels ] || [ "$stage" = all ]; then
  PP_BEFORE=$(before_env third_party/before_kernels)
  for r in $(seq 1 "$ROUNDS"); do
    echo "=== kernels before ($(cat third_party/before_kernels/COMMIT)), round $r"
    PYTHONPATH=$PP_BEFORE PATH=/tmp/site_before/bin:$PATH python3 third_party/before_kernels/bench/bench_kernels.py \
      --out /tmp/kb_before_$r --published $PUB --variants "" --no-correctness --shapes "$SHAPES" | grep -E "^==|  ours|published"
    echo "=== kernels after (this checkout), round $r"
    python3 bench/bench_kernels.py --out /tmp/kb_after_$r --published $PUB --variants "" --no-correctness \
      --shapes "$SHAPES" | grep -E "^==|  ours|published"
  done
fi
if [ "$stage" = model ] || [ "$stage" = all ]; then
  PP_BEFORE=$(before_env third_party/before_model)
  ARGS=(ramba-370m --seq-len 4k --batch 8 --steps 8 --warmup 2 --no-compare --no-parts)
  for r in $(seq 1 "$ROUNDS"); do
    echo "=== model after (this checkout), round $r"
    HSA_AUTOTUNE=full hsa bench model "${ARGS[@]}" --out /tmp/mb_after_$r 2>&1 | grep -E "^\| ramba|first step"
    echo "=== model before ($(cat third_party/before_model/COMMIT)), round $r"
    PYTHONPATH=$PP_BEFORE /tmp/site_before/bin/hsa bench model "${ARGS[@]}" --out /tmp/mb_before_$r 2>&1 \
      | grep -E "^\| ramba|first step"
  done
fi
python3 - <<'PY' | tee "$OUT/before_after.md"
import glob, json
def load(pattern):
    out = []
    for f in sorted(glob.glob(pattern)):
        try:
            out.append(json.load(open(f)))
        except (OSError, ValueError):
            pass
    return out
print("| table | run | " + " | ".join(["T (batch)", "ours fwd ms", "ours fwd+bwd ms", "published fwd ms"]) + " |")
print("|---|---|---|---|---|---|")
for side in ("before", "after"):
    for i, res in enumerate(load(f"/tmp/kb_{side}_*/results.json"), 1):
        for sh in res["shapes"]:
            by = {r["name"]: r for r in sh["attention"]}
            o, p = by.get("ours", {}), by.get("published HSA", {})
            f = lambda x: "-" if x is None else f"{x:.3f}"
            print(f"| kernels | {side} {i} | {sh['T'] // 1024}K ({sh['B']}) | {f(o.get('fwd_ms'))} | "
                  f"{f(o.get('fwdbwd_ms'))} | {f(p.get('fwd_ms'))} |")
print()
print("| table | run | tokens/s | step ms | peak GiB | first step s |")
print("|---|---|---|---|---|---|")
for side in ("before", "after"):
    for i, res in enumerate(load(f"/tmp/mb_{side}_*/model_bench.json"), 1):
        for row in res.get("rows", []):
            g = lambda k, spec: "-" if row.get(k) is None else format(row[k], spec)
            print(f"| model | {side} {i} | {g('tokens_per_s', ',.0f')} | {g('step_ms', '.1f')} | "
                  f"{g('peak_gib', '.1f')} | {g('first_step_s', '.1f')} |")
PY
