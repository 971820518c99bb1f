"""The GPU measurements of issue 9 in one run: the fused block kernel against eager PyTorch,
torch.compile and timm (eager AMP and compiled), in fp16 and bf16, at large batches and batch 1.

    python benchmarks/gpu_bench.py --out DIR [--budget-s 420]

A GPU is lent rarely and briefly, so the phases run most important first, each appends JSON
lines to DIR as soon as it ends, and a phase (or a model inside one) that would overrun the
budget is skipped and says so. Phases:

1. ``machine.json``: the GPU, device-to-device copy bandwidth and the bf16 matmul rate, measured.
2. ``blocks.jsonl``: per stage of each model at the largest batch, the unfused block (cuDNN +
   cuBLAS) against the fused kernel: ms, bytes that must move (read x, write y), GB/s and the
   share of the measured copy bandwidth.
3. ``throughput.jsonl``: images/s of our eager and fused-kernel runners and timm eager AMP (its
   published protocol: autocast, NCHW) per model, precision and batch; batch-1 latency; the fused
   runner's output checked against eager.
4. ``throughput.jsonl``: the compiled rows: timm under torch.compile (AMP), ours with the fused
   kernel under torch.compile, ours under torch.compile without it.
5. ``configs.jsonl``: other tile configurations of the kernel, for the next tuning round.

``--device cpu --dry-run`` runs every phase on tiny sizes on a CPU (the fused blocks then run the
custom op's torch reference) to check this script before a GPU session.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fasternet import (
    create_model,  # noqa: E402
    profile,  # noqa: E402
)
from fasternet._utils import relative_error  # noqa: E402
from fasternet.inference.deployed import deploy  # noqa: E402
from fasternet.inference.kernels.block import FusedBlock, choose_fused_stages, fuse_blocks, stage_block_inputs  # noqa: E402
from fasternet.inference.runners import TORCH_DTYPES, runner  # noqa: E402
from fasternet.inference.timing import interleaved, median_seconds, synchronize  # noqa: E402


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def write(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def median_ms(call: Callable[[], Any], repeats: int = 20, warmup: int = 5) -> float:
    return 1e3 * median_seconds(call, repeats=repeats, warmup=warmup)


# ------------------------------------------------------------------------------------------------
# 1. machine


def machine(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "device": args.device}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    n = 1 << (30 if not args.dry_run else 22)  # bytes per buffer
    src = torch.empty(n, dtype=torch.uint8, device=args.device)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), repeats=10)
    info["copy_gb_s"] = 2 * n / (copy_ms / 1e3) / 1e9  # read + write
    size = 8192 if not args.dry_run else 512
    a = torch.randn(size, size, device=args.device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=args.device, dtype=torch.bfloat16)
    mm_ms = median_ms(lambda: a @ b, repeats=10)
    info["bf16_matmul_tflop_s"] = 2 * size**3 / (mm_ms / 1e3) / 1e12
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sms=props.multi_processor_count, memory_gib=props.total_memory / 2**30,
                    cuda=torch.version.cuda)  # fmt: skip
    return info


# ------------------------------------------------------------------------------------------------
# 2. blocks


def stage_inputs(name: str, batch: int, size: int, device: str, dtype: torch.dtype):
    """(stage index, its blocks in the deployed split form, the input of its first block)."""
    torch.manual_seed(0)
    deployed = deploy(create_model(name).eval(), form="split").to(device=device, dtype=dtype)
    deployed = deployed.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    for index, (blocks, x_stage) in enumerate(stage_block_inputs(deployed, x)):
        yield index, blocks, x_stage


def blocks_phase(args: argparse.Namespace, peak_gb_s: float, out: Path, budget: Budget) -> None:
    batch = max(args.batches)
    for name in args.models:
        for precision in args.precisions[:1]:  # the other 16-bit type behaves alike (first run: within 7%)
            if budget.left() < 20:
                log(f"blocks: out of budget before {name} {precision}")
                return
            for index, blocks, x in stage_inputs(name, batch, args.image_size, args.device, TORCH_DTYPES[precision]):
                block = blocks[0]
                fused = FusedBlock(block)
                with torch.inference_mode():
                    error = relative_error(fused(x).float(), block(x).float())
                    unfused_ms = median_ms(lambda b=block, x=x: b(x))
                    fused_ms = median_ms(lambda b=fused, x=x: b(x))
                moved = 2 * x.numel() * x.element_size()  # the least a block can move: read x, write y
                record = {
                    "model": name, "precision": precision, "batch": batch, "stage": index,
                    "shape": list(x.shape), "hidden": block.expand_rest.out_channels,
                    "unfused_ms": unfused_ms, "fused_ms": fused_ms, "speedup": unfused_ms / fused_ms,
                    "fused_gb_s": moved / (fused_ms / 1e3) / 1e9,
                    "fused_share_of_copy_bw": moved / (fused_ms / 1e3) / 1e9 / peak_gb_s,
                    "unfused_gb_s": moved / (unfused_ms / 1e3) / 1e9, "relative_error": error,
                }  # fmt: skip
                write(out / "blocks.jsonl", record)
                log(f"block {name} s{index} {precision} {list(x.shape)}: unfused {unfused_ms:.3f} ms, "
                    f"fused {fused_ms:.3f} ms ({record['fused_gb_s']:.0f} GB/s, "
                    f"{100 * record['fused_share_of_copy_bw']:.0f}% of copy), err {error:.1e}")  # fmt: skip


# ------------------------------------------------------------------------------------------------
# 3 and 4. throughput


def timm_call(name: str, precision: str, device: str, compiled: bool, half_cl: bool = False):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval().to(device)
    dtype = TORCH_DTYPES[precision]
    if half_cl:  # a stronger peer than timm's protocol: weights in 16 bits, channels-last
        model = model.to(dtype=dtype, memory_format=torch.channels_last)
    if compiled:
        model = torch.compile(model)

    def call(x):
        with torch.inference_mode():
            if half_cl:
                return model(x.to(dtype=dtype, memory_format=torch.channels_last))
            with torch.autocast(torch.device(device).type, dtype=dtype):
                return model(x)

    return call


def our_call(name: str, backend: str, precision: str, batch: int, args: argparse.Namespace):
    """A runner; on a CPU dry run, the fused backends are built from their parts (the op's CPU kernel)."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = (batch, 3, args.image_size, args.image_size)
    if backend.startswith("triton") and not args.device.startswith("cuda"):
        deployed = deploy(model, form="split")
        stages, _ = choose_fused_stages(deployed, size, args.device, TORCH_DTYPES[precision], repeats=2)
        fused = fuse_blocks(deployed, stages)
        compiled = backend == "triton-compile"
        return runner(fused, backend="torch-compile" if compiled else "torch", precision=precision,
                      input_size=size, device=args.device), stages  # fmt: skip
    run = runner(model, backend=backend, precision=precision, input_size=size, device=args.device)
    return run, run.metadata.get("fused_stages")


def measure(calls: dict[tuple, Callable[[], Any]], args: argparse.Namespace, rounds: int) -> dict[tuple, float]:
    times = interleaved(calls, rounds=rounds, per_round=5, warmup=2, settle=1)
    return {key: statistics.median(t) for key, t in times.items()}


PHASE_BACKENDS = {
    "eager": ["torch", "triton", "timm-eager", "timm-eager-fp16w-cl"],
    "compiled": ["timm-compile", "triton-compile", "torch-compile"],
}


def throughput_phase(
    args: argparse.Namespace, out: Path, budget: Budget, phase: str, references: dict[tuple, torch.Tensor]
) -> None:
    """Images/s per backend; ``references`` keeps eager torch's outputs per (model, precision, batch)."""
    backends = PHASE_BACKENDS[phase]
    compiled = phase != "eager"
    batches = args.batches if compiled else [1, *args.batches]
    compile_s = args.compile_guess_s  # replaced by what compiles take
    for precision in args.precisions:
        for name in args.models:
            macs = profile(create_model(name).eval(), (1, 3, args.image_size, args.image_size)).macs
            needed = (len(backends) * len(batches) * compile_s + 20) if compiled else 30
            if budget.left() < needed:
                log(f"{phase}: skipped {name} {precision} "
                    f"({budget.left():.0f} s left, about {needed:.0f} s needed)")  # fmt: skip
                continue
            if compiled:
                torch._dynamo.reset()  # each model group compiles afresh (and frees the last one's graphs)
            calls, built = {}, {}
            for batch in batches:  # the same images in every phase: outputs are compared across phases
                generator = torch.Generator().manual_seed(batch)
                x = torch.randn(batch, 3, args.image_size, args.image_size, generator=generator).to(args.device)
                for backend in backends:
                    key = (backend, batch)
                    start = time.monotonic()
                    try:
                        if backend.startswith("timm"):
                            call = timm_call(name, precision, args.device, compiled,
                                             half_cl=backend.endswith("fp16w-cl"))  # fmt: skip
                            stages = None
                        else:
                            call, stages = our_call(name, backend, precision, batch, args)
                        with torch.inference_mode():
                            y = call(x)  # compiles here
                        synchronize()
                    except Exception as error:  # one failing row must not lose the others
                        log(f"{name} {backend} {precision} {batch}: FAILED {type(error).__name__}: {error}")
                        traceback.print_exc()
                        write(
                            out / "throughput.jsonl",
                            {
                                "model": name,
                                "backend": backend,
                                "precision": precision,
                                "batch": batch,
                                "error": f"{type(error).__name__}: {error}",
                            },
                        )
                        continue
                    built[key] = {"build_s": time.monotonic() - start, "fused_stages": stages,
                                  "output": y.float()[:8].cpu() if isinstance(y, torch.Tensor) else None}  # fmt: skip
                    if compiled:
                        compile_s = max(compile_s * 0.5, built[key]["build_s"])
                    calls[key] = (lambda c, t: lambda: c(t))(call, x)
            timed = measure(calls, args, rounds=3)
            for batch in batches:  # eager torch's outputs: what every other row of ours is checked against
                if ("torch", batch) in built:
                    references[(name, precision, batch)] = built[("torch", batch)]["output"]
            for (backend, batch), seconds in timed.items():
                info = built[(backend, batch)]
                error = None
                reference = references.get((name, precision, batch))
                if reference is not None and info["output"] is not None and not backend.startswith("timm"):
                    error = relative_error(info["output"], reference)
                record = {
                    "model": name, "backend": backend, "precision": precision, "batch": batch,
                    "ms": 1e3 * seconds, "images_per_s": batch / seconds,
                    "tflop_s": 2 * macs * batch / seconds / 1e12, "build_s": info["build_s"],
                    "fused_stages": info["fused_stages"], "relative_error_vs_torch": error,
                }  # fmt: skip
                write(out / "throughput.jsonl", record)
            summary = ", ".join(f"{b}@{n}: {n / s:.0f}" for (b, n), s in sorted(timed.items(), key=lambda i: i[0][1]))
            log(f"{name} {precision} img/s: {summary}")


# ------------------------------------------------------------------------------------------------
# 5. other tile configurations


def configs_phase(args: argparse.Namespace, peak_gb_s: float, out: Path, budget: Budget) -> None:
    if not args.device.startswith("cuda"):
        log("configs: needs CUDA (Triton launcher); skipped")
        return
    from fasternet.inference.kernels.triton_block import BlockConfig, block_config, launch_block

    batch = max(args.batches)
    for name in args.models:
        for index, blocks, x in stage_inputs(name, batch, args.image_size, args.device, torch.float16):
            if budget.left() < 15:
                log("configs: out of budget")
                return
            fused = FusedBlock(blocks[0])
            weights = [fused.pconv_weight, fused.expand_conv_weight, fused.expand_rest_weight, fused.expand_bias,
                       fused.project_weight]  # fmt: skip
            base = block_config(x.shape[1], fused.expand_conv_weight.shape[0], fused.expand_bias.numel(), x.dtype)
            c_pow2 = 1 << (x.shape[1] - 1).bit_length()
            candidates = {
                "shipped": base,
                "n64": BlockConfig(32, min(64, c_pow2), base.block_h, base.block_k, base.block_cp, base.fuse_pconv,
                                   4, 2),
                "m64_n64": BlockConfig(64, min(64, c_pow2), base.block_h, base.block_k, base.block_cp,
                                       base.fuse_pconv, 4, 2),
                "m64_nfull": BlockConfig(64, min(c_pow2, 256), base.block_h, base.block_k, base.block_cp,
                                         base.fuse_pconv, 8, 2),
                "h64": BlockConfig(32, base.block_n, 64, base.block_k, base.block_cp, base.fuse_pconv,
                                   base.num_warps, 2),
                "m32_nfull": BlockConfig(32, min(c_pow2, 256), base.block_h, base.block_k, base.block_cp,
                                         base.fuse_pconv, 4, 2),
            }  # fmt: skip
            expected = blocks[0](x).float()
            for label, config in candidates.items():
                try:
                    with torch.inference_mode():
                        y = launch_block(x, *weights, fused.act, config=config)
                        error = relative_error(y.float(), expected)
                        ms = median_ms(lambda c=config, x=x, w=weights, a=fused.act: launch_block(x, *w, a, config=c),
                                       args.device)  # fmt: skip
                except Exception as exc:
                    write(
                        out / "configs.jsonl",
                        {
                            "model": name,
                            "stage": index,
                            "config": label,
                            "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                        },
                    )
                    continue
                moved = 2 * x.numel() * x.element_size()
                write(
                    out / "configs.jsonl",
                    {
                        "model": name,
                        "stage": index,
                        "config": label,
                        "tiles": config.__dict__,
                        "ms": ms,
                        "relative_error": error,
                        "share_of_copy_bw": moved / (ms / 1e3) / 1e9 / peak_gb_s,
                    },
                )
            log(f"configs {name} s{index} done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="fasternet_t0,fasternet_t2,fasternet_s")
    parser.add_argument("--precisions", default="fp16,bf16")
    parser.add_argument("--batches", default="256,1024")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--phases", default="machine,blocks,eager,compiled,configs")
    parser.add_argument("--compile-guess-s", type=float, default=12.0, help="seconds per compile until one is timed")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, to check the script on a CPU")
    args = parser.parse_args()
    args.models = args.models.split(",")
    args.precisions = args.precisions.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    phases = args.phases.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    torch.backends.cudnn.benchmark = True

    info = machine(args) if "machine" in phases else {"copy_gb_s": float("nan")}
    (args.out / "machine.json").write_text(json.dumps(info, indent=1))
    log(f"machine: {info}")
    references: dict[tuple, torch.Tensor] = {}  # eager outputs, to check every other row against
    steps = [
        ("blocks", lambda: blocks_phase(args, info["copy_gb_s"], args.out, budget)),
        ("eager", lambda: throughput_phase(args, args.out, budget, "eager", references)),
        ("compiled", lambda: throughput_phase(args, args.out, budget, "compiled", references)),
        ("configs", lambda: configs_phase(args, info["copy_gb_s"], args.out, budget)),
    ]
    for phase, run in steps:
        if phase not in phases:
            continue
        log(f"phase {phase} ({budget.left():.0f} s of budget left)")
        try:
            run()
        except Exception:  # the next phase may still work
            traceback.print_exc()
    log(f"done, {budget.left():.0f} s of budget left")


if __name__ == "__main__":
    main()
