"""Top-1 against training minutes, from the log.jsonl of one or more `fasternet train` runs.

    python benchmarks/plot_curve.py runs/fmnist/log.jsonl [more/log.jsonl ...] -o curve.png [--label NAME ...]

Minutes are cumulative training time (images / images_per_s of each epoch: the training loop,
without the evaluation that draws the curve). The EMA curve is drawn where the run kept one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve(log: Path, images: int | None) -> tuple[list[float], list[float], list[float | None]]:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    minutes, raw, ema, total = [], [], [], 0.0
    for record in records:
        seconds = record.get("train_seconds")
        if seconds is None:  # logs from before train_seconds: the loop's time from its throughput
            seconds = images / record["images_per_s"] if images else record["seconds"]
        total += seconds
        minutes.append(total / 60)
        raw.append(record["val_top1"])
        ema.append(record.get("val_top1_ema"))
    return minutes, raw, ema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--label", action="append", help="one per log (default: the run folder's name)")
    parser.add_argument("--title", default="FasterNet-T0 on Fashion-MNIST, from scratch")
    parser.add_argument("--ylim", type=float, nargs=2, default=(80, 96))
    parser.add_argument("--images", type=int, help="training images per epoch, for logs without train_seconds")
    args = parser.parse_args()
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for i, log in enumerate(args.logs):
        label = args.label[i] if args.label and i < len(args.label) else log.parent.name
        minutes, raw, ema = curve(log, args.images)
        axis.plot(minutes, raw, marker=".", label=f"{label}")
        if any(v is not None for v in ema):
            axis.plot(minutes, [v if v is not None else float("nan") for v in ema], marker=".", label=f"{label}, EMA")
    axis.axhline(95.0, color="gray", linestyle="--", linewidth=0.8)
    axis.set_xlabel("training minutes (2 CPU cores)")
    axis.set_ylabel("test top-1 (%)")
    axis.set_ylim(*args.ylim)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(args.title, fontsize=10)
    figure.tight_layout()
    figure.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
