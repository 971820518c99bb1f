#!/usr/bin/env bash
# The short run of issue 14 on a Fashion-MNIST subset (4,000 train / 1,000 val images, 32 px, 5 epochs,
# batch 64): the command as a user types it, and the same command with the old behaviour switched back on
# piece by piece (per-epoch schedule, ImageNet's crops), so each change's share is measured in one run.
#   bash benchmarks/fmnist_subset.sh [OUTDIR]      (needs Debian's dataset-fashion-mnist, or FASHION_MNIST=DIR)
set -euo pipefail
PY="${PYTHON:-python3}"
OUT="${1:-runs/fmnist_subset}"
DATA="$OUT/data"
mkdir -p "$OUT"
"$PY" -m fasternet prepare fashion-mnist "$DATA" --train 4000 --val 1000 ${FASHION_MNIST:+--source "$FASHION_MNIST"} > /dev/null
COMMAND=(--model fasternet_t0 --data "$DATA" --epochs 5 --batch-size 64 --image-size 32 --lr 3e-3 --warmup-epochs 1
         --mixup 0 --cutmix 0 --no-progress)
run() {  # name, extra flags
  local name=$1; shift
  "$PY" -m fasternet train "${COMMAND[@]}" "$@" --output "$OUT/$name" 2> "$OUT/$name.log"
  echo "$name ($*): $(tail -1 "$OUT/$name.log")"
}
echo "# $("$PY" -c 'from fasternet._utils import machine_description; print(machine_description())')"
run default
run imagenet_crops --crop-scale 0.08 --crop-pct 0.9
run old_behaviour --crop-scale 0.08 --crop-pct 0.9 --schedule epoch
