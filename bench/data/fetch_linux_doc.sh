#!/usr/bin/env bash
# Download Debian's Linux kernel documentation package (English technical prose, ~37 MB .deb) into
# bench/data/cache/ (git-ignored) for bench/data/build_corpus.py. Needs Debian's package archive
# (apt); run `apt-get update` once first on a fresh machine. PACKAGE overrides the package name.
set -euo pipefail
cd "$(dirname "$0")"
PACKAGE=${PACKAGE:-linux-doc-6.1}
mkdir -p cache
cd cache
if ls "${PACKAGE}"_*.deb >/dev/null 2>&1; then
  echo "already here: $(ls "${PACKAGE}"_*.deb)"
else
  apt-get download "$PACKAGE"
  echo "downloaded: $(ls "${PACKAGE}"_*.deb)"
fi
