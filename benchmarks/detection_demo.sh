#!/usr/bin/env bash
# The README's detection demo: FasterNet-T0 vs ResNet-50 (both from scratch: nothing can be
# downloaded here) under the same Faster R-CNN on the tree crowns and Mask R-CNN on the nuclei.
#   PYTHON=/path/to/venv-with-torchvision/bin/python bash benchmarks/detection_demo.sh OUTDIR
set -euo pipefail
PY="${PYTHON:-python3}"
OUT="${1:-runs/detection_demo}"
SHARED="$(cd "$(dirname "$0")/../.." && pwd)/shared/data"
mkdir -p "$OUT"
"$PY" -m fasternet prepare trees "$OUT/trees" --source "$SHARED/trees"
"$PY" -m fasternet prepare nuclei "$OUT/nuclei" --source "$SHARED/nuclei"
COMMON=(--epochs 24 --lr-steps 16,22 --warmup-iters 50 --batch-size 2 --workers 1 --no-progress)
run() {  # name arch data size backbone
  local start=$SECONDS
  "$PY" -m fasternet detect train --arch "$2" --backbone "$5" --data "$OUT/$3" --output "$OUT/$1" \
      --min-size "$4" --max-size "$4" "${COMMON[@]}" 2> "$OUT/$1.log"
  echo "$1: $(( SECONDS - start )) s" | tee -a "$OUT/times.txt"
  "$PY" -m fasternet detect eval --checkpoint "$OUT/$1/best.safetensors" --data "$OUT/$3" --json \
      | tail -1 > "$OUT/$1.eval.json"
}
run trees_fasternet_t0 fasterrcnn trees 400 fasternet_t0
run trees_resnet50 fasterrcnn trees 400 resnet50
run nuclei_fasternet_t0 maskrcnn nuclei 256 fasternet_t0
run nuclei_resnet50 maskrcnn nuclei 256 resnet50
