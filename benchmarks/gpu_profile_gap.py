"""Why was timm's FasterNet, given fp16 weights and channels-last, faster than our eager runner?

    python benchmarks/gpu_profile_gap.py --out DIR [--models fasternet_t2,fasternet_s] [--batch 256]

For each model: our torch runner (deployed, fp16 weights, channels-last) and timm's model with fp16
weights and channels-last, each profiled (torch.profiler, CUDA kernels) over a few calls; the
kernels are grouped by name and the largest differences listed, so that the split-weight 1x1 pair
against one 1x1 on a concatenation, cuDNN's algorithm choice and layout conversions can be told
apart. Writes DIR/gap_<model>.json and prints a table. ``--device cpu`` runs it on a CPU (no
CUDA kernels: operator times) to check the script before a GPU session.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import fasternet  # noqa: E402
from fasternet.inference.timing import synchronize  # noqa: E402


def kernel_times(call, x: torch.Tensor, device: str, calls: int) -> dict[str, float]:
    """Milliseconds per call of each kernel (CUDA) or operator (CPU), summed over its launches."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for _ in range(3):
        call(x)
    synchronize()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            call(x)
        synchronize()
    times: dict[str, float] = {}
    for event in prof.key_averages():
        total = event.device_time_total if device.startswith("cuda") else event.self_cpu_time_total
        if total > 0:
            times[event.key] = times.get(event.key, 0.0) + total / 1e3 / calls
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="fasternet_t2,fasternet_s")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    args = parser.parse_args()
    import timm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    for name in args.models.split(","):
        x = torch.randn(args.batch, 3, 224, 224, device=args.device)
        ours = fasternet.runner(
            fasternet.create_model(name).eval(), backend="torch", precision=args.precision,
            input_size=tuple(x.shape), device=args.device,
        )  # fmt: skip
        theirs = timm.create_model(name).eval().to(args.device, dtype).to(memory_format=torch.channels_last)

        def timm_call(t, model=theirs):
            with torch.inference_mode():
                return model(t.to(dtype).contiguous(memory_format=torch.channels_last))

        mine, timms = (
            kernel_times(ours, x, args.device, args.calls),
            kernel_times(timm_call, x, args.device, args.calls),
        )
        rows = sorted(
            ({"kernel": k, "ours_ms": mine.get(k, 0.0), "timm_ms": timms.get(k, 0.0)} for k in set(mine) | set(timms)),
            key=lambda r: -abs(r["ours_ms"] - r["timm_ms"]),
        )
        (out / f"gap_{name}.json").write_text(json.dumps(rows, indent=1))
        total_ours, total_timm = sum(mine.values()), sum(timms.values())
        print(f"\n# {name}, batch {args.batch}, {args.precision}: ours {total_ours:.2f} ms, timm {total_timm:.2f} ms")
        for row in rows[:25]:
            print(f"{row['ours_ms']:9.3f} {row['timm_ms']:9.3f}  {row['kernel'][:110]}")


if __name__ == "__main__":
    main()
