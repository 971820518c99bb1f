"""Exports for phones and boards, each run in its own runtime, INT8 with real calibration, the
runners over them, and the Hugging Face Hub layout (offline, against a local cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fasternet
from conftest import TINY
from fasternet._utils import relative_error
from imagetools import make_dataset

pytest.importorskip("executorch", reason="the edge extra: pip install 'fasternet[edge]'")

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}


def _tiny(**overrides) -> fasternet.FasterNet:
    torch.manual_seed(0)
    return fasternet.FasterNet(**{**TINY, **overrides}).eval()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["executorch", "litert", "ncnn", "coreml"])
def test_t0_exports_and_runs_in_its_runtime(fmt, tmp_path):
    model = fasternet.create_model("fasternet_t0").eval()
    path = fasternet.export(model, tmp_path / "t0", format=fmt, input_size=(1, 3, 64, 64))
    expected_suffix = {"executorch": ".pte", "litert": ".tflite", "ncnn": ".param", "coreml": ".mlpackage"}[fmt]
    assert path.suffix == expected_suffix and path.exists()
    if fmt == "ncnn":
        assert 7.5e6 < path.with_suffix(".bin").stat().st_size < 8.5e6  # T0's 3.9 M weights, stored in fp16
    if fmt in ("executorch", "litert"):  # and fasternet.runner runs the file
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert relative_error(fasternet.runner(path)(x), model(x)) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["executorch", "litert", "ncnn", "coreml"])
def test_a_small_custom_backbone_with_four_outputs_exports(fmt, tmp_path):
    backbone = _tiny(features_only=True, act_layer="relu")
    path = fasternet.export(backbone, tmp_path / "backbone", format=fmt, input_size=(1, 3, 48, 40))
    if fmt in ("executorch", "litert"):
        outputs = fasternet.runner(path)(torch.randn(1, 3, 48, 40))
        assert [tuple(o.shape) for o in outputs] == [(1, 16, 12, 10), (1, 32, 6, 5), (1, 64, 3, 2), (1, 128, 1, 1)]


def test_edge_runner_backends_build_from_a_model():
    model = _tiny()
    x = torch.randn(1, 3, 64, 64)
    for backend in ("executorch", "litert"):
        run = fasternet.runner(model, backend=backend, input_size=(1, 3, 64, 64), threads=1)
        assert run.backend == backend and relative_error(run(x), model(x)) < 1e-4
        with pytest.raises(ValueError, match="takes inputs of shape"):
            run(torch.randn(2, 3, 64, 64))
    with pytest.raises(fasternet.UnsupportedPrecisionError, match="int8=True"):
        fasternet.runner(model, backend="executorch", precision="bf16", input_size=(1, 3, 64, 64))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A small model trained a little on images it can learn (the dominant color is the class)."""
    root = tmp_path_factory.mktemp("edge_int8")
    data = make_dataset(root / "data", classes=3, train=24, val=8, size=(48, 48))
    out = root / "run"
    fasternet.train(
        "fasternet_t0", data, out, epochs=3, batch_size=8, image_size=48, lr=3e-3, warmup_epochs=0.5,
        mixup=0, cutmix=0, workers=0, progress=False, amp="off",
    )  # fmt: skip
    return out / "best.safetensors", data


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["executorch", "litert"])
def test_int8_export_agrees_with_fp32_on_real_images(fmt, trained, tmp_path):
    checkpoint, data = trained
    model = fasternet.create_model(checkpoint).eval()
    path = fasternet.export(
        model, tmp_path / "int8", format=fmt, input_size=(1, 3, 48, 48), int8=True, calibration=data / "train",
        samples=24,
    )  # fmt: skip
    fp32_size = sum(p.numel() for p in model.parameters()) * 4
    assert path.stat().st_size < 0.5 * fp32_size  # weights in 8 bits
    run = fasternet.runner(path)
    folder = fasternet.io.images.ImageFolder(data / "val", transform=model.eval_transform)
    agree = 0
    for i in range(len(folder)):
        x = folder[i][0].unsqueeze(0)
        with torch.no_grad():
            agree += int(run(x).argmax() == model(x).argmax())
    assert agree / len(folder) >= 0.9


def test_missing_toolchains_name_the_extra(monkeypatch, tmp_path):
    for module, fmt in (
        ("executorch", "executorch"),
        ("litert_torch", "litert"),
        ("pnnx", "ncnn"),
        ("coremltools", "coreml"),
    ):
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(ImportError, match=r"pip install 'fasternet\[edge\]'"):
            fasternet.export(_tiny(), tmp_path / "m", format=fmt, input_size=(1, 3, 64, 64))


def test_export_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="fixed input shape"):
        fasternet.export(_tiny(), tmp_path / "m", format="litert", dynamic_batch=True)
    with pytest.raises(ValueError, match="INT8 export is for executorch, litert"):
        fasternet.export(_tiny(), tmp_path / "m", format="onnx", int8=True, calibration=tmp_path)
    with pytest.raises(ValueError, match="needs calibration"):
        fasternet.export(_tiny(), tmp_path / "m", format="executorch", int8=True)


def test_cli_exports_an_edge_format(tmp_path):
    out = tmp_path / "t0.tflite"
    result = subprocess.run(
        [sys.executable, "-m", "fasternet", "export", "fasternet_t0", "--format", "litert", "--image-size", "64",
         "-o", str(out)],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.exists() and "checked against PyTorch" in result.stdout


# --------------------------------------------------------------------------------------------
# The Hugging Face Hub layout


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_pretrained_round_trip_keeps_weights_classes_and_transform(tmp_path):
    model = fasternet.create_model("fasternet_t0", num_classes=3)
    model.class_names = ["cat", "dog", "tree"]
    model.eval_transform = fasternet.EvalTransform(64, 1.0)
    folder = fasternet.save_pretrained(model, tmp_path / "t0-hub")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "fasternet_t0" and config["num_classes"] == 3
    assert config["label_names"] == ["cat", "dog", "tree"] and config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    back = fasternet.create_model(folder)
    assert _same_weights(back, model) and back.class_names == model.class_names
    assert back.eval_transform == model.eval_transform
    custom = _tiny()
    assert _same_weights(fasternet.create_model(fasternet.save_pretrained(custom, tmp_path / "custom")), custom)


def _local_hub_cache(cache: Path, repo_id: str, folder: Path, revision: str = "0" * 40) -> None:
    """What huggingface_hub's cache holds after a download of ``repo_id`` at ``revision``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_hf_hub_ids_load_offline_from_the_cache(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    model = fasternet.create_model("fasternet_t0")
    folder = fasternet.save_pretrained(model, tmp_path / "upload")
    cache = tmp_path / "hf_cache"
    _local_hub_cache(cache, "someone/fasternet_t0.fmnist", folder)
    env = {**ENV, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    code = (
        "import fasternet, torch; m = fasternet.create_model('hf-hub:someone/fasternet_t0.fmnist'); "
        "n = fasternet.create_model('fasternet_t0', pretrained='hf-hub:someone/fasternet_t0.fmnist'); "
        "torch.save(m.state_dict(), 'm.pt'); print(n.num_classes)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    missing = subprocess.run(
        [sys.executable, "-m", "fasternet", "info", "hf-hub:someone/not-cached"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert missing.returncode == 1 and "not in the local Hugging Face cache" in missing.stderr


def test_the_catalogue_names_the_hub_source_of_each_release():
    for name in fasternet.list_models():
        assert fasternet.get_weights(name).hf_hub_id == f"timm/{name}.in1k"
