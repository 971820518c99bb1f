"""Commands that run trained models: eval, predict, export, quantize, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from fasternet.builder import create_model
from fasternet.cli._common import add_command, comma_list, from_args, positive_int, positive_int_list, split
from fasternet.inference import bench
from fasternet.inference.exporters import EXPORT_FORMATS, export
from fasternet.inference.prediction import predict
from fasternet.inference.quantization import PRESETS, QUANT_BACKENDS, quantize
from fasternet.inference.runners import BACKENDS, PRECISIONS, int8_runner, runner
from fasternet.io.images import ImageFolder, evaluation_folder, image_loader, log_unreadable
from fasternet.models import FasterNet
from fasternet.training.engine import class_index_map, evaluate


def _model(args: argparse.Namespace) -> FasterNet:
    """The checkpoint's model: ``--model NAME`` names the architecture when the file does not say."""
    if getattr(args, "model", None):
        return create_model(args.model, pretrained=args.checkpoint).eval()
    return create_model(args.checkpoint).eval()


def cmd_eval(args: argparse.Namespace) -> None:
    model = _model(args)
    transform = model.eval_transform.replace(image_size=args.image_size, crop_pct=args.crop_pct)
    folder = ImageFolder(evaluation_folder(args.data), transform=transform)
    label_map = class_index_map(folder.classes, model.class_names, model.num_classes)
    loader = image_loader(folder, batch_size=args.batch_size, workers=args.workers)
    reference = None
    if args.precision == "fp32" and args.backend in (None, "eager"):
        candidate, how = model, "fp32 eager"
    else:
        if args.precision == "int8":
            candidate = int8_runner(
                model,
                calibration=args.calibration,
                quantized=args.quantized,
                backend=args.backend or "openvino",
                samples=args.samples,
                preset=args.preset,
                transform=transform,
                threads=args.threads,
            )
        else:
            backend = "torch" if args.backend == "eager" else (args.backend or "auto")
            size = (args.batch_size, model.in_chans, transform.image_size, transform.image_size)
            candidate = runner(model, backend=backend, precision=args.precision, input_size=size, threads=args.threads)
        reference, how = model, f"{args.precision} {candidate.backend}"
    result = evaluate(
        candidate, loader, device=torch.device("cpu"), label_map=label_map, progress=not args.json, reference=reference
    )
    log_unreadable(result.unreadable)
    agreement = f"  top-1 agreement with fp32 {result.agreement:.2f}%" if result.agreement is not None else ""
    print(
        f"top-1 {result.top1:.3f}%  top-5 {result.top5:.3f}%  on {result.images} images"
        + (f" ({result.skipped} unreadable skipped)" if result.skipped else "")
        + f"{agreement}  [{how}, {transform.image_size}px, crop_pct {transform.crop_pct}]"
    )
    if args.json:
        print(json.dumps({**result.to_dict(), "precision": args.precision, "backend": how}))


def cmd_predict(args: argparse.Namespace) -> int:
    model = _model(args)
    failed = 0
    for prediction in predict(model, args.images, top_k=args.top_k):
        if not prediction.ok:
            failed += 1
            print(f"fasternet: error: {prediction.error}", file=sys.stderr)
        if args.json:
            print(json.dumps(prediction.to_dict()), flush=True)
        elif prediction.ok:
            print(prediction.path)
            for name, probability in prediction.top:
                print(f"  {probability:7.2%}  {name}")
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> None:
    model = create_model(args.model, features_only=True if args.features_only else None)
    size = (args.batch_size, model.in_chans, args.image_size, args.image_size)
    path = export(
        model,
        args.output,
        format=args.format,
        input_size=size,
        dynamic_batch=False if args.static_batch else None,
        int8=args.int8,
        calibration=args.calibration,
        samples=args.samples,
    )
    print(f"wrote {path} ({args.format}, checked against PyTorch)")


def cmd_quantize(args: argparse.Namespace) -> None:
    model = _model(args)
    keep = tuple(split(args.keep_fp32)) if args.keep_fp32 else ()
    quantized = quantize(
        model,
        args.data,
        backend=args.backend,
        samples=args.samples,
        preset=args.preset,
        keep_fp32=keep,
        output=args.output,
        transform=model.eval_transform.replace(image_size=args.image_size),
    )
    kept = f", fp32 {'+'.join(keep)}" if keep else ""
    print(
        f"wrote {quantized.path} (INT8, {args.backend}, {quantized.metadata['calibration_samples']} "
        f"calibration images, preset {args.preset}{kept})"
    )


def cmd_bench(args: argparse.Namespace) -> None:
    request = from_args(args, bench.BenchRequest).with_preset(args.preset)
    say = (lambda m: None) if args.json else (lambda m: print(f"... {m}", file=sys.stderr))
    if args.what == "operators":
        gpu = request.device.startswith("cuda")
        rows = bench.operator_table(
            threads=request.threads, rounds=request.rounds, device=request.device, batch=64 if gpu else 1
        )
        if args.json:
            print(
                json.dumps(
                    {"machine": bench.machine_description(request.device), "threads": request.threads, "rows": rows}
                )
            )
        else:
            print(
                f"# {bench.machine_description(request.device)}; threads {request.threads or torch.get_num_threads()}; "
                "ten stacked layers, batch 1; GMAC/s = the paper's 'GFLOPs/s' (one FLOP per MAC)"
            )
            print(bench.format_operator_table(rows))
        return
    report = bench.benchmark(request, progress=say)
    print(json.dumps(report.to_dict()) if args.json else report.format())
    if args.plot:
        bench.plot(report.rows, args.plot)
        print(f"# wrote {args.plot}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "eval", cmd_eval, "top-1/top-5 of a checkpoint on an image folder")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or URL")
    p.add_argument("--data", required=True, help="folder of class folders (or a root with val/)")
    p.add_argument("--model", help="variant name (needed only when the checkpoint does not say)")
    p.add_argument("--image-size", type=positive_int, help="evaluation size (default: the checkpoint's, else 224)")
    p.add_argument("--crop-pct", type=float, help="center-crop fraction (default: the checkpoint's, else 0.9)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch size")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "int8"],
        default="fp32",
        help="bf16/int8 run through a runner and also report top-1 agreement with fp32",
    )
    p.add_argument(
        "--backend",
        choices=["eager", "torch", "onnxruntime", "openvino"],
        help="runner backend (default: eager for fp32, the fastest for bf16, openvino for int8)",
    )
    p.add_argument("--calibration", help="int8: image folder to calibrate on (the model's own transform)")
    p.add_argument("--quantized", help="int8: an existing file from `fasternet quantize` (checked against the model)")
    p.add_argument("--samples", type=positive_int, default=300, help="int8: calibration images")
    p.add_argument("--preset", choices=PRESETS, default="accuracy", help="int8 preset")
    p.add_argument("--threads", type=positive_int, help="CPU threads of the runner")
    p.add_argument("--json", action="store_true", help="last line: JSON with top1, top5, images")

    p = add_command(sub, "predict", cmd_predict, "top-k classes of image files (a folder: the images in it)")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or URL")
    p.add_argument("--model", help="variant name (needed only when the checkpoint does not say)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes to show per image")
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.add_argument("images", nargs="+", help="image files or folders")

    p = add_command(sub, "export", cmd_export, "export a deployed model, checked in its runtime")
    p.add_argument("model", help="variant name or checkpoint path/URL")
    p.add_argument("-o", "--output", required=True, help="output file (.onnx .xml .pt2 .pte .tflite .param .mlpackage)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="export format")
    p.add_argument("--image-size", type=positive_int, default=224, help="input height and width")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch traced (onnx/openvino/pt2: dynamic)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size instead (onnx/openvino/pt2)")
    p.add_argument("--int8", action="store_true", help="executorch/litert: INT8 with the toolchain's quantizer")
    p.add_argument("--calibration", help="--int8: image folder to calibrate on (the model's own transform)")
    p.add_argument("--samples", type=positive_int, default=100, help="--int8: calibration images")
    p.add_argument("--features-only", action="store_true", help="export the backbone (four feature maps)")

    p = add_command(
        sub, "quantize", cmd_quantize, "INT8 post-training quantization (NNCF for OpenVINO, or onnxruntime)"
    )
    p.add_argument("checkpoint", help="checkpoint path or URL")
    p.add_argument("--data", required=True, help="calibration image folder (or a root with val/)")
    p.add_argument("-o", "--output", required=True, help="output: .xml (openvino) or .onnx (onnxruntime)")
    p.add_argument("--backend", choices=QUANT_BACKENDS, default="openvino", help="quantization tool")
    p.add_argument("--samples", type=positive_int, default=300, help="calibration images")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default="accuracy",
        help="accuracy: asymmetric activations; performance: symmetric",
    )
    p.add_argument("--keep-fp32", help="comma-separated parts left in fp32: stem, head")
    p.add_argument("--model", help="variant name (needed only when the checkpoint does not say)")
    p.add_argument("--image-size", type=positive_int, help="input size (default: the checkpoint's)")

    p = add_command(sub, "bench", cmd_bench, "latency and throughput per backend and precision, with the GEMM peak")
    p.add_argument(
        "what",
        nargs="?",
        choices=["models", "operators"],
        default="models",
        help="models, or the paper's operator table (Conv, GConv, DWConv, PConv)",
    )
    p.add_argument("--models", type=comma_list, default=("fasternet_t0",), help="comma-separated variants")
    p.add_argument(
        "--backends",
        type=comma_list,
        default=("torch", "onnxruntime", "openvino"),
        help=f"comma-separated, of: {', '.join(BACKENDS)} (triton ones on --device cuda: the fused block kernel)",
    )
    p.add_argument(
        "--precisions",
        type=comma_list,
        default=("fp32", "bf16"),
        help=f"comma-separated, of: {', '.join(PRECISIONS)} (skipped where unsupported; int8 needs --calibration)",
    )
    p.add_argument("--batch-sizes", type=positive_int_list, default=(1,), help="comma-separated batch sizes")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count(), help="CPU threads")
    p.add_argument("--image-size", type=positive_int, default=224, help="input height and width")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds of 10 timed runs each")
    p.add_argument(
        "--preset", choices=list(bench.PRESETS), help="the paper's protocol: CPU 1 thread batch 1, or GPU batch 32"
    )
    p.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the official-computation baselines (eager, onnxruntime, openvino)",
    )
    p.add_argument("--calibration", help="int8: image folder to calibrate on")
    p.add_argument("--samples", type=positive_int, default=64, help="int8: calibration images")
    p.add_argument("--peers", action="store_true", help="also time timm's models (when timm is importable)")
    p.add_argument("--plot", help="write a PNG of latency against MACs (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
