"""Downloading release checkpoints into a local cache, safely and visibly.

The cache is ``$FASTERNET_HOME`` (default ``~/.cache/fasternet``). A download goes to a
temporary name and is renamed only when complete, so an interrupted one never leaves a
truncated file where a good one is expected. A file already in the cache is used offline.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from fasternet._utils import cache_dir
from fasternet.io.checkpoints import CheckpointError
from fasternet.io.hf import hf_download, is_hf_hub, read_pretrained

__all__ = ["cache_dir", "download", "is_url", "resolve_checkpoint"]

_URL_SCHEMES = ("http://", "https://", "file://")
_CHUNK = 1 << 20


def is_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(_URL_SCHEMES)


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A local path for ``source``: URLs are downloaded into the cache, ``hf-hub:`` ids through
    huggingface_hub's (their weights file), paths are returned as is."""
    if is_hf_hub(source):
        return read_pretrained(hf_download(source), origin=source).weights
    return download(source) if is_url(source) else Path(source)


def download(
    url: str,
    *,
    directory: str | os.PathLike | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> Path:
    """Fetch ``url`` (http, https or file) into the cache and return the local path.

    Raises :class:`CheckpointError` naming the URL and the path to place the file at by hand
    when the download fails (no network, HTTP error, incomplete transfer, wrong ``sha256``).
    """
    directory = Path(directory) if directory is not None else cache_dir()
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise CheckpointError(f"cannot tell a file name from the URL {url!r}")
    destination = directory / name
    if destination.is_file():
        return destination
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length else None  # None when the server does not say
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not progress, leave=False
            ) as bar:
                received = 0
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise OSError(f"incomplete transfer: {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and _sha256(tmp) != sha256:
            raise OSError(f"the file's sha256 is not the published {sha256}")
        os.replace(tmp, destination)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(
            f"cannot download {url} ({reason}). Without network access, fetch the file elsewhere "
            f"and place it at {destination}"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return destination


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
