"""pretrained=...: file:// and http URLs through the cache, offline use, and the offline error."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
import torch

import fasternet
from conftest import TINY
from fasternet import CheckpointError, FasterNet, convert_state_dict
from fasternet._utils import cache_dir
from fasternet.io.hub import download
from fasternet.models import registry


def _official_t0_file(path):
    model = fasternet.create_model("fasternet_t0")
    torch.save(convert_state_dict(model.state_dict(), "official"), path)
    return model


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_pretrained_file_url_goes_through_the_cache(tmp_path):
    source = _official_t0_file(tmp_path / "weights.pth")
    model = fasternet.create_model("fasternet_t0", pretrained=(tmp_path / "weights.pth").as_uri())
    assert _same(model, source)
    assert (cache_dir() / "weights.pth").is_file()
    assert not list(cache_dir().glob("*.part"))


def test_pretrained_path(tmp_path):
    source = _official_t0_file(tmp_path / "weights.pth")
    assert _same(fasternet.create_model("fasternet_t0", pretrained=str(tmp_path / "weights.pth")), source)


def test_pretrained_true_uses_the_cached_release_file_offline(monkeypatch):
    variant = fasternet.get_variant("fasternet_t0")
    cache_dir().mkdir(parents=True, exist_ok=True)
    source = _official_t0_file(cache_dir() / variant.checkpoint_file)
    monkeypatch.setattr(registry, "RELEASE_URL_PREFIX", "http://127.0.0.1:9/")  # nothing listens there
    model = fasternet.create_model("fasternet_t0", pretrained=True)
    assert _same(model, source)


def test_pretrained_true_for_finetuning_keeps_the_backbone():
    variant = fasternet.get_variant("fasternet_t0")
    cache_dir().mkdir(parents=True, exist_ok=True)
    source = _official_t0_file(cache_dir() / variant.checkpoint_file)
    model = fasternet.create_model("fasternet_t0", pretrained=True, num_classes=5)
    assert torch.equal(model.conv_head.weight, source.conv_head.weight)
    assert model.classifier.out_features == 5


def test_offline_error_names_the_url_and_where_to_put_the_file(monkeypatch):
    monkeypatch.setattr(registry, "RELEASE_URL_PREFIX", "http://127.0.0.1:9/")
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        fasternet.create_model("fasternet_t0", pretrained=True)
    assert time.monotonic() - start < 10
    message = str(info.value)
    name = fasternet.get_variant("fasternet_t0").checkpoint_file
    assert f"http://127.0.0.1:9/{name}" in message
    assert str(cache_dir() / name) in message


def test_the_real_release_url_is_named_offline(paper):
    weights = fasternet.get_weights("fasternet_s")
    assert weights.tag == "fasternet_s.in1k" and fasternet.get_variant("fasternet_s").url == weights.url
    assert weights.url == (
        "https://github.com/JierunChen/FasterNet/releases/download/v1.0/fasternet_s-epoch.299-val_acc1.81.2840.pth"
    )
    released = paper["official_checkpoints"]
    for name in fasternet.list_models():
        record = fasternet.get_weights(f"{name}.in1k")
        assert [record.file_name, record.top1] == released[name]
        assert record.url == released["release_url_prefix"] + record.file_name
        assert (record.transform.image_size, record.transform.crop_pct) == (224, 0.9)


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    claimed_length = 0

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", str(self.claimed_length))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def test_http_download_with_progress(server, tmp_path):
    torch.save(FasterNet(**TINY).state_dict(), tmp_path / "w.pth")
    _Handler.body = (tmp_path / "w.pth").read_bytes()
    _Handler.claimed_length = len(_Handler.body)
    path = download(f"http://127.0.0.1:{server.server_port}/files/w.pth", directory=tmp_path / "cache")
    assert path.read_bytes() == _Handler.body


def test_an_interrupted_download_leaves_nothing_behind(server, tmp_path):
    _Handler.body = b"x" * 1000
    _Handler.claimed_length = 5000  # the connection closes early
    with pytest.raises(CheckpointError, match="cannot download"):
        download(f"http://127.0.0.1:{server.server_port}/w.pth", directory=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
