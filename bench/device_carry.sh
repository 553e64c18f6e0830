#!/usr/bin/env bash
# Build, on this (CPU, online) machine, the git-ignored files that device calls carry, from nothing:
#   .whl/                       the toolkit's wheel (entry points, `hsa` script) and the pure-Python wheels
#                               the GPU image lacks: typer/click/rich/..., pluggy, einops, mamba-ssm (its
#                               Triton SSD scan) and fla (its Triton causal convolution): both are speed,
#                               not function (bench/train/README.md)
#   runs/realtext_data.tar.xz   the carried real-text data (bench/train/realtext/README.md), with --data
# Carry them with `carry: [".whl", "runs/realtext_data.tar.xz"]` and start the device command with
#   [ -d runs/realtext/data ] || tar xJf runs/realtext_data.tar.xz; . bench/device_env.sh
#   bash bench/device_carry.sh              # wheels only (~1 min)
#   bash bench/device_carry.sh --data       # and the data (~3 min on 2 cores: corpus, BPE, tokenize, xz)
set -euo pipefail
case "${1:-}" in
  "") with_data=0 ;;
  --data) with_data=1 ;;
  *) echo "usage: bash bench/device_carry.sh [--data]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { echo "error: $PY not found: run 'make setup' first (or set PYTHON)" >&2; exit 2; }
mkdir -p .whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation . -w .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl typer==0.16.0 click rich markdown-it-py mdurl pygments \
    shellingham pluggy einops flash-linear-attention==0.6.0 fla-core==0.6.0
MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE "$PY" -m pip wheel -q --no-build-isolation --no-deps \
    mamba-ssm==2.3.2.post1 -w .whl
echo "wheels: $(ls .whl | tr '\n' ' ')"
if [ "$with_data" = 1 ]; then
  bash bench/data/fetch_linux_doc.sh
  # The subset that fits a device call (bench/train/realtext/README.md): the kernel documentation,
  # the standard library and six installed projects; 85 documents, 76 MB, ~20M tokens.
  only=(); for p in python3.11-stdlib numpy matplotlib networkx pip fonttools pygments; do only+=(--only "$p"); done
  PATH="$(dirname "$PY"):$PATH" CORPUS=runs/realtext/corpus DATA=runs/realtext/data VAL=0.2 WORKERS=${WORKERS:-2} SAMPLE_MB=80 EXTRA="--stdlib ${only[*]}" \
      bash bench/train/realtext/build_data.sh
  tar cJf runs/realtext_data.tar.xz.tmp runs/realtext/data && mv runs/realtext_data.tar.xz.tmp runs/realtext_data.tar.xz
  ls -la runs/realtext_data.tar.xz
fi
