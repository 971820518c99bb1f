"""FasterNet in the engines phones use: file sizes, agreement with PyTorch, INT8, and XNNPACK latency.

    .venv-tv/bin/python benchmarks/edge_bench.py peers --out runs/peers     # timm's MobileNetV2 and
                                                                          # MobileViT-XXS as .pt2 files
    python benchmarks/edge_bench.py formats --checkpoint runs/fmnist/best.safetensors --data data/fmnist
    python benchmarks/edge_bench.py latency --peers runs/peers --calibration data/fmnist/train

`formats`: the trained model exported to every format, each run in its runtime on the 10,000 test
images: file size, largest relative error on a random batch, top-1 and top-1 agreement with PyTorch;
INT8 (ExecuTorch's XNNPACK quantizer, LiteRT's) with their top-1 drop. `latency`: 224 x 224, batch
1, at 1 and 2 threads, interleaved per thread count: our deployed T0, the official graph exported
as-is (BN not folded, PConv by concatenation), MobileNetV2 and MobileViT-XXS, in ExecuTorch
(XNNPACK) and LiteRT (XNNPACK), and T0 in INT8. An x86 run of the ARM engines: the ratios say how
the networks compare in XNNPACK, not how fast a phone is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import fasternet
from fasternet._utils import machine_description, relative_error
from fasternet.inference import edge
from fasternet.inference.timing import interleaved
from fasternet.io.images import ImageFolder, evaluation_folder, image_loader

PEERS = ("mobilenetv2_100", "mobilevit_xxs")


def peers(args: argparse.Namespace) -> None:
    """timm's models as torch.export archives (run where timm imports: the torchvision environment)."""
    import timm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in PEERS:
        model = timm.create_model(name, pretrained=False).eval()
        program = torch.export.export(model, (torch.randn(1, 3, 224, 224),))
        torch.export.save(program, str(out / f"{name}.pt2"))
        print(f"wrote {out / name}.pt2")


def _predictions(run, folder: ImageFolder, batch_size: int = 1) -> tuple[list[int], list[int]]:
    """Top-1 class of ``run`` and the label for every image of the folder (the files' fixed shape: batch 1)."""
    predicted, labels = [], []
    for batch, _ in image_loader(folder, batch_size=batch_size, workers=0):
        if batch is None:
            continue
        with torch.no_grad():
            got = run(batch[0])
        predicted += (got[0] if isinstance(got, list) else got).argmax(dim=1).tolist()
        labels += batch[1].tolist()
    return predicted, labels


def _top1(run, folder: ImageFolder, reference: list[int]) -> tuple[float, float]:
    """Top-1 of ``run`` over the folder and its top-1 agreement with the reference predictions."""
    predicted, labels = _predictions(run, folder)
    correct = sum(p == label for p, label in zip(predicted, labels, strict=True))
    agree = sum(p == r for p, r in zip(predicted, reference, strict=True))
    return 100 * correct / len(labels), 100 * agree / len(labels)


def _ncnn_call(path: Path):
    net = edge.ncnn_net(path)
    return lambda x: net(x)[0]


def formats(args: argparse.Namespace) -> None:
    model = fasternet.create_model(args.checkpoint).eval()
    size = model.eval_transform.image_size
    folder = ImageFolder(evaluation_folder(args.data), transform=model.eval_transform)
    if args.limit:
        folder.samples = folder.samples[:: max(1, len(folder) // args.limit)][: args.limit]
    print(f"# {machine_description()}; {args.checkpoint} at {size} px; {len(folder)} test images")
    out = Path(tempfile.mkdtemp(prefix="fasternet-edge-"))
    probe = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference, labels = _predictions(model, folder, batch_size=250)
    pytorch_top1 = 100 * sum(p == label for p, label in zip(reference, labels, strict=True)) / len(labels)
    rows = [{"format": "PyTorch (eager fp32)", "bytes": None, "error": 0.0, "top1": pytorch_top1, "agreement": 100.0}]
    for fmt, int8 in [(f, False) for f in ("onnx", "openvino", "executorch", "litert", "ncnn", "coreml")] + [
        ("executorch", True),
        ("litert", True),
    ]:
        name = f"{fmt} int8" if int8 else fmt
        print(f"... {name}", file=sys.stderr)
        extra = {"int8": True, "calibration": args.calibration, "samples": 300} if int8 else {}
        if args.formats and name not in args.formats:
            continue
        try:
            path = fasternet.export(
                model, out / name.replace(" ", "_"), format=fmt, input_size=(1, 3, size, size), **extra
            )
        except fasternet.ExportError as error:  # a failed check is a result too
            rows.append({"format": name, "bytes": None, "error": None, "top1": None, "agreement": None})
            print(f"{name}: {str(error).splitlines()[0]}", file=sys.stderr)
            continue
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        if fmt in ("openvino", "ncnn"):
            files.append(path.with_suffix(".bin"))
        row = {"format": name, "bytes": sum(f.stat().st_size for f in files)}
        if fmt == "coreml":
            row.update(error=None, top1=None, agreement=None)  # Core ML predicts on macOS only
        else:
            run = _ncnn_call(path) if fmt == "ncnn" else fasternet.runner(path)  # no NCNN runner backend
            with torch.no_grad():
                got = run(probe)
                row["error"] = relative_error(got[0] if isinstance(got, list) else got, model(probe))
            row["top1"], row["agreement"] = _top1(run, folder, reference)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(f"{'format':<22} {'size (MB)':>9} {'max rel. error':>14} {'top-1':>7} {'agreement':>9} {'vs fp32':>7}")
    for row in rows:
        size_mb = f"{row['bytes'] / 1e6:.2f}" if row["bytes"] else "-"
        error = f"{row['error']:.1e}" if row["error"] is not None else "-"
        top1 = f"{row['top1']:.2f}" if row["top1"] is not None else "-"
        agreement = f"{row['agreement']:.2f}" if row["agreement"] is not None else "-"
        drop = f"{row['top1'] - pytorch_top1:+.2f}" if row["top1"] is not None else "-"
        print(f"{row['format']:<22} {size_mb:>9} {error:>14} {top1:>7} {agreement:>9} {drop:>7}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def _official_graph() -> torch.nn.Module:
    """What a user exports without this package: the official computation, BN not folded."""
    torch.manual_seed(0)
    return fasternet.create_model("fasternet_t0").eval()


def latency(args: argparse.Namespace) -> None:
    x = torch.randn(1, 3, 224, 224)
    out = Path(tempfile.mkdtemp(prefix="fasternet-edge-latency-"))
    torch.manual_seed(0)
    t0 = fasternet.create_model("fasternet_t0").eval()
    graphs: dict[str, torch.nn.Module] = {
        "FasterNet-T0 (deployed)": fasternet.deploy(t0),
        "FasterNet-T0 (official graph as-is)": _official_graph(),
    }
    for name in PEERS:
        graphs[name] = torch.export.load(str(Path(args.peers) / f"{name}.pt2")).module()
    files: dict[tuple[str, str], Path] = {}
    with edge.quiet():
        for label, graph in graphs.items():
            stem = label.split(" ")[0] + ("_official" if "official" in label else "")
            for engine, writer, suffix in (
                ("executorch", edge.write_executorch, ".pte"),
                ("litert", edge.write_litert, ".tflite"),
            ):
                path = out / f"{stem}{suffix}"
                writer(graph, x, path)
                files[(label, engine)] = path
    # INT8 needs trained weights: a random network's activations quantize too coarsely for the export check.
    quantized = fasternet.create_model(args.int8_checkpoint).eval() if args.int8_checkpoint else t0
    for engine, suffix in (("executorch", ".pte"), ("litert", ".tflite")):
        try:
            path = fasternet.export(
                quantized, out / f"t0_int8{suffix}", format=engine, input_size=(1, 3, 224, 224), int8=True,
                calibration=args.calibration, samples=64, transform=fasternet.EvalTransform(224, 1.0),
            )  # fmt: skip
        except fasternet.ExportError as error:
            print(f"# {engine} INT8 not timed: {str(error).splitlines()[0]}")
            continue
        files[("FasterNet-T0 INT8 (deployed)", engine)] = path
    print(f"# {machine_description()}; 224 x 224, batch 1, median ms of {args.rounds} interleaved rounds")
    results = []
    for threads in (1, 2):
        calls = {}
        for (label, engine), path in files.items():
            run = fasternet.runner(path, threads=threads)
            calls[(label, engine)] = (lambda r: lambda: r(x))(run)
        times = interleaved(calls, rounds=args.rounds, per_round=10, warmup=5)
        for (label, engine), t in times.items():
            results.append({"model": label, "engine": engine, "threads": threads, "ms": 1e3 * statistics.median(t)})
    print(f"{'model':<38} {'engine':<11} {'1 thread':>9} {'2 threads':>10}")
    for label, engine in files:
        ms = {r["threads"]: r["ms"] for r in results if r["model"] == label and r["engine"] == engine}
        print(f"{label:<38} {engine:<11} {ms[1]:>9.2f} {ms[2]:>10.2f}")
    for engine in ("executorch", "litert"):
        one = {r["model"]: r["ms"] for r in results if r["engine"] == engine and r["threads"] == 1}
        ours = one["FasterNet-T0 (deployed)"]
        print(
            f"# {engine}, 1 thread: MobileViT-XXS / T0 = {one['mobilevit_xxs'] / ours:.2f}x, "
            f"MobileNetV2 / T0 = {one['mobilenetv2_100'] / ours:.2f}x, "
            f"official graph / deployed = {one['FasterNet-T0 (official graph as-is)'] / ours:.2f}x, "
            f"fp32 / INT8 = {ours / one.get('FasterNet-T0 INT8 (deployed)', float('nan')):.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("peers", help="timm's MobileNetV2 and MobileViT-XXS as .pt2 (torchvision environment)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("formats", help="every format of a trained model on a test folder")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="test images (a folder of class folders, or a root with val/)")
    p.add_argument("--calibration", required=True, help="INT8 calibration images")
    p.add_argument("--limit", type=int, help="evaluate on a spread subset of this many images")
    p.add_argument("--formats", type=lambda v: v.split(","), help="only these rows, e.g. 'litert int8,onnx'")
    p.add_argument("--json")
    p = sub.add_parser("latency", help="XNNPACK latency: T0, its official graph, MobileNetV2, MobileViT-XXS")
    p.add_argument("--peers", required=True, help="the folder `peers` wrote")
    p.add_argument("--calibration", required=True, help="images for the INT8 T0")
    p.add_argument("--int8-checkpoint", help="a trained T0 to quantize (its classifier may have fewer classes)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    args = parser.parse_args()
    {"peers": peers, "formats": formats, "latency": latency}[args.what](args)


if __name__ == "__main__":
    main()
