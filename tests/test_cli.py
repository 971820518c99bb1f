"""The command line, run as a user runs it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import fasternet
from fasternet import convert_state_dict


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "fasternet", *args], capture_output=True, text=True, timeout=300, env=env
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fasternet: error:"), result.stderr
    assert fragment in lines[0]


def test_profile_default_job():
    out = run("profile", "fasternet_t0").stdout
    total = out.strip().splitlines()[-1]
    assert total.startswith("total") and "3,905,500" in total and "335.42" in total
    assert "[stage 2]" in out and "PConv" in out


def test_profile_json_and_image_size():
    report = json.loads(run("profile", "fasternet_s", "--image-size", "256", "--json").stdout)
    assert report["params"] == 31181032
    assert report["input_size"] == [1, 3, 256, 256]
    assert report["macs"] > 4.5497e9


def test_list():
    out = run("list").stdout
    for name in fasternet.list_models():
        assert name in out
    assert "93,465,192" in out and "15.4944" in out


@pytest.fixture
def files(tmp_path):
    model = fasternet.create_model("fasternet_t0")
    official = tmp_path / "fasternet_t0-official.pth"
    torch.save(convert_state_dict(model.state_dict(), "official"), official)
    t1 = fasternet.create_model("fasternet_t1")
    t1_path = tmp_path / "t1.pth"
    torch.save(convert_state_dict(t1.state_dict(), "official"), t1_path)
    return {"official": official, "t1": t1_path, "model": model, "dir": tmp_path}


def test_info_convert_and_profile_a_checkpoint(files):
    info = json.loads(run("info", str(files["official"]), "--json", "--model", "fasternet_t0").stdout)
    assert info["layout"] == "official" and info["variant"] == "fasternet_t0"
    assert info["params"] == 3905500 and info["loads_into"] == "fasternet_t0"
    out = files["dir"] / "t0.safetensors"
    run("convert", str(files["official"]), "-o", str(out))
    rebuilt = fasternet.create_model_from_checkpoint(out)
    assert all(
        torch.equal(a, b)
        for a, b in zip(rebuilt.state_dict().values(), files["model"].state_dict().values(), strict=True)
    )
    timm = files["dir"] / "timm.pth"
    run("convert", str(out), "--layout", "timm", "-o", str(timm))
    assert "conv_head.weight" in torch.load(timm, weights_only=True)
    assert "3,905,500" in run("profile", str(out)).stdout


def test_error_missing_file(tmp_path):
    assert_one_line_error(run("info", str(tmp_path / "nope.pth"), ok=False), "not found")


def test_error_truncated_file(files):
    data = files["official"].read_bytes()
    files["official"].write_bytes(data[: len(data) // 3])
    assert_one_line_error(run("info", str(files["official"]), ok=False), "corrupt or truncated")


def test_error_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    assert_one_line_error(run("info", str(tmp_path / "list.pth"), ok=False), "not a state dict")


def test_error_unknown_layout(tmp_path):
    torch.save({"conv1.weight": torch.zeros(2, 3, 7, 7)}, tmp_path / "resnet.pth")
    assert_one_line_error(run("info", str(tmp_path / "resnet.pth"), ok=False), "not a FasterNet checkpoint")


def test_error_other_variant(files):
    result = run("info", str(files["t1"]), "--model", "fasternet_t0", ok=False)
    assert_one_line_error(
        result, "this checkpoint is fasternet_t1 (embed_dim 64, depths 1-2-8-2); the model is fasternet_t0"
    )


def test_error_missing_keys(files):
    state = torch.load(files["official"], weights_only=True)
    del state["stages.4.blocks.3.mlp.0.weight"]
    torch.save(state, files["official"])
    result = run("info", str(files["official"]), "--model", "fasternet_t0", ok=False)
    assert_one_line_error(result, "1 missing keys (stages.2.blocks.3.mlp.0.weight)")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_error_code_carrying_pickle(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "x": _RunsCode(str(marker))}, tmp_path / "evil.pth")
    assert_one_line_error(run("info", str(tmp_path / "evil.pth"), ok=False), "refused")
    assert not marker.exists()


def test_error_unknown_model():
    assert_one_line_error(run("profile", "fasternet_x9", ok=False), "unknown model 'fasternet_x9'")


def test_error_offline_download(tmp_path):
    env_home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-m", "fasternet", "download", "fasternet_t0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FASTERNET_HOME": str(env_home)},
    )
    if result.returncode == 0:
        pytest.skip("this machine has network access; the offline error cannot be shown")
    assert_one_line_error(result, "https://github.com/JierunChen/FasterNet/releases/download/v1.0/")
    assert str(env_home) in result.stderr


def test_train_recipe_flags_are_the_recipe_fields_with_each_variants_value():
    import dataclasses

    out = run("train", "--help").stdout
    for field in dataclasses.fields(fasternet.Recipe):
        assert "--" + field.name.replace("_", "-") in out, field.name
    text = " ".join(out.split())
    assert "0.005 (t0), 0.01 (t1), 0.02 (t2), 0.03 (s), 0.05 (m/l)" in text  # weight decay, the paper's table
    assert "4096 (t0/t1/t2/s), 2048 (m/l)" in text


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["profile", "fasternet_t0", "--image-size", "0"], "must be >= 1"),
        (["profile", "fasternet_t0", "--batch-size", "many"], "expected a whole number"),
        (["bench", "--batch-sizes", "0"], "must be >= 1"),
        (["predict", "--checkpoint", "x.safetensors", "a.png", "--top-k", "-3"], "must be >= 1"),
    ],
)
def test_absurd_flag_values_are_refused_in_one_line(args, fragment):
    result = run(*args, ok=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert fragment in result.stderr
