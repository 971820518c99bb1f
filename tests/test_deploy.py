"""Deploy mode, exporters checked by their runtimes, and runners in each precision."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

import fasternet
from conftest import TINY
from fasternet import ExportError, FasterNet, export
from fasternet._utils import cache_dir, cpu_has_bf16, relative_error
from fasternet.inference.deployed import DeployedFasterNet, deploy, fold_bn, split_to_concat
from fasternet.inference.runners import UnsupportedPrecisionError, runner

NAMES = fasternet.list_models()


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics, so that folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def tiny(**kwargs) -> FasterNet:
    return randomize_bn(FasterNet(**{**TINY, **kwargs}))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("features_only", [False, True])
def test_deploy_equivalence_for_every_variant_on_odd_sizes(name, features_only):
    torch.manual_seed(0)
    model = randomize_bn(fasternet.create_model(name, features_only=features_only))
    deployed = deploy(model)
    x = torch.randn(2, 3, 67, 45)
    with torch.no_grad():
        expected, actual = model(x), deployed(x)
    if features_only:
        for a, e in zip(actual, expected, strict=True):
            assert a.shape == e.shape and relative_error(a, e) < 1e-5
    else:
        assert relative_error(actual, expected) < 1e-5


@pytest.mark.parametrize("form", ["split", "concat", "dense"])
def test_deployed_forms_and_layer_scale(form):
    model = tiny(layer_scale_init_value=0.5)
    with torch.no_grad():
        for stage in model.stages:
            for block in stage.blocks:
                block.layer_scale.uniform_(0.2, 2.0)
    x = torch.randn(3, 3, 64, 48)
    with torch.no_grad():
        assert relative_error(deploy(model, form=form)(x), model(x)) < 1e-5


def test_deployed_model_has_no_bn_and_no_concat_and_keeps_the_input():
    deployed = deploy(tiny())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    x = torch.randn(1, 3, 64, 64)
    x_before = x.clone()
    graph = torch.export.export(deployed, (x,)).graph
    ops = {str(node.target) for node in graph.nodes if node.op == "call_function"}
    assert not any("cat" in op or "clone" in op or "copy" in op for op in ops), ops
    deployed(x)
    assert torch.equal(x, x_before)


def test_deployed_features_only_keeps_output_norms_as_affine():
    model = tiny(features_only=True)
    deployed = deploy(model)
    bns = [m for m in deployed.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 4  # the four output norms: they act on outputs only, nothing to fold into


def test_deployed_model_is_inference_only():
    deployed = deploy(tiny())
    assert not deployed.training
    with pytest.raises(RuntimeError, match="inference-only"):
        deployed.train()
    deployed.eval()  # still allowed
    assert all(not p.requires_grad for p in deployed.parameters())


def test_fold_bn_matches_conv_then_bn():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    bn = randomize_bn(nn.BatchNorm2d(6))
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_deploy_keeps_a_model_it_does_not_know_and_rejects_what_is_not_a_model():
    linear = nn.Linear(2, 2)
    deployed = deploy(linear)
    assert isinstance(deployed.module, nn.Linear) and deployed.module is not linear  # a copy
    with pytest.raises(TypeError, match="torch.nn.Module"):
        deploy({"weight": torch.zeros(2)})


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "pt2"])
@pytest.mark.parametrize("features_only", [False, True])
def test_exports_are_checked_by_their_runtime(fmt, features_only, tmp_path):
    model = tiny(features_only=features_only)
    path = export(model, tmp_path / f"m.{fmt}", format=fmt, input_size=(1, 3, 64, 80))
    assert path.exists()
    x = torch.randn(3, 3, 64, 80)  # dynamic batch
    if fmt == "pt2":
        loaded = torch.export.load(str(path)).module()
        out = loaded(x)
    else:
        out = runner(path, input_size=(3, 3, 64, 80))(x)
    with torch.no_grad():
        expected = model(x)
    if features_only:
        for a, e in zip(out, expected, strict=True):
            assert relative_error(a, e) < 1e-4
    else:
        assert relative_error(out, expected) < 1e-4


def test_onnx_is_about_the_size_of_the_fp32_weights(tmp_path):
    model = randomize_bn(fasternet.create_model("fasternet_t0"))
    path = export(model, tmp_path / "t0.onnx")
    weights = sum(p.numel() for p in deploy(model).parameters()) * 4
    assert weights * 0.98 < path.stat().st_size < weights * 1.05


def test_export_raises_when_the_runtime_disagrees(tmp_path, monkeypatch):
    import fasternet.inference.exporters as export_module

    original = export_module._outputs
    monkeypatch.setattr(export_module, "_outputs", lambda m, x: [o + 1 for o in original(m, x)])
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export(tiny(), tmp_path / "m.onnx", input_size=(1, 3, 64, 64))


def test_export_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        export(tiny(), tmp_path / "m.tflite", format="tflite")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_fp32_runners_match_eager(backend):
    model = tiny()
    run = runner(model, backend=backend, input_size=(2, 3, 64, 64), threads=1)
    assert run.backend == backend
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(run(x), model(x)) < 1e-4


def test_features_only_runner_returns_four_maps():
    model = tiny(features_only=True)
    out = runner(model, backend="openvino", input_size=(1, 3, 64, 64))(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in out] == [16, 32, 64, 128]


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no AVX512_BF16/AMX")
@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bf16_runners_stay_close(backend):
    model = tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    actual = runner(model, backend=backend, precision="bf16", input_size=(2, 3, 64, 64))(x)
    assert actual.dtype == torch.float32
    assert relative_error(actual, expected) < 5e-2


def test_bf16_is_refused_where_unsupported(monkeypatch):
    import fasternet.inference.runners as runners_module

    monkeypatch.setattr(runners_module, "cpu_has_bf16", lambda: False)
    with pytest.raises(UnsupportedPrecisionError, match="no native bf16"):
        runner(tiny(), backend="torch", precision="bf16")
    with pytest.raises(UnsupportedPrecisionError, match="onnxruntime"):
        runners_module._onnxruntime_call(deploy(tiny()), "bf16", (1, 3, 64, 64), None, None)


def test_missing_backend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an environment without it gives: ImportError
    with pytest.raises(ImportError, match=r"pip install 'fasternet\[deploy\]'"):
        runner(tiny(), backend="openvino")


def test_auto_picks_a_backend_once_and_caches_it():
    model = tiny()
    first = runner(model, backend="auto", input_size=(1, 3, 64, 64))
    assert first.backend in fasternet.inference.runners.AUTO_CANDIDATES
    cache = json.loads((cache_dir() / "autotune.json").read_text())
    (entry,) = cache.values()
    assert entry["backend"] == first.backend and {"torch", "onnxruntime", "openvino"} <= set(entry["seconds"])
    assert runner(model, backend="auto", input_size=(1, 3, 64, 64)).backend == first.backend


def test_unknown_backend_and_precision():
    with pytest.raises(ValueError, match="unknown backend"):
        runner(tiny(), backend="tensorrt")
    with pytest.raises(ValueError, match="unknown precision"):
        runner(tiny(), precision="fp8")


def test_deployed_input_errors():
    with pytest.raises(ValueError, match="expected an N x 3"):
        deploy(tiny())(torch.randn(1, 1, 64, 64))
    assert isinstance(deploy(deploy(tiny())), DeployedFasterNet)


def test_split_block_converts_to_the_concat_form():
    torch.manual_seed(0)
    model = FasterNet(**TINY, layer_scale_init_value=0.5).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    block = deploy(model).stages[1][1]
    concat = split_to_concat(block)
    assert concat.form == "concat" and not hasattr(concat, "expand_rest") and hasattr(block, "expand_rest")
    x = torch.randn(2, block.dim_conv + block.dim_untouched, 9, 7)
    assert relative_error(concat(x), block(x)) < 1e-6
    with pytest.raises(ValueError, match="split-form"):
        split_to_concat(concat)
