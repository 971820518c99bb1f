"""Mask R-CNN speed, FasterNet-S against ResNet-50 (the paper's Table 4 pair), in one run.

    python benchmarks/detection_speed.py --repeats 3

Inference: one 800x1333 image (already at the model's size), median latency. Training: one step
(forward, backward, AdamW) on two 800x1333 images with ten random boxes and masks each, median
step time, with denormals flushed to zero (what `fasternet detect train` does) and without.
Runs are interleaved; both detectors are randomly initialized (nothing can be downloaded here).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fasternet._utils import machine_description
from fasternet.detection import create_detector


def random_targets(count: int, height: int, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    xy = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
    size = 40 + torch.rand(count, 2, generator=generator) * 200
    boxes = torch.cat([xy, xy + size], dim=1)
    masks = torch.zeros(count, height, width, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        masks[i, y1:y2, x1:x2] = True
    return {"boxes": boxes, "labels": torch.ones(count, dtype=torch.int64), "masks": masks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, args.height, args.width, generator=generator)
    batch = [torch.rand(3, args.height, args.width, generator=generator) for _ in range(2)]
    targets = [random_targets(10, args.height, args.width, generator) for _ in range(2)]
    models = {}
    for name in ("fasternet_s", "resnet50"):
        torch.manual_seed(0)
        models[name] = create_detector(
            "maskrcnn", backbone=name, num_classes=80, min_size=args.height, max_size=args.width
        )
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, model in models.items():
            model.eval()
            with torch.no_grad():
                start = time.perf_counter()
                model([image])
                times.setdefault(f"{name} inference", []).append(time.perf_counter() - start)
            model.train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            for flush in (True, False):
                torch.set_flush_denormal(flush)
                start = time.perf_counter()
                loss = sum(model(batch, targets).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                times.setdefault(f"{name} train step, flush denormals {'on' if flush else 'off'}", []).append(
                    time.perf_counter() - start
                )
            torch.set_flush_denormal(False)
    print(f"# {machine_description()}; Mask R-CNN, {args.height}x{args.width}, {args.repeats} interleaved rounds")
    for key, values in times.items():
        print(f"{key:<48} {statistics.median(values[1:]):7.2f} s   (runs: {', '.join(f'{v:.2f}' for v in values[1:])})")


if __name__ == "__main__":
    main()
