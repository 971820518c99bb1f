"""The ``fasternet`` command: a thin front end over the library API.

Every subcommand parses its flags, calls the library, and prints. User errors (a bad
checkpoint, an unknown model, a wrong flag value) end with one ``fasternet: error:`` line and
exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

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
    model = _model_or_checkpoint(args.model)
    report = profile(model, (args.batch_size, model.in_chans, args.image_size, args.image_size))
    if args.json:
        print(json.dumps({"model": args.model, **report.to_dict()}))
    else:
        print(report.table(by_stage=args.by_stage))


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
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")

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

    p = add("download", cmd_download, "download official release checkpoints into $FASTERNET_HOME")
    p.add_argument("model", help="variant name, or 'all'")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
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
