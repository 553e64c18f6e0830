#!/usr/bin/env bash
# Build the real-text corpus and tokenize it (README.md beside this file), on any machine without
# internet access:
#   English prose: Debian's linux-doc .deb (carried: bench/data/fetch_linux_doc.sh downloads it where
#   apt works), one document per Documentation/ topic; source code: every Python distribution
#   installed here (one document per project) and the standard library.
# Then `hsa data prepare` with a byte-level BPE trained on it. Re-running continues an interrupted
# prepare and skips a finished one.
#   bash bench/train/realtext/build_data.sh            # knobs below via env vars
set -euo pipefail
cd "$(dirname "$0")/../../.."
DEB=${DEB:-$(ls bench/data/cache/linux-doc-*.deb 2>/dev/null | head -1)}
CORPUS=${CORPUS:-runs/realtext/corpus}
DATA=${DATA:-runs/realtext/data}
VOCAB=${VOCAB:-32000}
WORKERS=${WORKERS:-$(nproc)}
VAL=${VAL:-0.1}                    # stratified by length: the 6th, 16th, 26th ... longest documents
SAMPLE_MB=${SAMPLE_MB:-400}        # the BPE is trained on the first SAMPLE_MB of text
SITE=${SITE:-}                     # site-packages folder(s) to read Python projects from (default: this python's)
EXTRA=${EXTRA---stdlib}            # more build_corpus.py options, e.g. "--stdlib --exclude transformers"
[ -n "$DEB" ] || { echo "error: no linux-doc .deb: run bench/data/fetch_linux_doc.sh where apt works, carry bench/data/cache/" >&2; exit 2; }
site_args=(); for s in $SITE; do site_args+=(--site "$s"); done
if [ ! -f "$CORPUS/corpus.json" ]; then
  echo "=== corpus -> $CORPUS ($(date -u +%H:%M:%S))"
  python3 bench/data/build_corpus.py --deb "$DEB" --out "$CORPUS" "${site_args[@]}" $EXTRA
fi
echo "=== hsa data prepare -> $DATA ($(date -u +%H:%M:%S))"
hsa data prepare "$CORPUS/linux-doc" "$CORPUS/python" --out "$DATA" --tokenizer "bpe:$VOCAB" \
    --tokenizer-sample-mb "$SAMPLE_MB" --val-fraction "$VAL" --workers "$WORKERS" --no-progress
hsa data info "$DATA" --no-verify
