"""Training throughput: `fasternet train` against a plain eager PyTorch loop, same model and data.

    python benchmarks/train_throughput.py --image-size 224 --batch-size 64 --steps 12 --repeats 3
    python benchmarks/train_throughput.py --compare schedules --image-size 32 --steps 60 --repeats 5

With ``--compare schedules``, `fasternet train` with the per-step schedule (the default) against the
same with the official per-epoch one: what the per-step schedule costs.

Both loops train FasterNet-T0 from the same image folder (JPEGs of ImageNet's typical size,
500x375, written once into --data) with the same batch size and number of data workers:

* fasternet: the real `fasternet train` code path (one epoch of `--steps` batches, no mixup),
  whose log reports images/s and the share of step time spent waiting for data;
* eager: the textbook loop: per-sample PIL random-resized crop + flip in the workers, fp32 NCHW,
  cross-entropy, AdamW.

Runs alternate (fasternet, eager, fasternet, ...) and the medians are printed with the CPU model.
Timings on shared machines vary by 20-40% between runs: compare the ratio of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import fasternet
from fasternet._utils import machine_description
from fasternet.io.images import ImageFolder, load_image
from fasternet.training.data import TrainCrop


def write_images(root: Path, count: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", classes)):
        for i in range(n):
            folder = root / split / f"class_{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{i:05d}.jpg"
            if not path.exists():
                base = rng.integers(0, 255, (375 // 25, 500 // 25, 3)).astype(np.uint8)
                Image.fromarray(base).resize((500, 375), Image.BILINEAR).save(path, quality=90)


class _EagerSet(torch.utils.data.Dataset):
    def __init__(self, folder: ImageFolder, size: int):
        self.folder, self.size, self.crop = folder, size, TrainCrop()
        self.mean = torch.tensor(fasternet.EvalTransform().mean).view(3, 1, 1)
        self.std = torch.tensor(fasternet.EvalTransform().std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        path, label = self.folder.samples[index]
        rng = np.random.default_rng(index)
        x = self.crop(load_image(path), self.size, rng).float().div_(255)
        if rng.random() < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std, label


def eager_loop(data: Path, size: int, batch: int, steps: int, workers: int) -> dict:
    torch.manual_seed(0)
    folder = ImageFolder(data / "train")
    model = fasternet.create_model("fasternet_t0", num_classes=len(folder.classes)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.005)
    loader = torch.utils.data.DataLoader(
        _EagerSet(folder, size), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True
    )
    # Timed like `fasternet train` times an epoch: from the first fetch, worker start-up included.
    wait, seen = 0.0, 0
    started = fetch = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        wait += time.perf_counter() - fetch
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += y.numel()
        fetch = time.perf_counter()
        if step + 1 >= steps:
            break
    seconds = time.perf_counter() - started
    return {"images_per_s": seen / seconds, "data_wait_share": wait / seconds}


def fasternet_loop(data: Path, size: int, batch: int, steps: int, workers: int, schedule: str = "step") -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            "-m",
            "fasternet",
            "train",
            "--model",
            "fasternet_t0",
            "--data",
            str(data),
            "--output",
            out,
            "--epochs",
            "1",
            "--batch-size",
            str(batch),
            "--image-size",
            str(size),
            "--warmup-epochs",
            "0",
            "--lr",
            "0.001",
            "--mixup",
            "0",
            "--cutmix",
            "0",
            "--workers",
            str(workers),
            "--no-progress",
            "--schedule",
            schedule,
        ]
        subprocess.run(command, check=True, capture_output=True)
        record = json.loads((Path(out) / "log.jsonl").read_text().splitlines()[0])
    return {"images_per_s": record["images_per_s"], "data_wait_share": record["data_wait_share"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "fasternet-bench-images"))
    parser.add_argument("--compare", choices=["eager", "schedules"], default="eager")
    args = parser.parse_args()

    data = Path(args.data)
    write_images(data, args.batch_size * args.steps)
    common = (data, args.image_size, args.batch_size, args.steps, args.workers)
    if args.compare == "schedules":
        runs = {
            "per-step": lambda: fasternet_loop(*common, "step"),
            "per-epoch": lambda: fasternet_loop(*common, "epoch"),
        }
    else:
        runs = {"fasternet": lambda: fasternet_loop(*common), "eager": lambda: eager_loop(*common)}
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            results[name].append(run())
    print(
        f"# {machine_description()}, {os.cpu_count()} cores; T0 {args.image_size}px, batch {args.batch_size}, "
        f"{args.steps} steps x {args.repeats} interleaved runs, {args.workers} data workers"
    )
    summary = {}
    for name, runs in results.items():
        speed = statistics.median(r["images_per_s"] for r in runs)
        wait = statistics.median(r["data_wait_share"] for r in runs)
        summary[name] = speed
        each = ", ".join(f"{r['images_per_s']:.1f}" for r in runs)
        print(f"{name:<10} {speed:8.1f} img/s (runs: {each})  data wait {wait:.1%} of step time")
    first, second = list(summary)
    print(f"ratio {first} / {second}: {summary[first] / summary[second]:.2f}x")


if __name__ == "__main__":
    main()
