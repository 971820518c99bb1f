"""Export a deployed model (a FasterNet, or any model built with its layers), verified: ONNX,
OpenVINO IR, a torch.export archive, and for phones and boards ExecuTorch, LiteRT, NCNN, Core ML.

Every export is run by its own runtime (onnxruntime, OpenVINO, ``torch.export.load``,
ExecuTorch, LiteRT, NCNN; Core ML where it runs) on a random batch before :func:`export`
returns, and compared with PyTorch: a file that does not reproduce the model is never handed
back silently.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fasternet._utils import relative_error, require
from fasternet.inference import edge
from fasternet.inference.calibration import calibration_images
from fasternet.inference.deployed import deploy, is_deployed
from fasternet.models import EvalTransform

__all__ = ["EXPORT_FORMATS", "ExportError", "export", "output_names"]

EXPORT_FORMATS = ("onnx", "openvino", "pt2", "executorch", "litert", "ncnn", "coreml")
DYNAMIC_FORMATS = ("onnx", "openvino", "pt2")  # the others have a fixed input shape
SUFFIXES = {
    "onnx": ".onnx",
    "openvino": ".xml",
    "pt2": ".pt2",
    "executorch": ".pte",
    "litert": ".tflite",
    "ncnn": ".param",
    "coreml": ".mlpackage",
}
# Largest difference allowed, relative to the largest output magnitude. NCNN's fp32 kernels (Winograd,
# other sums) land at ~7e-4 on FasterNet-T0; INT8 files are compared with the quantized PyTorch graph.
TOLERANCE = {"ncnn": 3e-3, "int8": 0.1}
DEFAULT_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An exported file that its runtime cannot load or that gives other outputs than PyTorch."""


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _check(
    name: str,
    actual: Sequence[torch.Tensor],
    expected: Sequence[torch.Tensor],
    path: Path,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    if len(actual) != len(expected):
        raise ExportError(f"{path}: {name} gives {len(actual)} outputs, PyTorch {len(expected)}")
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        if tuple(a.shape) != tuple(e.shape):
            raise ExportError(f"{path}: {name} output {i} has shape {tuple(a.shape)}, PyTorch {tuple(e.shape)}")
        error = relative_error(a, e)
        if not error < tolerance:
            raise ExportError(f"{path}: {name} output {i} differs from PyTorch (relative error {error:.2e})")


def output_names(model: nn.Module, x: torch.Tensor | None = None) -> list[str]:
    """``logits``, ``features_0..3`` for a FasterNet backbone, ``output_0..`` for another model's outputs."""
    if hasattr(model, "stages") and hasattr(model, "features_only"):
        return [f"features_{i}" for i in range(len(model.stages))] if model.features_only else ["logits"]
    if x is None:
        return ["output"]
    count = len(_outputs(model, x))
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path, dynamic_batch: bool) -> None:
    require("onnx")
    require("onnxscript")
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    # The exporter and onnxscript's optimizer report every step (and torchvision ops a FasterNet
    # never uses) on the console and in logs: keep them quiet unless the export fails.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    chatter = io.StringIO()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            _torch_onnx_export(model, x, path, dynamic)
    except Exception as error:
        raise ExportError(f"ONNX export failed: {error}\n{chatter.getvalue()[-2000:]}") from error
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _torch_onnx_export(model: nn.Module, x: torch.Tensor, path: Path, dynamic) -> None:
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=True,
        external_data=False,
        input_names=["input"],
        output_names=output_names(model, x),
        dynamic_shapes=dynamic,
        optimize=True,
        verbose=False,
    )


def _check_onnx(path: Path, x: torch.Tensor, expected: list[torch.Tensor]) -> None:
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = [torch.from_numpy(o) for o in session.run(None, {session.get_inputs()[0].name: x.numpy()})]
    _check("onnxruntime", actual, expected, path)


def _export_openvino(model: nn.Module, x: torch.Tensor, path: Path, dynamic_batch: bool) -> None:
    ov = require("openvino")
    shape = [-1 if dynamic_batch else x.shape[0], *x.shape[1:]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=x, input=[ov.PartialShape(shape)])
    for output, name in zip(converted.outputs, output_names(model, x), strict=True):
        output.get_tensor().set_names({name})
    ov.save_model(converted, str(path), compress_to_fp16=False)


def _check_openvino(path: Path, x: torch.Tensor, expected: list[torch.Tensor]) -> None:
    ov = require("openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(x.numpy())
    actual = [torch.from_numpy(result[output].copy()) for output in compiled.outputs]
    _check("OpenVINO", actual, expected, path)


def _export_pt2(model: nn.Module, x: torch.Tensor, path: Path, dynamic_batch: bool) -> None:
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
    torch.export.save(program, str(path))


def _check_pt2(path: Path, x: torch.Tensor, expected: list[torch.Tensor]) -> None:
    loaded = torch.export.load(str(path)).module()
    _check("torch.export.load", _outputs(loaded, x), expected, path)


_EXPORTERS = {
    "onnx": (_export_onnx, _check_onnx),
    "openvino": (_export_openvino, _check_openvino),
    "pt2": (_export_pt2, _check_pt2),
}
_RUNTIMES = {"executorch": "ExecuTorch", "litert": "LiteRT", "ncnn": "NCNN", "coreml": "Core ML"}


def export(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    format: str = "onnx",
    input_size: Sequence[int] = (1, 3, 224, 224),
    dynamic_batch: bool | None = None,
    int8: bool = False,
    calibration: object = None,
    samples: int = 100,
    transform: EvalTransform | None = None,
) -> Path:
    """Export ``model``, deployed (:func:`fasternet.deploy`), to ``path``; check it against PyTorch in its runtime.

    ``model`` is a FasterNet, any model built with ``fasternet.layers``, or their deployed form.
    ``format``: "onnx" (one self-contained file, about the size of the fp32 weights), "openvino"
    (``.xml`` + ``.bin``, fp32), "pt2" (``torch.export``), "executorch" (``.pte`` lowered to
    XNNPACK), "litert" (``.tflite``), "ncnn" (``.param`` + ``.bin``, through pnnx) or "coreml"
    (``.mlpackage``; checked numerically on macOS, structurally elsewhere). The first three take
    any batch size (``dynamic_batch``, default True); the others are fixed to ``input_size``.
    ``int8=True`` (executorch, litert) quantizes with the toolchain's PT2E quantizer, calibrated
    on ``calibration`` (an image folder read with the model's evaluation transform, a dataset or a
    loader; ``samples`` images). Raises :class:`ExportError` when the file does not reproduce the
    model; a missing toolchain raises ImportError naming what to install.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if dynamic_batch is None:
        dynamic_batch = format in DYNAMIC_FORMATS
    if dynamic_batch and format not in DYNAMIC_FORMATS:
        raise ValueError(f"{format} files have a fixed input shape; pass dynamic_batch=False (the default for it)")
    if int8 and format not in edge.INT8_FORMATS:
        raise ValueError(f"INT8 export is for {', '.join(edge.INT8_FORMATS)}; for OpenVINO/onnxruntime use quantize()")
    if int8 and calibration is None:
        raise ValueError("INT8 export needs calibration images (calibration=FOLDER)")
    deployed = (model if is_deployed(model) else deploy(model)).cpu()
    path = Path(path)
    if path.suffix != SUFFIXES[format]:
        path = path.with_suffix(SUFFIXES[format])
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    # A dynamic batch is traced at batch 2: torch.export specializes sizes 0 and 1.
    trace_size = (max(2, input_size[0]) if dynamic_batch else input_size[0], *input_size[1:])
    x = torch.randn(trace_size, generator=generator)
    probe = torch.randn((2 if dynamic_batch else input_size[0], *input_size[1:]), generator=generator)
    if format in _EXPORTERS:
        writer, checker = _EXPORTERS[format]
        writer(deployed, x, path, dynamic_batch)
        checker(path, probe, _outputs(deployed, probe))
        return path
    images = None
    if int8:
        transform = transform or getattr(deployed, "eval_transform", None) or EvalTransform(input_size[-1])
        images = calibration_images(calibration, (1, *input_size[1:]), samples, transform)
        if len(images) >= probe.shape[0]:  # INT8 is checked on real images: noise leaves the calibrated ranges
            probe = torch.cat(list(images[: probe.shape[0]]))
    return _export_edge(deployed, format, x, probe, path, images)


def _export_edge(deployed: nn.Module, format: str, x: torch.Tensor, probe: torch.Tensor, path: Path, images) -> Path:
    names = output_names(deployed, x)
    reference = deployed
    with edge.quiet() as chatter:
        try:
            if format == "executorch":
                reference = edge.write_executorch(deployed, x, path, images)
            elif format == "litert":
                reference = edge.write_litert(deployed, x, path, images)
            elif format == "ncnn":
                edge.write_ncnn(deployed, x, path)
            else:
                edge.write_coreml(deployed, x, path, names)
        except ImportError:
            raise
        except Exception as error:
            raise ExportError(f"{_RUNTIMES[format]} export failed: {error}\n{chatter.getvalue()[-2000:]}") from error
    try:
        if format == "coreml":
            actual = edge.check_coreml(path, probe, names)
            if actual is None:  # Core ML predicts on macOS only: the structure was checked
                return path
        else:
            actual = {"executorch": edge.check_executorch, "litert": edge.check_litert, "ncnn": edge.check_ncnn}[
                format
            ](path, probe)
    except ImportError:
        raise
    except Exception as error:
        raise ExportError(f"{path}: {_RUNTIMES[format]} cannot run it ({error})") from error
    tolerance = TOLERANCE["int8"] if images is not None else TOLERANCE.get(format, DEFAULT_TOLERANCE)
    _check(_RUNTIMES[format], actual, _outputs(reference, probe), path, tolerance)
    return path
