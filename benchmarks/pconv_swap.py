"""Does putting PConv into my network make it faster? Two networks users modify, measured side by side.

    python benchmarks/pconv_swap.py latency [--rounds 5] [--threads 2]        # both pairs, every runtime
    python benchmarks/pconv_swap.py profile                                  # per-layer FLOPs vs FLOPS
    python benchmarks/pconv_swap.py train --data data/fmnist --epochs 3      # top-1, same budget and recipe

1. A ResNet-18-style classifier with a CIFAR stem (3x3 conv, no max-pool) for 32 x 32 images: its
   BasicBlocks (two 3x3 conv + BN) against the same network with one FasterBlock per BasicBlock
   (PConv + PWConv with no activation between, as the paper's authors advise in the official
   repository's issue #41), widths raised so that the MACs match (x1.75: 112-224-448-896; 549 vs 555 MMACs).
2. A YOLOv8-n-sized stack at 640 x 640: its C2f modules (Bottlenecks of two 3x3 conv) against
   C2fFaster at the same widths, each module alone and the stack of all eight.

Both sides are deployed the same way (`fasternet.deploy`: every BN folded) and timed interleaved
(`fasternet.inference.timing.interleaved`) in eager PyTorch, onnxruntime and OpenVINO, in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import fasternet
from fasternet._utils import machine_description
from fasternet.inference.timing import interleaved
from fasternet.layers import C2fFaster, ConvNormAct, FasterBlock

# --------------------------------------------------------------------------------------------
# The baselines, written as their papers and code describe them


class BasicBlock(nn.Module):
    """ResNet's: 3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut (1x1 conv-BN when the shape changes), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, 3, stride, act_layer="relu")
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, 1, act_layer=None)
        changes = stride != 1 or in_channels != out_channels
        self.shortcut = ConvNormAct(in_channels, out_channels, 1, stride, act_layer=None) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def resnet18_cifar(block: str = "basic", num_classes: int = 10, widths=(64, 128, 256, 512)) -> nn.Sequential:
    """ResNet-18 for small images (3x3 stem, no max-pool), with BasicBlocks or FasterBlocks."""
    layers: list[nn.Module] = [ConvNormAct(3, widths[0], 3, 1, act_layer="relu")]
    channels = widths[0]
    for stage, width in enumerate(widths):
        for i in range(2):
            stride = 2 if stage > 0 and i == 0 else 1
            if block == "basic":
                layers.append(BasicBlock(channels, width, stride))
            else:
                layers.append(FasterBlock(channels, width, stride=stride))
            channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """YOLOv8's: 3x3 ConvNormAct (SiLU), 3x3 ConvNormAct (SiLU), + x when shortcut."""

    def __init__(self, channels: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = ConvNormAct(channels, channels, 3)
        self.cv2 = ConvNormAct(channels, channels, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8's C2f: the layout of fasternet.layers.C2fFaster with Bottlenecks."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.hidden = out_channels // 2
        self.cv1 = ConvNormAct(in_channels, 2 * self.hidden, 1)
        self.cv2 = ConvNormAct((2 + n) * self.hidden, out_channels, 1)
        self.m = nn.ModuleList(Bottleneck(self.hidden, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = list(self.cv1(x).chunk(2, dim=1))
        for block in self.m:
            pieces.append(block(pieces[-1]))
        return self.cv2(torch.cat(pieces, dim=1))


FASTER_WIDTHS = (112, 224, 448, 896)  # x1.75: the MACs of ResNet-18's 64-128-256-512 at 32 x 32

# YOLOv8-n's C2f modules (yolov8.yaml at width 0.25, depth 0.33): (name, in, out, n, shortcut, input side at 640)
YOLOV8N_C2F = [
    ("backbone.2", 32, 32, 1, True, 160),
    ("backbone.4", 64, 64, 2, True, 80),
    ("backbone.6", 128, 128, 2, True, 40),
    ("backbone.8", 256, 256, 1, True, 20),
    ("neck.12", 384, 128, 1, False, 40),
    ("neck.15", 192, 64, 1, False, 80),
    ("neck.18", 192, 128, 1, False, 40),
    ("neck.21", 384, 256, 1, False, 20),
]


def c2f_module(kind: str, in_channels: int, out_channels: int, n: int, shortcut: bool) -> nn.Module:
    if kind == "c2f":
        return C2f(in_channels, out_channels, n, shortcut)
    return C2fFaster(in_channels, out_channels, n=n, shortcut=shortcut)


# --------------------------------------------------------------------------------------------
# Measurement


def _randomized(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def macs_and_params(model: nn.Module, size: tuple[int, ...]) -> tuple[int, int]:
    report = fasternet.profile(model, size)
    return report.macs, sum(p.numel() for p in model.parameters())


def _engines(model: nn.Module, size: tuple[int, ...], threads: int) -> dict[str, callable]:
    """The deployed model in each runtime, as fasternet.runner builds it (no autotuning)."""
    calls = {}
    for backend in ("torch", "onnxruntime", "openvino"):
        run = fasternet.runner(model, backend=backend, input_size=size, threads=threads)
        x = torch.randn(size)
        calls[backend] = (lambda r, t: lambda: r(t))(run, x)
    return calls


def latency(args: argparse.Namespace) -> dict:
    results: dict = {"machine": machine_description(), "threads": args.threads, "rows": []}
    pairs = {
        "resnet18": (resnet18_cifar("basic"), resnet18_cifar("faster", widths=FASTER_WIDTHS), (3, 32, 32)),
    }
    for name, _i, o, n, s, side in YOLOV8N_C2F:
        pairs[f"yolov8n {name}"] = (C2f(_i, o, n, s), C2fFaster(_i, o, n=n, shortcut=s), (_i, side, side))
    for pair, (baseline, swapped, shape) in pairs.items():
        batches = args.batch_sizes if pair == "resnet18" else [1]
        for batch in batches:
            size = (batch, *shape)
            calls, info = {}, {}
            for label, model in (("baseline", baseline), ("pconv", swapped)):
                model = _randomized(model)
                macs, params = macs_and_params(model, (1, *shape))
                info[label] = {"macs": macs, "params": params}
                for engine, call in _engines(model, size, args.threads).items():
                    calls[(label, engine)] = call
            print(f"... timing {pair} batch {batch}", file=sys.stderr)
            times = interleaved(calls, rounds=args.rounds, per_round=5, warmup=3)
            for (label, engine), t in times.items():
                results["rows"].append(
                    {
                        "pair": pair,
                        "batch": batch,
                        "side": label,
                        "engine": engine,
                        "ms": 1e3 * statistics.median(t),
                        **info[label],
                    }
                )
    _print_latency(results)
    return results


def _print_latency(results: dict) -> None:
    print(f"# {results['machine']}, {results['threads']} threads; median ms, deployed (BN folded) on both sides")
    print(f"{'pair':<22} {'batch':>5} {'engine':<12} {'base MMACs':>10} {'pconv MMACs':>11} "
          f"{'base ms':>9} {'pconv ms':>9} {'speed-up':>8}")  # fmt: skip
    rows = results["rows"]
    keys = sorted({(r["pair"], r["batch"], r["engine"]) for r in rows}, key=lambda k: (k[0] != "resnet18", k))
    for pair, batch, engine in keys:
        base = next(
            r for r in rows if (r["pair"], r["batch"], r["engine"], r["side"]) == (pair, batch, engine, "baseline")
        )
        swap = next(
            r for r in rows if (r["pair"], r["batch"], r["engine"], r["side"]) == (pair, batch, engine, "pconv")
        )
        print(
            f"{pair:<22} {batch:>5} {engine:<12} {base['macs'] / 1e6:>10.1f} {swap['macs'] / 1e6:>11.1f} "
            f"{base['ms']:>9.3f} {swap['ms']:>9.3f} {base['ms'] / swap['ms']:>7.2f}x"
        )


def profile(args: argparse.Namespace) -> None:
    """Per layer type: MACs and achieved GFLOP/s of each side (eager, batch 1), where the time goes."""
    print(f"# {machine_description()}, {args.threads} threads; eager PyTorch, BN not folded (per-layer hooks)")
    torch.set_num_threads(args.threads)
    cases = {
        "resnet18 basic": (resnet18_cifar("basic"), (1, 3, 32, 32)),
        "resnet18 faster": (resnet18_cifar("faster", widths=FASTER_WIDTHS), (1, 3, 32, 32)),
        "yolov8n backbone.4 C2f": (C2f(64, 64, 2), (1, 64, 80, 80)),
        "yolov8n backbone.4 C2fFaster": (C2fFaster(64, 64, n=2), (1, 64, 80, 80)),
    }
    for name, (model, size) in cases.items():
        report = fasternet.profile(_randomized(model), size, measure=True, repeats=args.rounds * 10)
        by_type: dict[str, list[float]] = {}
        for row in report.rows:
            entry = by_type.setdefault(row.type, [0.0, 0.0, 0.0])
            entry[0] += row.macs
            entry[1] += row.time_ms or 0.0
            entry[2] += row.memory_access
        total_ms = sum(v[1] for v in by_type.values())
        print(f"\n{name}: {report.macs / 1e6:.1f} MMACs, {total_ms:.2f} ms summed over layers")
        for kind, (macs, ms, memory) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
            gflops = 2 * macs / ms / 1e6 if ms else 0.0
            print(f"  {kind:<16} {macs / 1e6:>8.1f} MMACs {ms:>8.3f} ms ({ms / total_ms:5.1%}) "
                  f"{gflops:>7.1f} GFLOP/s  {memory / 1e3:>9.1f} K elements moved")  # fmt: skip


def train(args: argparse.Namespace) -> None:
    """Both ResNet-18s on the same images, same recipe and budget (fasternet's training engine)."""
    from fasternet.io.images import ImageFolder, collate_skipping_failures, image_loader
    from fasternet.models import EvalTransform
    from fasternet.training.augment import BatchAugment, Mixup, SampleParams
    from fasternet.training.data import EpochSampler, PadCrop, TrainingImages
    from fasternet.training.engine import evaluate, train_one_epoch
    from fasternet.training.schedule import LrSchedule

    data = Path(args.data)
    transform = EvalTransform(32, 1.0)
    train_folder = ImageFolder(data / "train")
    if args.train_images:
        step = max(1, len(train_folder) // args.train_images)
        train_folder.samples = train_folder.samples[::step][: args.train_images]
    val = image_loader(ImageFolder(data / "val", transform=transform), batch_size=256, workers=2)
    images = TrainingImages(train_folder, crop=PadCrop(4), augment_params=SampleParams(), seed=0)
    print(f"# {machine_description()}; {len(images)} training images, {args.epochs} epochs, batch {args.batch_size}")
    swapped = resnet18_cifar("faster", widths=FASTER_WIDTHS)
    for name, model in (("ResNet-18 (BasicBlocks)", resnet18_cifar("basic")), ("ResNet-18 (FasterBlocks)", swapped)):
        torch.manual_seed(0)
        model = model.to(memory_format=torch.channels_last)
        sampler = EpochSampler(len(images), global_batch=args.batch_size)
        loader = torch.utils.data.DataLoader(
            images, batch_size=args.batch_size, sampler=sampler, num_workers=2, collate_fn=collate_skipping_failures
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
        schedule = LrSchedule(args.lr, 1e-6, 1e-5, 1, args.epochs, steps_per_epoch=len(loader))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i, s=schedule: s(i) / args.lr)
        augment = BatchAugment(mean=transform.mean, std=transform.std, randaugment=None, mixup=Mixup(num_classes=10))
        started = time.perf_counter()
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch, 32)
            train_one_epoch(
                model, loader, optimizer, augment=augment, device=torch.device("cpu"),
                scaler=torch.amp.GradScaler("cpu", enabled=False), autocast_dtype=torch.bfloat16 if args.bf16 else None,
                clip_grad=None, scheduler=scheduler,
            )  # fmt: skip
            result = evaluate(model, val, device=torch.device("cpu"), progress=False)
            minutes = (time.perf_counter() - started) / 60
            print(f"{name}: epoch {epoch + 1}  val top-1 {result.top1:.2f}%  ({minutes:.1f} min)", flush=True)
        report = fasternet.profile(model.eval(), (1, 3, 32, 32))
        print(f"{name}: {report.params / 1e6:.2f} M params, {report.macs / 1e6:.0f} MMACs at 32 x 32", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("latency", help="both pairs in eager, onnxruntime and OpenVINO")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 32])
    p.add_argument("--json", help="also write the rows to this file")
    p = sub.add_parser("profile", help="per layer type: MACs and achieved GFLOP/s")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("train", help="top-1 of both ResNet-18s, same recipe and budget")
    p.add_argument("--data", required=True, help="fasternet prepare fashion-mnist output")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-images", type=int, help="a spread subset of the training images (default: all)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    args = parser.parse_args()
    if args.what == "latency":
        results = latency(args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    elif args.what == "profile":
        profile(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
