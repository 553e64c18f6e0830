# Source on the GPU machine from the repo root: makes this checkout importable without installing it
# and installs the carried wheels (.whl/: the toolkit's own wheel for its entry points and `hsa`
# script, typer/rich/pluggy/einops, fla) into /tmp/site. Build .whl/ here first:
#   pip wheel --no-deps --no-build-isolation . -w .whl   (+ the pip download line in bench/train/README.md)
# The checkout comes first on PYTHONPATH, so the code that runs is the checkout's, and the wheel only
# contributes its metadata (entry points: the built-in backbones are plugins).
set -e
# link_packages TREE DEST: DEST/hsa_* -> the folders of the source tree TREE (a tree without app/, such
# as an older commit's, gets no hsa_app)
link_packages() {
  mkdir -p "$2"
  local folder
  for pair in kernels:hsa_kernels hsa_core:hsa_core backbones:hsa_backbones cli:hsa_cli app:hsa_app; do
    folder="$1/${pair%%:*}"
    [ -d "$folder" ] && ln -sfn "$folder" "$2/${pair##*:}"
  done
  return 0
}
link_packages "$PWD" /tmp/pkgs
if ls .whl/*.whl >/dev/null 2>&1; then
  if [ ! -f /tmp/site/.hsa-installed ]; then  # once per machine (parallel scripts source this file too)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    touch /tmp/site/.hsa-installed
  fi
  export PYTHONPATH=/tmp/site:$PYTHONPATH
  export PATH=/tmp/site/bin:$PATH
fi
export PYTHONPATH=/tmp/pkgs:$PYTHONPATH
export PYTHONUNBUFFERED=1
# Keep autotuning results on disk too (Triton >= 3.2): later processes on this machine skip re-tuning.
export TRITON_CACHE_AUTOTUNING=1
set +e
