"""The ``fasternet`` command: a thin front end over the library API.

Every subcommand parses its flags, calls the library, and prints. User errors (a bad
checkpoint, an unknown model, a wrong flag value) end with one ``fasternet: error:`` line and
exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from fasternet import checkpoints, hub, models
from fasternet.profile import profile

__all__ = ["main"]


def _model_or_checkpoint(source: str, **overrides) -> models.FasterNet:
    """A registered name builds the variant (on the meta device: no weights needed); else a file."""
    if source in models.list_models():
        with torch.device("meta"):
            return models.create_model(source, **overrides)
    if not Path(source).exists() and not hub.is_url(source) and "/" not in source and "." not in source:
        models.get_variant(source)  # raises "unknown model ... did you mean"
    return checkpoints.create_model_from_checkpoint(hub.resolve_checkpoint(source), **overrides)


def cmd_list(args: argparse.Namespace) -> None:
    print(f"{'model':<14} {'params':>12} {'GMACs@224':>10} {'top-1':>7}  act   depths      embed_dim")
    for name in models.list_models():
        variant = models.get_variant(name)
        with torch.device("meta"):
            model = models.create_model(name)
        report = profile(model)
        cfg = model.config
        depths = "-".join(str(d) for d in cfg["depths"])
        print(
            f"{name:<14} {report.params:>12,} {report.macs / 1e9:>10.4f} {variant.top1:>7.3f}  "
            f"{cfg['act_layer']:<5} {depths:<11} {cfg['embed_dim']}"
        )


def cmd_profile(args: argparse.Namespace) -> None:
    if args.measure and args.model in models.list_models():
        torch.manual_seed(0)
        model = models.create_model(args.model)  # real weights: measuring runs the model
    else:
        model = _model_or_checkpoint(args.model)
    size = (args.batch_size, model.in_chans, args.image_size, args.image_size)
    report = profile(model, size, measure=args.measure, threads=args.threads)
    if args.json:
        print(json.dumps({"model": args.model, **report.to_dict()}))
    else:
        print(report.table(by_stage=args.by_stage))


def cmd_export(args: argparse.Namespace) -> None:
    from fasternet.export import export

    if args.model in models.list_models():
        model = models.create_model(args.model, features_only=args.features_only)
    else:
        model = checkpoints.create_model_from_checkpoint(hub.resolve_checkpoint(args.model))
    size = (args.batch_size, model.in_chans, args.image_size, args.image_size)
    path = export(model, args.output, format=args.format, input_size=size, dynamic_batch=not args.static_batch)
    print(f"wrote {path} ({args.format}, checked against PyTorch)")


def cmd_bench(args: argparse.Namespace) -> None:
    from fasternet import bench

    if args.what == "operators":
        _bench_operators(args)
        return
    threads = args.threads
    names = _split(args.models)
    for name in names:
        models.get_variant(name)
    backends = _split(args.backends)
    precisions = _split(args.precisions)
    batches = [int(b) for b in _split(args.batch_sizes)]
    if args.preset == "paper-cpu":
        threads, batches, precisions = 1, [1], ["fp32"]
    elif args.preset == "paper-gpu":
        args.device, batches, backends = "cuda", [32], ["torch"]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available here")
    configs = [
        bench.Config(name, backend, precision, batch, threads, args.image_size, args.device)
        for name in names
        for batch in batches
        for precision in precisions
        for backend in (backends + (list(bench.BASELINES) if args.baselines and precision == "fp32" else []))
        if not (backend in bench.BASELINES and args.device != "cpu")
    ]
    say = (lambda m: None) if args.json else (lambda m: print(f"... {m}", file=sys.stderr))
    rows, skipped = bench.run_benchmark(
        configs, rounds=args.rounds, progress=say, calibration=args.calibration, calibration_samples=args.samples
    )
    peaks: dict[str, float] = {}
    peak_detail: dict[str, dict[str, float]] = {}
    if args.device == "cpu":
        for precision in sorted({r.config.precision for r in rows} - {"int8"}):  # no int8 GEMM reference here
            say(f"measuring the {precision} GEMM peak")
            peak_detail[precision] = bench.gemm_peak(threads, precision)
            peaks[precision] = max(peak_detail[precision].values())
    peers = (
        bench.peer_rows(batches, threads, args.image_size, args.device, args.rounds, precisions) if args.peers else None
    )
    if args.json:
        print(
            json.dumps(
                {
                    "machine": bench.machine_description(args.device),
                    "gemm_peak_gflops": peak_detail,
                    "rows": [r.to_dict(peaks.get(r.config.precision)) for r in rows],
                    "skipped": skipped,
                    "peers": peers if peers is None or isinstance(peers, str) else [r.to_dict() for r in peers],
                }
            )
        )
    else:
        print(f"# {bench.machine_description(args.device)}")
        for precision, detail in peak_detail.items():
            engines = ", ".join(f"{k} {v:.0f}" for k, v in detail.items())
            print(f"# GEMM peak {precision} (best of 1024^3, 2048^3; GFLOP/s): {engines}; best {peaks[precision]:.0f}")
        print(bench.format_rows(rows, peaks))
        for reason in skipped:
            print(f"# skipped: {reason}")
        if isinstance(peers, str):
            print(f"# peers: {peers}")
        elif peers:
            print(bench.format_rows(peers, peaks))
    if args.plot:
        bench.plot(rows, args.plot)
        print(f"# wrote {args.plot}", file=sys.stderr)


def _bench_operators(args: argparse.Namespace) -> None:
    from fasternet import bench

    threads = 1 if args.preset == "paper-cpu" else args.threads
    rows = bench.operator_table(threads=threads, rounds=args.rounds)
    if args.json:
        print(json.dumps({"machine": bench.machine_description(), "threads": threads, "rows": rows}))
        return
    print(
        f"# {bench.machine_description()}; threads {threads or torch.get_num_threads()}; "
        "ten stacked layers, batch 1; GMAC/s = the paper's 'GFLOPs/s' (one FLOP per MAC)"
    )
    print(bench.format_operator_table(rows))


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def cmd_info(args: argparse.Namespace) -> None:
    ckpt = checkpoints.read_checkpoint(hub.resolve_checkpoint(args.checkpoint))
    config = ckpt.config or checkpoints.infer_config(ckpt.state_dict)
    info = {
        "file": ckpt.origin,
        "layout": ckpt.layout,
        "variant": checkpoints.identify_variant(config),
        "config": config,
        "tensors": len(ckpt.state_dict),
        "params": sum(
            v.numel()
            for k, v in ckpt.state_dict.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        ),
        "class_names": ckpt.class_names,
    }
    if args.model:
        with torch.device("meta"):
            model = models.create_model(args.model, features_only=bool(config.get("features_only")))
        report = checkpoints.load_checkpoint(model, ckpt)
        info["loads_into"] = args.model
        info["left_initialized"] = len(report.left_initialized)
    if args.json:
        print(json.dumps(info))
        return
    for key, value in info.items():
        if key == "class_names" and value is not None and len(value) > 10:
            value = f"{value[:10]} ... ({len(value)} classes)"
        print(f"{key:<12} {value}")


def cmd_convert(args: argparse.Namespace) -> None:
    source = hub.resolve_checkpoint(args.checkpoint)
    out = Path(args.output)
    if args.layout == "fasternet":
        model = checkpoints.create_model_from_checkpoint(source)
        checkpoints.save_checkpoint(model, out, class_names=model.class_names)
    else:
        ckpt = checkpoints.read_checkpoint(source)
        state_dict = checkpoints.convert_state_dict(ckpt.state_dict, args.layout)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(out))
        else:
            torch.save(state_dict, out)
    print(f"wrote {out} ({args.layout} layout)")


def cmd_download(args: argparse.Namespace) -> None:
    names = models.list_models() if args.model == "all" else [args.model]
    for name in names:
        print(hub.download(models.get_variant(name).url))


def cmd_train(args: argparse.Namespace) -> None:
    from fasternet.train import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    train(config)


def cmd_eval(args: argparse.Namespace) -> None:
    from fasternet.data import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, ImageFolder
    from fasternet.evaluate import class_index_map, evaluate, evaluation_folder, load_for_inference, make_eval_loader

    model, settings = load_for_inference(args.checkpoint, args.model)
    image_size = args.image_size or settings["image_size"]
    crop_pct = args.crop_pct or settings["crop_pct"]
    transform = EvalTransform(image_size, crop_pct, settings["mean"] or IMAGENET_MEAN, settings["std"] or IMAGENET_STD)
    folder = ImageFolder(evaluation_folder(args.data), transform=transform)
    label_map = class_index_map(folder.classes, model.class_names, model.num_classes)
    loader = make_eval_loader(folder, batch_size=args.batch_size, workers=args.workers)
    candidate, reference, how = _precision_runner(args, model, settings, image_size, crop_pct)
    result = evaluate(
        candidate, loader, device=torch.device("cpu"), label_map=label_map, progress=not args.json, reference=reference
    )
    agreement = f"  top-1 agreement with fp32 {result.agreement:.2f}%" if result.agreement is not None else ""
    print(
        f"top-1 {result.top1:.3f}%  top-5 {result.top5:.3f}%  on {result.images} images"
        + (f" ({result.skipped} unreadable skipped)" if result.skipped else "")
        + f"{agreement}  [{how}, {image_size}px, crop_pct {crop_pct}]"
    )
    if args.json:
        print(json.dumps({**result.to_dict(), "precision": args.precision, "backend": how}))


def _precision_runner(args: argparse.Namespace, model, settings: dict, image_size: int, crop_pct: float):
    """The callable to evaluate for --precision, the fp32 reference to compare with, and a label."""
    from fasternet.runners import runner

    if args.precision == "fp32" and args.backend in (None, "eager"):
        return model, None, "fp32 eager"
    size = (args.batch_size, model.in_chans, image_size, image_size)
    if args.precision == "int8":
        from fasternet.quantize import load_quantized, quantize

        if args.quantized:
            quantized = load_quantized(args.quantized, expect=model)
        elif args.calibration:
            quantized = quantize(
                model,
                args.calibration,
                backend=args.backend or "openvino",
                samples=args.samples,
                preset=args.preset,
                settings={**settings, "image_size": image_size, "crop_pct": crop_pct},
            )
        else:
            raise ValueError("--precision int8 needs --calibration DIR (or --quantized FILE)")
        run = runner(quantized, precision="int8", threads=args.threads)
    else:
        backend = "torch" if args.backend == "eager" else (args.backend or "auto")
        run = runner(model, backend=backend, precision=args.precision, input_size=size, threads=args.threads)
    return run, model, f"{args.precision} {run.backend}"


def cmd_predict(args: argparse.Namespace) -> None:
    from fasternet.data import IMAGENET_MEAN, IMAGENET_STD, EvalTransform
    from fasternet.evaluate import load_for_inference, predict

    model, settings = load_for_inference(args.checkpoint, args.model)
    transform = EvalTransform(
        settings["image_size"], settings["crop_pct"], settings["mean"] or IMAGENET_MEAN, settings["std"] or IMAGENET_STD
    )
    results = predict(model, args.images, transform=transform, class_names=model.class_names, top_k=args.top_k)
    for path, top in zip(args.images, results, strict=True):
        if args.json:
            print(json.dumps({"image": path, "top": [{"class": c, "probability": p} for c, p in top]}))
            continue
        print(path)
        for name, probability in top:
            print(f"  {probability:7.2%}  {name}")


def cmd_quantize(args: argparse.Namespace) -> None:
    from fasternet.evaluate import load_for_inference
    from fasternet.quantize import quantize

    model, settings = load_for_inference(args.checkpoint, args.model)
    image_size = args.image_size or settings["image_size"]
    keep = tuple(_split(args.keep_fp32)) if args.keep_fp32 else ()
    quantized = quantize(
        model,
        args.data,
        backend=args.backend,
        samples=args.samples,
        preset=args.preset,
        keep_fp32=keep,
        output=args.output,
        settings={**settings, "image_size": image_size},
    )
    kept = f", fp32 {'+'.join(keep)}" if keep else ""
    print(
        f"wrote {quantized.path} (INT8, {args.backend}, {quantized.metadata['calibration_samples']} "
        f"calibration images, preset {args.preset}{kept})"
    )


def cmd_prepare(args: argparse.Namespace) -> None:
    from fasternet.data import FASHION_MNIST_SOURCE, prepare_fashion_mnist

    if args.dataset in ("trees", "nuclei"):
        from fasternet.detection import data as detection_data

        if not args.source:
            wheel = "deepforest==2.1.0" if args.dataset == "trees" else "stardist==0.9.2"
            raise ValueError(
                f"--source is needed: the folder or the wheel holding the files (pip download {wheel} --no-deps)"
            )
        prepare = detection_data.prepare_trees if args.dataset == "trees" else detection_data.prepare_nuclei
        out = prepare(args.output, source=args.source)
        print(f"wrote {out}/train.json, {out}/val.json and {out}/images")
        return
    if args.dataset == "fashion-mnist":
        out = prepare_fashion_mnist(
            args.output, source=args.source or FASHION_MNIST_SOURCE, train=args.train, val=args.val
        )
        print(f"wrote {out}/train and {out}/val")


def cmd_detect(args: argparse.Namespace) -> None:
    from fasternet.detection import io as detection_io

    if args.detect_command == "train":
        from fasternet.detection.train import DetectionTrainConfig, train_detector

        fields = {f.name for f in dataclasses.fields(DetectionTrainConfig)}
        values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
        values["lr_steps"] = tuple(int(v) for v in _split(args.lr_steps))
        train_detector(DetectionTrainConfig(**values))
        return
    model = detection_io.load_detector(args.checkpoint)
    if args.detect_command == "eval":
        from fasternet.detection.data import CocoDetection
        from fasternet.detection.train import evaluate_detector

        dataset = CocoDetection(
            Path(args.data) / f"{args.split}.json", masks=model.fasternet_config["arch"] == "maskrcnn"
        )
        metrics = evaluate_detector(model, dataset, device=torch.device("cpu"), progress=not args.json)
        summary = "  ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and k.endswith(("_ap", "_ap50"))
        )
        print(f"{summary}  on {metrics['images']} images")
        if args.json:
            print(json.dumps(metrics))
        return
    from fasternet.data import load_image
    from fasternet.detection.visualize import draw_detections

    names = model.class_names or [str(i) for i in range(1, model.fasternet_config["num_classes"] + 1)]
    for path in args.images:
        try:
            image = load_image(path)
        except Exception as error:
            raise ValueError(f"cannot read image {path}: {error}") from None
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            output = model([x])[0]
        keep = output["scores"] >= args.score_threshold
        detections = [
            {"class": names[int(label) - 1], "score": float(score), "box": [round(float(v), 1) for v in box]}
            for box, score, label in zip(
                output["boxes"][keep], output["scores"][keep], output["labels"][keep], strict=True
            )
        ]
        if args.json:
            print(json.dumps({"image": str(path), "detections": detections}))
        else:
            print(f"{path}: {len(detections)} detections")
            for d in detections[:20]:
                print(f"  {d['score']:.3f}  {d['class']:<16} {d['box']}")
        if args.save_vis:
            masks = output["masks"][keep][:, 0] >= 0.5 if "masks" in output else None
            out = Path(args.save_vis) / (Path(path).stem + "_detections.png")
            out.parent.mkdir(parents=True, exist_ok=True)
            drawing = draw_detections(
                image, output["boxes"][keep], output["labels"][keep], output["scores"][keep], names, masks
            )
            drawing.save(out)
            print(f"  drew {out}")


def cmd_convert_mmdet(args: argparse.Namespace) -> None:
    from fasternet.detection.io import save_detector
    from fasternet.detection.mmdet import load_mmdet

    model = load_mmdet(args.checkpoint)
    path = save_detector(model, args.output)
    config = model.fasternet_config
    print(
        f"wrote {path}: {config['arch']}, {config['num_classes']} classes, backbone embed_dim "
        f"{config['backbone']['embed_dim']} depths {config['backbone']['depths']}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fasternet", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and a traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(func=func)
        return p

    add("list", cmd_list, "list the FasterNet variants with their exact params, MACs and top-1")

    p = add("profile", cmd_profile, "per-layer params, MACs and memory access, grouped by stage")
    p.add_argument("model", help="variant name (see `fasternet list`) or checkpoint path/URL")
    p.add_argument("--image-size", type=int, default=224, help="input height and width")
    p.add_argument("--batch-size", type=int, default=1, help="batch size")
    p.add_argument("--by-stage", action="store_true", help="print one line per stage instead of per layer")
    p.add_argument("--measure", action="store_true", help="also time every layer (eager) and its achieved FLOPS")
    p.add_argument("--threads", type=int, help="CPU threads for --measure (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")

    p = add("export", cmd_export, "export a deployed model (ONNX, OpenVINO IR, torch.export), checked")
    p.add_argument("model", help="variant name or checkpoint path/URL")
    p.add_argument("-o", "--output", required=True, help="output file (.onnx, .xml, .pt2)")
    p.add_argument("--format", choices=["onnx", "openvino", "pt2"], default="onnx", help="export format")
    p.add_argument("--image-size", type=int, default=224, help="input height and width")
    p.add_argument("--batch-size", type=int, default=1, help="batch size traced (the batch stays dynamic)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size instead")
    p.add_argument("--features-only", action="store_true", help="export the backbone (four feature maps)")

    p = add("bench", cmd_bench, "latency and throughput per backend and precision, with the GEMM peak")
    p.add_argument(
        "what",
        nargs="?",
        choices=["models", "operators"],
        default="models",
        help="models, or the paper's operator table (Conv, GConv, DWConv, PConv)",
    )
    p.add_argument("--models", default="fasternet_t0", help="comma-separated variants")
    p.add_argument(
        "--backends",
        default="torch,onnxruntime,openvino",
        help="comma-separated: torch, torch-compile, onnxruntime, openvino; on --device cuda also triton, "
        "triton-compile (the fused block kernel)",
    )
    p.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="comma-separated: fp32, bf16, fp16 (CUDA), int8 (skipped where unsupported; int8 needs --calibration)",
    )
    p.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    p.add_argument("--image-size", type=int, default=224, help="input height and width")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of 10 timed runs each")
    p.add_argument(
        "--preset",
        choices=["paper-cpu", "paper-gpu"],
        help="the paper's protocol: CPU 1 thread batch 1, or GPU batch 32",
    )
    p.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the official-computation baselines (eager, onnxruntime, openvino)",
    )
    p.add_argument("--calibration", help="int8: image folder to calibrate on")
    p.add_argument("--samples", type=int, default=64, help="int8: calibration images")
    p.add_argument("--peers", action="store_true", help="also time timm's models (when timm is importable)")
    p.add_argument("--plot", help="write a PNG of latency against MACs (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add("info", cmd_info, "what a checkpoint is: layout, variant, configuration, classes")
    p.add_argument("checkpoint", help="checkpoint path or URL (any supported layout)")
    p.add_argument("--model", help="also check that it loads (strictly) into this variant")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add("convert", cmd_convert, "convert a checkpoint between layouts")
    p.add_argument("checkpoint", help="checkpoint path or URL (any supported layout)")
    p.add_argument("-o", "--output", required=True, help="output file (.safetensors or .pth)")
    p.add_argument(
        "--layout",
        choices=checkpoints.LAYOUTS,
        default="fasternet",
        help="fasternet: safetensors with the configuration; official/timm: a raw state dict",
    )

    p = add("train", cmd_train, "train on an image folder with the paper's recipe (torchrun for DDP)")
    p.add_argument("--model", required=True, help="variant name")
    p.add_argument("--data", required=True, help="folder holding train/ and val/ image folders")
    p.add_argument("--output", required=True, help="run folder: last.pt, best.safetensors, log.jsonl")
    recipe = p.add_argument_group("recipe overrides (default: the variant's ImageNet recipe)")
    recipe.add_argument("--epochs", type=int, help="epochs (recipe: 300)")
    recipe.add_argument("--batch-size", type=int, help="global batch size over all processes (recipe: 4096/2048)")
    recipe.add_argument("--image-size", type=int, help="final training and evaluation size (recipe: 224)")
    recipe.add_argument(
        "--early-image-size",
        type=int,
        help="progressive resolution: size before the last 20 epochs (recipe: 192 at 224)",
    )
    recipe.add_argument("--lr", type=float, help="peak learning rate (default: 0.001 * batch / 1024)")
    recipe.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    recipe.add_argument("--warmup-epochs", type=int, help="linear warm-up epochs (recipe: 20)")
    recipe.add_argument("--mixup", type=float, help="mixup alpha (0 disables)")
    recipe.add_argument("--cutmix", type=float, help="cutmix alpha (recipe: 1.0; 0 disables)")
    recipe.add_argument("--label-smoothing", type=float, help="label smoothing (recipe: 0.1)")
    recipe.add_argument("--randaugment", help="e.g. rand-m7-mstd0.5-inc1, or none")
    recipe.add_argument("--drop-path-rate", type=float, help="stochastic depth rate of the last block")
    recipe.add_argument("--clip-grad", type=float, help="gradient-norm clipping (0 disables)")
    recipe.add_argument("--crop-scale", type=float, help="smallest random-resized-crop area (recipe: 0.08)")
    recipe.add_argument("--crop-pct", type=float, help="validation center-crop fraction (recipe: 0.9)")
    run = p.add_argument_group("run")
    run.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "fp16", "off"],
        help="autocast: auto = fp16 on GPUs, bf16 on CPUs that have it, else off",
    )
    run.add_argument("--workers", type=int, help="data loading processes per training process (default: cores, max 8)")
    run.add_argument("--pretrained", help="initialize from a checkpoint (any layout; classifier kept if it fits)")
    run.add_argument("--num-classes", type=int, help="check the number of classes (default: from the folders)")
    run.add_argument("--resume", action="store_true", help="continue after the last completed epoch in --output")
    run.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    run.add_argument("--sync-bn", action="store_true", help="batch norm statistics over all processes")
    run.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    p = add("eval", cmd_eval, "top-1/top-5 of a checkpoint on an image folder")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or URL")
    p.add_argument("--data", required=True, help="folder of class folders (or a root with val/)")
    p.add_argument("--model", help="variant name (needed only when the checkpoint does not say)")
    p.add_argument("--image-size", type=int, help="evaluation size (default: the checkpoint's, else 224)")
    p.add_argument("--crop-pct", type=float, help="center-crop fraction (default: the checkpoint's, else 0.9)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size")
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
    p.add_argument("--samples", type=int, default=300, help="int8: calibration images")
    p.add_argument("--preset", choices=["accuracy", "performance"], default="accuracy", help="int8 preset")
    p.add_argument("--threads", type=int, help="CPU threads of the runner")
    p.add_argument("--json", action="store_true", help="last line: JSON with top1, top5, images")

    p = add("predict", cmd_predict, "top-k classes of image files")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or URL")
    p.add_argument("--model", help="variant name (needed only when the checkpoint does not say)")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image")
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.add_argument("images", nargs="+", help="image files")

    p = add("quantize", cmd_quantize, "INT8 post-training quantization (NNCF for OpenVINO, or onnxruntime)")
    p.add_argument("checkpoint", help="checkpoint path or URL")
    p.add_argument("--data", required=True, help="calibration image folder (or a root with val/)")
    p.add_argument("-o", "--output", required=True, help="output: .xml (openvino) or .onnx (onnxruntime)")
    p.add_argument("--backend", choices=["openvino", "onnxruntime"], default="openvino", help="quantization tool")
    p.add_argument("--samples", type=int, default=300, help="calibration images")
    p.add_argument(
        "--preset",
        choices=["accuracy", "performance"],
        default="accuracy",
        help="accuracy: asymmetric activations; performance: symmetric",
    )
    p.add_argument("--keep-fp32", help="comma-separated parts left in fp32: stem, head")
    p.add_argument("--model", help="variant name (needed only when the checkpoint does not say)")
    p.add_argument("--image-size", type=int, help="input size (default: the checkpoint's)")

    p = add("prepare", cmd_prepare, "write a dataset as an image folder tree")
    p.add_argument(
        "dataset",
        choices=["fashion-mnist", "trees", "nuclei"],
        help="fashion-mnist (image folders); trees, nuclei (COCO detection sets)",
    )
    p.add_argument("output", help="output folder (train/ and val/ are created in it)")
    p.add_argument("--train", type=int, help="number of training images (default: all)")
    p.add_argument("--val", type=int, help="number of validation images (default: all)")
    p.add_argument(
        "--source",
        help="folder (or wheel, for trees/nuclei) with the original files "
        "(fashion-mnist default: Debian's package location)",
    )

    p = add("detect", cmd_detect, "object detection and instance segmentation (needs torchvision)")
    detect = p.add_subparsers(dest="detect_command", required=True, metavar="DETECT_COMMAND")
    d = detect.add_parser(
        "train",
        help="train a detector on COCO-format data (train.json, val.json)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument("--data", required=True, help="folder with train.json, val.json and the images")
    d.add_argument("--output", required=True, help="run folder: last.pt, best.safetensors, log.jsonl")
    d.add_argument("--arch", choices=["maskrcnn", "fasterrcnn", "retinanet", "fcos"], default="maskrcnn")
    d.add_argument("--backbone", default="fasternet_s", help="FasterNet variant")
    d.add_argument("--pretrained-backbone", help="backbone checkpoint (any layout)")
    d.add_argument("--trainable-stages", type=int, default=4, help="backbone stages trained (0-4)")
    d.add_argument("--epochs", type=int, default=12)
    d.add_argument("--batch-size", type=int, default=2, help="images per process")
    d.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate")
    d.add_argument("--weight-decay", type=float, default=1e-4)
    d.add_argument("--lr-steps", default="8,11", help="epochs after which the lr is divided by 10")
    d.add_argument("--warmup-iters", type=int, default=500, help="linear warm-up iterations")
    d.add_argument("--min-size", type=int, default=800, help="short side the images are resized to")
    d.add_argument("--max-size", type=int, default=1333, help="longest side at most")
    d.add_argument("--clip-grad", type=float, help="gradient-norm clipping")
    d.add_argument("--workers", type=int, default=2, help="data loading processes")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--resume", action="store_true", help="continue after the last completed epoch")
    d.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    d.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    d = detect.add_parser(
        "eval",
        help="COCO box (and mask) AP of a detector checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument("--checkpoint", required=True, help="detector checkpoint (.safetensors)")
    d.add_argument("--data", required=True, help="folder with SPLIT.json and the images")
    d.add_argument("--split", default="val", help="which json to evaluate on")
    d.add_argument("--json", action="store_true", help="last line: JSON with bbox_ap, bbox_ap50, segm_ap, ...")
    d = detect.add_parser(
        "predict",
        help="detections on image files, optionally drawn",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument("--checkpoint", required=True, help="detector checkpoint (.safetensors)")
    d.add_argument("--score-threshold", type=float, default=0.5, help="lowest score shown")
    d.add_argument("--save-vis", help="folder to write the images with boxes, masks and labels into")
    d.add_argument("--json", action="store_true", help="one JSON line per image")
    d.add_argument("images", nargs="+", help="image files")

    p = add("convert-mmdet", cmd_convert_mmdet, "convert a released mmdet FasterNet Mask R-CNN checkpoint")
    p.add_argument("checkpoint", help="mmdet checkpoint (.pth) path or URL")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")

    p = add("download", cmd_download, "download official release checkpoints into $FASTERNET_HOME")
    p.add_argument("model", help="variant name, or 'all'")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except (ValueError, OSError, RuntimeError, ImportError) as e:  # CheckpointError is a ValueError
        if args.verbose:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"fasternet: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fasternet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
