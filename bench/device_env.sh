# Source on the GPU machine from the repo root: makes this checkout importable without installing it,
# and installs carried wheels (fla) into /tmp/site when .whl/ was carried.
set -e
mkdir -p /tmp/pkgs
ln -sfn "$PWD/kernels" /tmp/pkgs/hsa_kernels
ln -sfn "$PWD/hsa_core" /tmp/pkgs/hsa_core
ln -sfn "$PWD/backbones" /tmp/pkgs/hsa_backbones
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
export PYTHONPATH=/tmp/pkgs:$PYTHONPATH
export PYTHONUNBUFFERED=1
set +e
