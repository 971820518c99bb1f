"""The benchmark commands: valid output with tiny settings, and FLOP counts that match the paper."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fasternet.inference.bench import OPERATOR_SHAPES, OPERATORS, PAPER_OPERATOR_FLOPS, operator_macs
from fasternet.inference.timing import interleaved, median_seconds

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}


def cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "fasternet", *args], capture_output=True, text=True, timeout=600, env=ENV
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_operator_macs_follow_the_formulas_and_the_paper(paper):
    table = paper["operator_table1"]
    for channels, size in OPERATOR_SHAPES:
        c_p = channels // 4
        assert operator_macs("pconv", channels, size) == 10 * size * size * 9 * c_p * c_p
        assert operator_macs("conv3x3", channels, size) == 10 * size * size * 9 * channels * channels
        # The paper truncates its MFLOPs (one FLOP per MAC) to the digits it prints.
        assert int(operator_macs("conv3x3", channels, size) / 1e6) == table["conv3x3"][0]
        assert int(operator_macs("pconv", channels, size) / 1e6) == table["pconv"][0]
        assert int(operator_macs("gconv_g16", channels, size) / 1e6) == table["gconv_g16"][0]
    dw = [int(operator_macs("dwconv", c, s) / 1e4) / 100 for c, s in OPERATOR_SHAPES]
    assert "/".join(f"{v:.2f}" for v in dw) == table["dwconv"][0]
    columns = table["columns"]
    for name in OPERATORS:
        row = dict(zip(columns, table[name], strict=True))
        assert PAPER_OPERATOR_FLOPS[name] == {
            "gpu": row["gpu_gflops_per_s"],
            "cpu": row["cpu_gflops_per_s"],
            "arm": row["arm_gflops_per_s"],
        }


def test_bench_json_with_tiny_settings():
    out = cli(
        "bench",
        "--models",
        "fasternet_t0",
        "--backends",
        "torch,openvino",
        "--precisions",
        "fp32",
        "--image-size",
        "64",
        "--rounds",
        "1",
        "--threads",
        "2",
        "--json",
    ).stdout
    report = json.loads(out)
    assert "Xeon" in report["machine"] or report["machine"]
    assert report["gemm_peak_gflops"]["fp32"]["torch"] > 0
    backends = {row["backend"] for row in report["rows"]}
    assert backends == {"torch", "openvino", "eager", "onnxruntime-official", "openvino-official"}
    for row in report["rows"]:
        assert row["macs"] == 6_845_344 or row["macs"] > 0
        assert row["latency_ms"] > 0 and 0 < row["peak_share"] < 1.5
        assert row["p10_ms"] <= row["latency_ms"] <= row["p90_ms"]


def test_bench_table_names_the_machine_and_skips_unsupported_precisions():
    out = cli(
        "bench",
        "--backends",
        "onnxruntime",
        "--precisions",
        "bf16",
        "--image-size",
        "64",
        "--rounds",
        "1",
        "--no-baselines",
    ).stdout
    assert out.startswith("# ") and "torch" in out.splitlines()[0]
    assert "skipped: fasternet_t0 onnxruntime bf16" in out


def test_bench_operators_json():
    report = json.loads(cli("bench", "operators", "--rounds", "1", "--json").stdout)
    assert len(report["rows"]) == len(OPERATORS) * len(OPERATOR_SHAPES)
    for row in report["rows"]:
        assert row["latency_ms"] > 0 and row["gmacs_per_s"] > 0


def test_profile_measure_adds_time_and_flops():
    out = cli("profile", "fasternet_t0", "--measure", "--image-size", "64", "--by-stage").stdout
    header, total = out.splitlines()[0], out.strip().splitlines()[-1]
    assert "ms" in header and "GFLOP/s" in header
    assert float(total.split()[-2]) > 0


def test_export_cli_writes_a_checked_file(tmp_path):
    out = cli(
        "export", "fasternet_t0", "--format", "onnx", "-o", str(tmp_path / "t0.onnx"), "--image-size", "64"
    ).stdout
    assert "checked against PyTorch" in out and (tmp_path / "t0.onnx").stat().st_size > 15e6


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    cli(
        "bench",
        "--backends",
        "torch",
        "--precisions",
        "fp32",
        "--image-size",
        "64",
        "--rounds",
        "1",
        "--no-baselines",
        "--models",
        "fasternet_t0,fasternet_t1",
        "--plot",
        str(tmp_path / "plot.png"),
    )
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interleaved_timing_times_every_call_in_turn():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    times = interleaved(calls, rounds=2, per_round=3, warmup=1, settle=1)
    assert {key: len(t) for key, t in times.items()} == {"a": 2 * 3, "b": 2 * 3}
    assert all(t >= 0 for values in times.values() for t in values)
    # warm-up a, b; then per round: a (settle + 3 timed), b (settle + 3 timed)
    assert order == ["a", "b"] + (["a"] * 4 + ["b"] * 4) * 2
    assert median_seconds(lambda: sum(range(1000)), repeats=3, warmup=0) > 0
