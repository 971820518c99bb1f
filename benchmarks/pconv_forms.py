"""Which PConv form each engine runs fastest: "split" (split weight, no copy) or "concat".

    python benchmarks/pconv_forms.py --model fasternet_t0 --batch-size 1 --threads 2 --rounds 7

Both forms compute the same thing with BN folded; only the graph differs. Eager torch runs in
channels-last. Every (engine, form) pair is timed in interleaved rounds; medians are printed.
The result decides `fasternet.runners.PREFERRED_FORM`.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import fasternet
from fasternet._utils import machine_description
from fasternet.inference.deployed import deploy
from fasternet.inference.runners import runner
from fasternet.inference.timing import interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fasternet_t0")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = fasternet.create_model(args.model).eval()
    x = torch.randn(args.batch_size, 3, 224, 224)
    calls = {}
    for form in ("split", "concat"):
        deployed = deploy(model, form=form)
        for backend in ("torch", "onnxruntime", "openvino"):
            run = runner(deployed, backend=backend, input_size=tuple(x.shape), threads=args.threads)
            calls[(backend, form)] = (lambda r: lambda: r(x))(run)
    times = interleaved(calls, rounds=args.rounds, per_round=10, warmup=5)
    print(f"# {machine_description()}; {args.model}, batch {args.batch_size}, {args.threads} threads, fp32")
    for backend in ("torch", "onnxruntime", "openvino"):
        split = statistics.median(times[(backend, "split")]) * 1e3
        concat = statistics.median(times[(backend, "concat")]) * 1e3
        best = "split" if split <= concat else "concat"
        print(f"{backend:<12} split {split:7.3f} ms   concat {concat:7.3f} ms   faster: {best}")


if __name__ == "__main__":
    main()
