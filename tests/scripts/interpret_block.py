"""Run the Triton block kernel in Triton's interpreter on CPU tensors, against the torch reference.

Usage: python interpret_block.py [ci|full]  (one JSON line per case; "full" runs every T0 and S stage
shape at full size, minutes). TRITON_INTERPRET must be set before Triton is imported, hence a
separate process.
"""

import dataclasses
import json
import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

from fasternet.inference.kernels.block import fused_block_reference  # noqa: E402
from fasternet.inference.kernels.triton_block import BlockConfig, block_config, launch_block  # noqa: E402

# (batch, channels, height, width): T0's and S's stage shapes, odd sizes, batch > 1
T0 = [(1, 40, 56, 56), (1, 80, 28, 28), (1, 160, 14, 14), (1, 320, 7, 7)]
S = [(1, 128, 56, 56), (1, 256, 28, 28), (1, 512, 14, 14), (1, 1024, 7, 7)]
ODD = [(3, 40, 9, 13), (2, 96, 5, 7), (2, 24, 1, 1)]


def big_tiles(channels: int, dtype: torch.dtype) -> BlockConfig:
    """Fewer, larger programs: the interpreter's time grows with programs and loop trips."""
    shipped = block_config(channels, channels // 4, 2 * channels, dtype)
    return dataclasses.replace(
        shipped,
        block_m=32,
        block_n=min(256, shipped.block_cp * 4),
        block_h=256,
        block_k=128 if shipped.fuse_pconv else 256,
    )


def case(batch, channels, height, width, act, dtype, tiles="shipped", seed=0):
    g = torch.Generator().manual_seed(seed)
    cp, hid = channels // 4, 2 * channels

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    x = rand(batch, channels, height, width).contiguous(memory_format=torch.channels_last)
    weights = (
        rand(9, cp, cp, scale=(9 * cp) ** -0.5),
        rand(cp, hid, scale=channels**-0.5),
        rand(channels - cp, hid, scale=channels**-0.5),
        rand(hid, scale=0.1),
        rand(hid, channels, scale=hid**-0.5),
    )
    config = big_tiles(channels, dtype) if tiles == "big" else None
    start = time.perf_counter()
    out = launch_block(x, *weights, act, config=config)
    seconds = time.perf_counter() - start
    expected = fused_block_reference(x, *weights, act)
    error = ((out.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
    used = config or block_config(channels, cp, hid, dtype)
    return {
        "shape": [batch, channels, height, width],
        "act": act,
        "dtype": str(dtype).split(".")[-1],
        "tiles": tiles,
        "fused_pconv": used.fuse_pconv,
        "error": error,
        "seconds": round(seconds, 3),
    }


def ci_cases():
    """A few seconds: every T0 and S channel count, both activations and dtypes, odd sizes, batch > 1."""
    f32, f16 = torch.float32, torch.float16
    yield (1, 40, 20, 24, "gelu", f16, "shipped")  # several pixel tiles, image borders
    for channels in (40, 80, 160, 320):
        small = (9, 11) if channels <= 80 else (3, 5)  # the interpreter pays per program and loop trip
        yield (2, channels, *small, "gelu", f16, "shipped")
        yield (2, channels, 9, 11, "relu", f32, "big")
    yield (1, 40, 5, 7, "relu", f32, "shipped")
    for channels in (128, 256, 512, 1024):
        yield (1, channels, 5, 6, "relu", f16, "big")
    yield (1, 1024, 3, 5, "gelu", f32, "big")
    for shape in ODD:
        yield (*shape, "gelu", f16, "big")


def full_cases():
    for shape in T0 + S + ODD:
        for act in ("relu", "gelu"):
            for dtype in (torch.float32, torch.float16):
                yield (*shape, act, dtype, "shipped")


def main(which: str) -> None:
    for args in ci_cases() if which == "ci" else full_cases():
        print(json.dumps(case(*args)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ci")
