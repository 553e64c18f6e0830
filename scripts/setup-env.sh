#!/usr/bin/env bash
# Create (or update) the project's virtual environment with the install order that works.
#
# Order matters (docs: README "Install"):
#   1. torch==2.13.0 first: pip then takes the CPU wheel; letting a dependency pull a bare `torch`
#      can fetch a multi-GB CUDA build instead. triton==3.6.0 with it (the tested version).
#   2. hsa-toolkit itself, editable, with the dev, fla and data extras (fla = GLA/RWKV backbones,
#      data = tokenizers + datasets for `hsa data prepare`).
#   3. mamba-ssm from its sdist with the flags that make it install on a machine without CUDA:
#      no build isolation (its setup.py imports torch), no CUDA build, and no deps (its deps are
#      GPU-only packages, about 1.8 GB).
#   4. the example third-party plugin (plugins/hsa-minlstm), editable.
# Idempotent: re-running on an existing environment only installs what changed.
#
# Environment: PYTHON (default python3), VENV (default .venv).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# pip install, quiet: its log is shown only on failure, minus the harmless notes about local index
# folders that do not exist on every machine.
pip_install() {
    local log
    log="$(mktemp)"
    if ! "${PIP[@]}" install -q "$@" >"$log" 2>&1; then
        grep -v "is ignored: it is neither" "$log" >&2 || true
        rm -f "$log"
        return 1
    fi
    grep -v "is ignored: it is neither" "$log" || true
    rm -f "$log"
}

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup-env: creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

echo "setup-env: 1/4 torch 2.13.0 (CPU wheel when no CUDA build is asked for) and triton 3.6.0"
# Skip when torch is already there (e.g. a CUDA build on a GPU box). Triton is pinned to the version
# the tests were validated with (the GPU machine's): `triton>=3.2` alone resolves to the newest
# release, whose CPU interpreter rejects masks that 3.6 accepts.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    pip_install "torch==2.13.0" "triton==3.6.0"
fi

echo "setup-env: 2/4 hsa-toolkit (editable, extras dev + fla + data)"
# setuptools/wheel/packaging in the venv: step 3 builds without isolation, with the venv's own tools.
pip_install "setuptools>=68" wheel packaging
pip_install -e ".[dev,fla,data]"

echo "setup-env: 3/4 mamba-ssm (sdist, no CUDA build, no deps)"
if ! "${PIP[@]}" show -q mamba-ssm >/dev/null 2>&1; then
    MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
        pip_install --no-build-isolation --no-deps "mamba-ssm==2.3.2.post1"
fi

echo "setup-env: 4/4 the example plugin hsa-minlstm (editable)"
pip_install --no-deps -e plugins/hsa-minlstm

echo "setup-env: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
