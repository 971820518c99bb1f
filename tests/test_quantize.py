"""INT8: quantized files that run, stay close to fp32, load back, and refuse what they should."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import fasternet
from conftest import TINY
from fasternet import EvalTransform, FasterNet
from fasternet._utils import relative_error
from fasternet.inference.quantization import QuantizationError, load_quantized, quantize
from fasternet.inference.runners import runner
from fasternet.io.images import ImageFolder
from imagetools import make_dataset, make_folder

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}
TRANSFORM = EvalTransform(64, 1.0)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("calibration"), classes=3, per_class=8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FasterNet(**TINY).eval()


def _images(folder, n=6):
    dataset = ImageFolder(folder, transform=TRANSFORM)
    return torch.stack([dataset[i][0] for i in range(n)])


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_int8_runs_and_stays_close_to_fp32_on_calibration_like_data(backend, model, calibration, tmp_path):
    suffix = ".xml" if backend == "openvino" else ".onnx"
    quantized = quantize(
        model, calibration, backend=backend, samples=24, transform=TRANSFORM, output=tmp_path / f"int8{suffix}"
    )
    assert quantized.path.exists() and quantized.metadata["calibration_samples"] == 24
    x = _images(calibration)
    run = runner(quantized, precision="int8")
    with torch.no_grad():
        expected = model(x)
    outputs = torch.cat([run(x[i : i + 1]) for i in range(len(x))])
    # Documented tolerance: INT8 logits within 15% of the largest fp32 logit on in-distribution images.
    assert relative_error(outputs, expected) < 0.15
    reloaded = runner(quantized.path, precision="int8")  # the file alone, as `fasternet quantize` writes it
    torch.testing.assert_close(reloaded(x[:1]), run(x[:1]))


def test_keep_stem_and_head_in_fp32(model, calibration, tmp_path):
    quantized = quantize(model, calibration, samples=8, keep_fp32=("stem", "head"), transform=TRANSFORM)
    assert quantized.metadata["keep_fp32"] == ["stem", "head"]
    assert runner(quantized, precision="int8")(_images(calibration, 1)).shape == (1, 10)


def test_a_file_from_another_model_or_version_is_refused(model, calibration, tmp_path):
    quantized = quantize(
        model, calibration, samples=8, transform=TRANSFORM, output=tmp_path / "a.onnx", backend="onnxruntime"
    )
    other = FasterNet(**TINY)
    with pytest.raises(QuantizationError, match="quantized from another model"):
        load_quantized(quantized.path, expect=other)
    assert load_quantized(quantized.path, expect=model).backend == "onnxruntime"
    import onnx

    graph = onnx.load(str(quantized.path))
    for prop in graph.metadata_props:
        if prop.key == "fasternet_int8":
            prop.value = json.dumps({**json.loads(prop.value), "fasternet_int8_format": "0"})
    onnx.save(graph, str(tmp_path / "old.onnx"))
    with pytest.raises(QuantizationError, match="another fasternet version"):
        load_quantized(tmp_path / "old.onnx")
    fp32 = fasternet.export(model, tmp_path / "plain.onnx", input_size=(1, 3, 64, 64))
    with pytest.raises(QuantizationError, match="not written by fasternet.quantize"):
        load_quantized(fp32)


def test_calibration_errors(model, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantizationError, match="no class folders"):
        quantize(model, tmp_path / "empty", transform=TRANSFORM)
    broken = tmp_path / "broken" / "cls"
    broken.mkdir(parents=True)
    (broken / "a.jpg").write_text("not an image")
    with pytest.raises(QuantizationError, match="no calibration image could be read"):
        quantize(model, tmp_path / "broken", transform=TRANSFORM)
    wrong = [torch.randn(3, 32, 32) for _ in range(4)]
    with pytest.raises(QuantizationError, match="model is quantized for"):
        quantize(model, wrong, transform=TRANSFORM)


def test_int8_without_calibration_is_explained(model):
    with pytest.raises(ValueError, match="INT8 needs calibration"):
        runner(model, precision="int8")


def test_cli_quantize_and_eval_int8_with_agreement(tmp_path):
    data = make_dataset(tmp_path / "data", classes=3, train=8, val=6, size=(64, 64))
    model = fasternet.create_model("fasternet_t0", num_classes=3)
    checkpoint = fasternet.save_checkpoint(
        model,
        tmp_path / "m.safetensors",
        class_names=["class_0", "class_1", "class_2"],
        metadata={"image_size": "64", "crop_pct": "1.0"},
    )

    def cli(*args):
        result = subprocess.run(
            [sys.executable, "-m", "fasternet", *args], capture_output=True, text=True, timeout=600, env=ENV
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    out = cli(
        "quantize", str(checkpoint), "--data", str(data / "train"), "-o", str(tmp_path / "q.xml"), "--samples", "16"
    )
    assert "wrote" in out and (tmp_path / "q.xml").exists()
    fp32 = json.loads(cli("eval", "--checkpoint", str(checkpoint), "--data", str(data), "--json").splitlines()[-1])
    int8 = json.loads(
        cli(
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(data),
            "--precision",
            "int8",
            "--quantized",
            str(tmp_path / "q.xml"),
            "--json",
        ).splitlines()[-1]
    )
    assert int8["images"] == fp32["images"] == 18
    assert 0 <= int8["agreement"] <= 100 and int8["precision"] == "int8"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "fasternet",
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(data),
            "--precision",
            "int8",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert bad.returncode == 1 and "needs --calibration" in bad.stderr
