#!/usr/bin/env bash
# Issue 14, result 2: FasterNet-T0 from scratch on all of Fashion-MNIST (60,000 train / 10,000 test),
# one command, within 60 minutes of training on a 2-core CPU. The images (28 px) are resized to 64 px:
# T0's stem has stride 4, so at 32 px its last stage sees a single pixel; 64 px keeps 2 x 2 there.
#   bash benchmarks/fmnist_full.sh [OUTDIR]      (needs Debian's dataset-fashion-mnist, or FASHION_MNIST=DIR)
set -euo pipefail
PY="${PYTHON:-python3}"
OUT="${1:-runs/fmnist_full}"
DATA="${DATA:-$OUT/data}"
mkdir -p "$OUT"
[ -d "$DATA/train" ] || "$PY" -m fasternet prepare fashion-mnist "$DATA" ${FASHION_MNIST:+--source "$FASHION_MNIST"} > /dev/null
echo "# $("$PY" -c 'from fasternet._utils import machine_description; print(machine_description())')"
"$PY" -m fasternet train --model fasternet_t0 --data "$DATA" --output "$OUT/t0" \
  --epochs 30 --batch-size 128 --image-size 64 --lr 4e-3 --warmup-epochs 1 --mixup 0 --cutmix 0 \
  --random-erasing 0.1 --ema 0.9995 --no-progress 2> "$OUT/t0.log"
tail -1 "$OUT/t0.log"
