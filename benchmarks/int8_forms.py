"""INT8 speed of each deployed PConv form in OpenVINO, beside fp32 and bf16 of the same graphs.

    python benchmarks/int8_forms.py --calibration /path/to/images --model fasternet_t0 --threads 2

Quantizes the "split" and "dense" deployed forms with NNCF (both presets) on the same calibration
images and times everything interleaved at batch 1. The result decides the form
`fasternet.quantize` uses.
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch

import fasternet
from fasternet._utils import machine_description
from fasternet.inference.deployed import deploy
from fasternet.inference.quantization import quantize
from fasternet.inference.runners import runner
from fasternet.inference.timing import interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--model", default="fasternet_t0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    torch.manual_seed(0)
    model = fasternet.create_model(args.model).eval()
    x = torch.randn(1, 3, 224, 224)
    calls = {}
    for form in ("split", "dense"):
        deployed = deploy(model, form=form)
        for preset in ("accuracy", "performance"):
            quantized = quantize(deployed, args.calibration, samples=64, preset=preset, settings={"image_size": 224})
            run = runner(quantized, precision="int8", threads=args.threads)
            calls[(form, f"int8 {preset}")] = (lambda r: lambda: r(x))(run)
        for precision in ("fp32", "bf16"):
            run = runner(deployed, backend="openvino", precision=precision, threads=args.threads)
            calls[(form, precision)] = (lambda r: lambda: r(x))(run)
    times = interleaved(calls, rounds=args.rounds, per_round=20, warmup=10)
    print(f"# {machine_description()}; {args.model}, batch 1, {args.threads} threads, OpenVINO")
    for (form, what), t in times.items():
        print(f"{form:<6} {what:<18} {1e3 * statistics.median(t):7.3f} ms")


if __name__ == "__main__":
    main()
