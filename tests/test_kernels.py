"""The fused block kernel: Triton's interpreter on CPU, compile-only checks for sm80/sm90, the custom op."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fasternet
from fasternet._utils import relative_error
from fasternet.inference.deployed import deploy
from fasternet.inference.kernels.block import (
    FusedBlock,
    choose_fused_stages,
    fuse_blocks,
    fused_block_reference,
    pack_block,
)
from fasternet.inference.runners import runner

SCRIPTS = Path(__file__).parent / "scripts"
ENV = {
    **os.environ,
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "TRITON_DEFAULT_FP_FUSION": "1",
    "PYTHONWARNINGS": "ignore",
}
TOLERANCE = {"float32": 1e-5, "float16": 2e-3}


def _json_lines(*args: str, timeout: int = 600) -> list[dict]:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_kernel_matches_the_reference_in_the_interpreter():
    pytest.importorskip("triton")
    cases = _json_lines(str(SCRIPTS / "interpret_block.py"), "ci")
    assert len(cases) >= 15
    covered = {(c["shape"][1], c["dtype"]) for c in cases}
    for channels in (40, 80, 160, 320):  # every stage of T0 in both dtypes
        assert (channels, "float16") in covered and (channels, "float32") in covered
    assert {128, 256, 512, 1024} <= {c["shape"][1] for c in cases}  # every stage of S
    assert {True, False} == {c["fused_pconv"] for c in cases}  # both kernel paths
    assert {"relu", "gelu"} == {c["act"] for c in cases}
    assert any(c["shape"][0] > 1 for c in cases) and any(c["shape"][2] % 2 for c in cases)
    for c in cases:
        assert c["error"] < TOLERANCE[c["dtype"]], c


def test_shipped_configs_compile_for_sm80_and_sm90_without_spills():
    pytest.importorskip("triton")
    cases = _json_lines(str(SCRIPTS / "compile_block.py"), "80", "90")
    assert {c["arch"] for c in cases} == {80, 90} and {c["dtype"] for c in cases} == {"fp16", "bf16", "fp32"}
    assert len(cases) == 2 * 8 * 3
    for c in cases:
        assert c["ptxas_ok"] and c["spill_bytes"] == 0, c
        assert c["shared"] <= c["shared_limit"], c


@pytest.mark.parametrize("name", ["fasternet_t0", "fasternet_s"])
def test_custom_op_on_cpu_equals_the_deployed_model(name):
    torch.manual_seed(0)
    model = fasternet.create_model(name).eval()
    x = torch.randn(2, 3, 67, 45)
    with torch.no_grad():
        expected = deploy(model)(x)
        actual = fuse_blocks(model)(x)
    assert relative_error(actual, expected) < 1e-5


def test_fused_model_compiles_with_fullgraph_on_cpu():
    torch.manual_seed(0)
    model = fasternet.create_model("fasternet_t0").eval()
    fused = fuse_blocks(model)
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(compiled(x), model(x)) < 1e-5


def test_fake_implementation_gives_shapes_without_computing():
    block = deploy(fasternet.create_model("fasternet_t0")).stages[0][0]
    packed = pack_block(block)
    with torch.device("meta"):
        x = torch.empty(2, 40, 9, 11)
        weights = {k: torch.empty(v.shape) for k, v in packed.items()}
        out = torch.ops.fasternet.fused_block(x, **weights, act="gelu")
    assert out.shape == (2, 40, 9, 11) and out.device.type == "meta"


def test_reference_matches_the_deployed_block():
    torch.manual_seed(0)
    block = deploy(fasternet.create_model("fasternet_t1").eval()).stages[1][1]
    x = torch.randn(2, 128, 7, 9)
    with torch.no_grad():
        expected = block(x)
        actual = fused_block_reference(x, **pack_block(block), act="gelu")
    assert relative_error(actual, expected) < 1e-5


def test_fused_block_rejects_what_the_kernel_does_not_implement():
    deployed = deploy(fasternet.create_model("fasternet_t0"), form="concat")
    with pytest.raises(ValueError, match="split"):
        pack_block(deployed.stages[0][0])
    with pytest.raises(ValueError, match="split"):
        fuse_blocks(deployed)
    silu = deploy(fasternet.FasterNet(embed_dim=16, depths=(1, 1, 1, 1), act_layer="silu"))
    with pytest.raises(ValueError, match="ReLU and GELU"):
        FusedBlock(silu.stages[0][0])


def test_triton_runner_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        runner(fasternet.create_model("fasternet_t0"), backend="triton", device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["fasternet_t0", "fasternet_s"])
def test_triton_runner_on_gpu(name, dtype):
    torch.manual_seed(0)
    model = fasternet.create_model(name).eval()
    precision = "fp16" if dtype == torch.float16 else "bf16"
    run = runner(model, backend="triton", precision=precision, device="cuda", input_size=(8, 3, 224, 224))
    x = torch.randn(8, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
    assert relative_error(run(x.cuda()).cpu(), expected) < 3e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_compile_runner_on_gpu_records_its_stage_choice():
    torch.manual_seed(0)
    model = fasternet.create_model("fasternet_t0").eval()
    run = runner(model, backend="triton-compile", precision="fp16", device="cuda", input_size=(8, 3, 224, 224))
    assert len(run.metadata["fused_stages"]) == 4 and len(run.metadata["stage_timings"]) == 4
    x = torch.randn(8, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
    assert relative_error(run(x.cuda()).cpu(), expected) < 3e-2


def test_stage_choice_times_both_and_fusing_some_stages_keeps_the_output():
    torch.manual_seed(0)
    deployed = deploy(fasternet.create_model("fasternet_t0").eval(), form="split")
    choice, timings = choose_fused_stages(deployed, (1, 3, 64, 64), "cpu", torch.float32, repeats=1)
    assert len(choice) == 4 and all(isinstance(c, bool) for c in choice)
    assert all(t["fused_ms"] > 0 and t["unfused_ms"] > 0 for t in timings)
    partly = fuse_blocks(copy.deepcopy(deployed), [True, False, True, False])
    kinds = [{type(layer).__name__ for layer in stage} for stage in partly.stages]
    assert "FusedBlock" in kinds[0] and "FusedBlock" not in kinds[1] and "DeployedBlock" in kinds[3]
    x = torch.randn(2, 3, 64, 64)
    assert relative_error(partly(x), deployed(x)) < 1e-5
    concat_rest = fuse_blocks(copy.deepcopy(deployed), [True, False, False, False], unfused_form="concat")
    assert {layer.form for layer in concat_rest.stages[2] if hasattr(layer, "form")} == {"concat"}
    assert relative_error(concat_rest(x), deployed(x)) < 1e-5
    choice, _ = choose_fused_stages(deployed, (1, 3, 64, 64), "cpu", torch.float32, repeats=1, unfused_form="concat")
    assert len(choice) == 4
    never, _ = choose_fused_stages(deployed, (1, 3, 64, 64), "cpu", torch.float32, repeats=1, margin=1e9)
    assert never == [False] * 4
    with pytest.raises(ValueError, match="4 stages"):
        fuse_blocks(copy.deepcopy(deployed), [True])
    with pytest.raises(ValueError, match="unfused_form"):
        fuse_blocks(copy.deepcopy(deployed), unfused_form="dense")
