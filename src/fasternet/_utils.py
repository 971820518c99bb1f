"""Helpers every layer may use: atomic files, optional imports, the machine, the cache folder.

Nothing here imports from the rest of the package.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "atomic_write",
    "cache_dir",
    "cpu_flags",
    "cpu_has_bf16",
    "cpu_name",
    "machine_description",
    "relative_error",
    "require",
]

# Optional modules -> (the pip package, the fasternet extra that installs it).
_OPTIONAL: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "deploy"),
    "onnxscript": ("onnxscript", "deploy"),
    "onnxruntime": ("onnxruntime", "deploy"),
    "openvino": ("openvino", "deploy"),
    "nncf": ("nncf", "deploy"),
    "triton": ("triton", "gpu"),
    "kornia": ("kornia", "train"),
    "matplotlib": ("matplotlib", "plot"),
    "torchvision": ("torchvision", "detection"),
    "pycocotools": ("pycocotools", "detection"),
    "huggingface_hub": ("huggingface_hub", "hub"),
    "executorch": ("executorch", "edge"),
    "litert_torch": ("litert-torch", "edge"),
    "ai_edge_litert": ("ai-edge-litert", "edge"),
    "pnnx": ("pnnx", "edge"),
    "ncnn": ("ncnn", "edge"),
    "coremltools": ("coremltools", "edge"),
}


def require(module: str) -> Any:
    """Import an optional dependency, or raise ImportError naming the package and extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        package, extra = _OPTIONAL.get(top, (top, None))
        if error.name not in (None, module, top) and not str(error.name).startswith(top + "."):
            raise  # the module is there but one of its own dependencies is broken: show that
        hint = f"pip install 'fasternet[{extra}]' (or pip install {package})" if extra else f"pip install {package}"
        raise ImportError(f"this needs {package}: {hint}") from None


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None] | bytes | str) -> Path:
    """Write ``path`` so that a crash at any moment leaves the old file or the new one, never half.

    ``write`` is the content (bytes or text) or a function given the open temporary file. The data
    goes to a temporary file in the same folder, is flushed to disk, then renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w" if isinstance(write, str) else "wb"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            if callable(write):
                write(f)
            else:
                f.write(write)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def cache_dir() -> Path:
    """Where downloads and the autotuning cache live: ``$FASTERNET_HOME`` or ``~/.cache/fasternet``."""
    return Path(os.environ.get("FASTERNET_HOME") or Path.home() / ".cache" / "fasternet")


def _cpuinfo_field(name: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    return None


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (avx2, avx512f, avx512_bf16, amx_bf16, ...)."""
    return set((_cpuinfo_field("flags") or "").split())


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU computes bf16 dot products natively."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine_description(device: str = "cpu") -> str:
    """One line naming the device (CPU model and its vector ISA, or the GPU) and torch's version."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in cpu_flags()]
    return f"{cpu_name()} [{', '.join(isa) or 'no AVX2'}], torch {torch.__version__}"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of ``expected``."""
    actual, expected = actual.detach().float(), expected.detach().float()
    scale = expected.abs().max().clamp_min(1e-12)
    return float((actual - expected).abs().max() / scale)
