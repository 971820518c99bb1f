"""Commands about models and checkpoints: list, profile, info, convert, download."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from fasternet.builder import create_model, is_model_name
from fasternet.cli._common import add_command, positive_int
from fasternet.inference.profiler import profile
from fasternet.io.checkpoints import (
    LAYOUTS,
    convert_state_dict,
    identify_variant,
    infer_config,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from fasternet.io.hub import download, resolve_checkpoint
from fasternet.models import get_weights, list_models


def _architecture(source: str, **overrides) -> torch.nn.Module:
    """A registered name builds the variant on the meta device (no weights needed); else the file's model."""
    if is_model_name(source):
        with torch.device("meta"):
            return create_model(source, **overrides)
    return create_model(source, **overrides)


def cmd_list(args: argparse.Namespace) -> None:
    print(f"{'model':<14} {'params':>12} {'GMACs@224':>10} {'top-1':>7}  act   depths      embed_dim  weights")
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        report = profile(model)
        cfg = model.config
        depths = "-".join(str(d) for d in cfg["depths"])
        weights = get_weights(name)
        print(
            f"{name:<14} {report.params:>12,} {report.macs / 1e9:>10.4f} {weights.top1:>7.3f}  "
            f"{cfg['act_layer']:<5} {depths:<11} {cfg['embed_dim']:<10} {weights.tag}"
        )


def cmd_profile(args: argparse.Namespace) -> None:
    if args.measure and is_model_name(args.model):
        torch.manual_seed(0)
        model = create_model(args.model)  # real weights: measuring runs the model
    else:
        model = _architecture(args.model)
    size = (args.batch_size, model.in_chans, args.image_size, args.image_size)
    report = profile(model, size, measure=args.measure, threads=args.threads)
    if args.json:
        print(json.dumps({"model": args.model, **report.to_dict()}))
    else:
        print(report.table(by_stage=args.by_stage))


def cmd_info(args: argparse.Namespace) -> None:
    ckpt = read_checkpoint(resolve_checkpoint(args.checkpoint))
    config = ckpt.config or infer_config(ckpt.state_dict)
    info = {
        "file": ckpt.origin,
        "layout": ckpt.layout,
        "variant": identify_variant(config),
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
            model = create_model(args.model, features_only=bool(config.get("features_only")))
        report = load_checkpoint(model, ckpt)
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
    out = Path(args.output)
    if args.layout == "fasternet":
        model = create_model(args.checkpoint)
        save_checkpoint(model, out, class_names=model.class_names)
    else:
        state_dict = convert_state_dict(read_checkpoint(resolve_checkpoint(args.checkpoint)).state_dict, args.layout)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(out))
        else:
            torch.save(state_dict, out)
    print(f"wrote {out} ({args.layout} layout)")


def cmd_download(args: argparse.Namespace) -> None:
    names = list_models() if args.model == "all" else [args.model]
    for name in names:
        weights = get_weights(name)
        print(download(weights.url, sha256=weights.sha256))


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "list", cmd_list, "list the FasterNet variants with their exact params, MACs and top-1")

    p = add_command(sub, "profile", cmd_profile, "per-layer params, MACs and memory access, grouped by stage")
    p.add_argument("model", help="variant name (see `fasternet list`) or checkpoint path/URL")
    p.add_argument("--image-size", type=positive_int, default=224, help="input height and width")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch size")
    p.add_argument("--by-stage", action="store_true", help="print one line per stage instead of per layer")
    p.add_argument("--measure", action="store_true", help="also time every layer (eager) and its achieved FLOPS")
    p.add_argument("--threads", type=positive_int, help="CPU threads for --measure (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")

    p = add_command(sub, "info", cmd_info, "what a checkpoint is: layout, variant, configuration, classes")
    p.add_argument("checkpoint", help="checkpoint path or URL (any supported layout)")
    p.add_argument("--model", help="also check that it loads (strictly) into this variant")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add_command(sub, "convert", cmd_convert, "convert a checkpoint between layouts")
    p.add_argument("checkpoint", help="checkpoint path or URL (any supported layout)")
    p.add_argument("-o", "--output", required=True, help="output file (.safetensors or .pth)")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="fasternet",
        help="fasternet: safetensors with the configuration; official/timm: a raw state dict",
    )

    p = add_command(sub, "download", cmd_download, "download official release checkpoints into $FASTERNET_HOME")
    p.add_argument("model", help="variant name or weight tag (fasternet_t0.in1k), or 'all'")
