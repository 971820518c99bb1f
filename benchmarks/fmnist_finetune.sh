#!/usr/bin/env bash
# Does fine-tuning pay? Pretrain FasterNet-T0 on Fashion-MNIST classes 0-4 (all their training images),
# then train on classes 5-9 with 100 training images per class, fine-tuned from that model or from
# scratch with the same budget; top-1 on the 5,000 test images of classes 5-9.
#   bash benchmarks/fmnist_finetune.sh FASHION_MNIST_FOLDER [OUTDIR]
# FASHION_MNIST_FOLDER is `fasternet prepare fashion-mnist DIR` output (train/ and val/ = the test set).
set -euo pipefail
PY="${PYTHON:-python3}"
SOURCE="$1"
OUT="${2:-runs/fmnist_finetune}"
PRETRAIN_EPOCHS="${PRETRAIN_EPOCHS:-10}"
EPOCHS="${EPOCHS:-10}"
mkdir -p "$OUT"
"$PY" - "$SOURCE" "$OUT" <<'PYTHON'
import os, sys
from pathlib import Path
source, out = Path(sys.argv[1]), Path(sys.argv[2])
classes = sorted(p.name for p in (source / "train").iterdir())
order = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
assert set(classes) == set(order), classes
def link(split_from, split_to, names, per_class, target):
    for name in names:
        folder = target / split_to / name
        folder.mkdir(parents=True, exist_ok=True)
        files = sorted((source / split_from / name).iterdir())
        for f in files[:per_class]:
            if not (folder / f.name).exists():
                os.symlink(f.resolve(), folder / f.name)
link("train", "train", order[:5], None, out / "data_0to4")
link("val", "val", order[:5], None, out / "data_0to4")
link("train", "train", order[5:], 100, out / "data_5to9_100")
link("val", "val", order[5:], None, out / "data_5to9_100")
PYTHON
COMMON=(--image-size 32 --batch-size 64 --no-progress)
timed() {  # name, flags: wall-clock minutes beside the final line
  local name=$1; shift
  local start=$SECONDS
  "$PY" -m fasternet train "$@" --output "$OUT/$name" 2> "$OUT/$name.log"
  echo "$name: $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s; $(tail -1 "$OUT/$name.log")"
}
echo "# $("$PY" -c 'from fasternet._utils import machine_description; print(machine_description())')"
[ -f "$OUT/pretrain/best.safetensors" ] || timed pretrain --model fasternet_t0 --data "$OUT/data_0to4" \
    --epochs "$PRETRAIN_EPOCHS" --lr 3e-3 --warmup-epochs 1 --mixup 0 --cutmix 0 "${COMMON[@]}"
timed finetuned --pretrained "$OUT/pretrain/best.safetensors" --recipe finetune --data "$OUT/data_5to9_100" \
    --epochs "$EPOCHS" "${COMMON[@]}"
timed scratch_same_recipe --model fasternet_t0 --recipe finetune --data "$OUT/data_5to9_100" --epochs "$EPOCHS" "${COMMON[@]}"
timed scratch_lr3e-3 --model fasternet_t0 --recipe finetune --data "$OUT/data_5to9_100" --epochs "$EPOCHS" --lr 3e-3 \
    "${COMMON[@]}"
