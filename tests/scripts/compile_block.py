"""Compile the block kernel's shipped configurations for sm80 and sm90 without a GPU.

For T0's and S's stage shapes in fp16, bf16 and fp32, compile with Triton's bundled toolchain,
run ptxas -v on the PTX and print one JSON line per case: registers, spill bytes, shared memory.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from fasternet.inference.kernels.triton_block import ACTIVATIONS, _fasternet_block_kernel, block_config

STAGES = {"fasternet_t0": (40, 80, 160, 320), "fasternet_s": (128, 256, 512, 1024)}
ACT = {"fasternet_t0": "gelu", "fasternet_s": "relu"}
DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes per block (opt-in maximum)


def compile_case(arch: int, dtype: torch.dtype, channels: int, act: str) -> dict:
    cp, hid = channels // 4, 2 * channels
    config = block_config(channels, cp, hid, dtype)
    kind = DTYPES[dtype]
    pointers = ("x_ptr", "p_ptr", "y_ptr", "wp_ptr", "ec_ptr", "er_ptr", "bias_ptr", "pw_ptr")
    signature = {name: f"*{kind}" for name in pointers}
    signature |= {name: "i32" for name in ("NPIX", "H", "W", "C", "CP", "HID")}
    constants = {
        "BLOCK_M": config.block_m,
        "BLOCK_N": config.block_n,
        "BLOCK_H": config.block_h,
        "BLOCK_K": config.block_k,
        "BLOCK_CP": config.block_cp,
        "FUSE_PCONV": config.fuse_pconv,
        "ACT": ACTIVATIONS[act],
        "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }
    signature |= {name: "constexpr" for name in constants}
    kernel = triton.compile(
        ASTSource(_fasternet_block_kernel, signature, constexprs=constants),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    ptxas = get_ptxas(arch).path  # the bundled ptxas Triton itself uses for this architecture
    target = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    report = subprocess.run([ptxas, f"-arch={target}", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    text = report.stdout + report.stderr
    spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    used = re.search(r"Used (\d+) registers", text)
    if used is None:
        raise RuntimeError(f"ptxas failed for sm_{arch} {kind} C={channels}: {text[-500:]}")
    registers = int(used.group(1))
    return {
        "arch": arch,
        "dtype": kind,
        "channels": channels,
        "act": act,
        "registers": registers,
        "spill_bytes": spills,
        "shared": kernel.metadata.shared,
        "shared_limit": SHARED_LIMIT[arch],
        "config": dataclasses.asdict(config),
        "ptxas_ok": report.returncode == 0,
    }


def main() -> None:
    archs = [int(a) for a in (sys.argv[1:] or ["80", "90"])]
    for arch in archs:
        for model, stages in STAGES.items():
            for channels in stages:
                for dtype in DTYPES:
                    print(json.dumps(compile_case(arch, dtype, channels, ACT[model])), flush=True)


if __name__ == "__main__":
    main()
