"""Exports for phones, boards and NPUs: ExecuTorch (XNNPACK), LiteRT (.tflite), NCNN (via pnnx), Core ML.

Each writer takes the deployed model and a traced input; each checker runs the file in its own
runtime and returns its outputs, which :func:`fasternet.export` compares with PyTorch. INT8 uses
the toolchain's own PT2E quantizer (XNNPACK's for ExecuTorch, LiteRT's for ``.tflite``),
calibrated on real images like ``fasternet quantize``. These files have a fixed input shape.
The runtimes' toolchains are the ``edge`` extra (``pip install 'fasternet[edge]'``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fasternet._utils import require

__all__ = [
    "INT8_FORMATS",
    "check_coreml",
    "check_executorch",
    "check_litert",
    "check_ncnn",
    "quiet",
    "write_coreml",
    "write_executorch",
    "write_litert",
    "write_ncnn",
]

INT8_FORMATS = ("executorch", "litert")


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence the toolchains' chatter (Python warnings and logs, and what their C++ code prints on
    file descriptors 1 and 2); what was said is kept for the error message when something fails."""
    chatter = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch", "executorch", "coremltools", "absl", "litert_torch")]
    levels = [logger.level for logger in loggers]
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                warnings.simplefilter("ignore")
                yield chatter
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            sink.seek(0)
            chatter.write(sink.read().decode(errors="replace")[-4000:])


def _quantize_pt2e(
    model: nn.Module, x: torch.Tensor, quantizer, calibration: Sequence[torch.Tensor], fold_quantize: bool
) -> nn.Module:
    """The PT2E flow: export, insert observers, run the calibration images, convert (ExecuTorch wants the
    weights' quantization folded into constants; LiteRT's converter folds them itself)."""
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e")
    graph = torch.export.export(model, (x,)).module()
    prepared = pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for image in calibration:
            prepared(image)
    return pt2e.convert_pt2e(prepared, fold_quantize=fold_quantize)


# --------------------------------------------------------------------------------------------
# ExecuTorch with the XNNPACK delegate


def write_executorch(
    model: nn.Module, x: torch.Tensor, path: Path, calibration: Sequence[torch.Tensor] | None = None
) -> nn.Module:
    """A ``.pte`` lowered to XNNPACK (INT8 with ``calibration``); returns the graph it lowered."""
    require("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if calibration is not None:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        model = _quantize_pt2e(model, x, quantizer, calibration, fold_quantize=True)
    program = torch.export.export(model, (x,))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(lowered.buffer)
    return model


def executorch_method(path: Path) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The ``forward`` method of a ``.pte``, loaded by ExecuTorch's runtime."""
    require("executorch")
    from executorch.runtime import Runtime

    with quiet():
        method = Runtime.get().load_program(str(path)).load_method("forward")
    return lambda x: list(method.execute([x.detach().float().contiguous()]))


def check_executorch(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    with quiet():
        return executorch_method(path)(x)


# --------------------------------------------------------------------------------------------
# LiteRT (TFLite flatbuffers, run by ai-edge-litert with its XNNPACK delegate)


def write_litert(
    model: nn.Module, x: torch.Tensor, path: Path, calibration: Sequence[torch.Tensor] | None = None
) -> nn.Module:
    """A ``.tflite`` (INT8 with ``calibration``, LiteRT's own PT2E quantizer)."""
    litert_torch = require("litert_torch")
    options = {}
    if calibration is not None:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        model = _quantize_pt2e(model, x, quantizer, calibration, fold_quantize=False)
        options["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
    edge_model = litert_torch.convert(model, (x,), **options)
    edge_model.export(str(path))
    return model


def litert_interpreter(path: Path, threads: int | None = None) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """A call running a ``.tflite`` in LiteRT's interpreter (XNNPACK on CPUs)."""
    interpreter_module = require("ai_edge_litert.interpreter")
    interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    entry = interpreter.get_input_details()[0]
    outputs = interpreter.get_output_details()

    def call(x: torch.Tensor) -> list[torch.Tensor]:
        interpreter.set_tensor(entry["index"], _to_input(x.detach().float().contiguous().numpy(), entry))
        interpreter.invoke()
        return [torch.from_numpy(_from_output(interpreter.get_tensor(o["index"]), o)) for o in outputs]

    return call


def _to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """A float array as the interpreter's input: quantized with its scale and zero point for INT8 files."""
    if np.issubdtype(detail["dtype"], np.floating):
        return x.astype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(detail["dtype"])


def _from_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(detail["dtype"], np.floating):
        return y.astype(np.float32).copy()
    scale, zero_point = detail["quantization"]
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def check_litert(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    with quiet():
        return litert_interpreter(path)(x)


# --------------------------------------------------------------------------------------------
# NCNN through pnnx


def write_ncnn(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """``path`` (``.param``) and the ``.bin`` beside it, converted by pnnx from the traced model."""
    pnnx = require("pnnx")
    with tempfile.TemporaryDirectory() as tmp:
        traced = Path(tmp) / "model.pt"
        pnnx.export(model, str(traced), (x,))
        shutil.move(Path(tmp) / "model.ncnn.param", path)
        shutil.move(Path(tmp) / "model.ncnn.bin", path.with_suffix(".bin"))


def ncnn_net(path: Path, threads: int | None = None) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """A call running an NCNN ``.param``/``.bin`` pair in fp32, one image at a time (NCNN's unit)."""
    ncnn = require("ncnn")
    net = ncnn.Net()
    for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, option, False)
    if threads is not None:
        net.opt.num_threads = threads
    net.load_param(str(path))
    net.load_model(str(path.with_suffix(".bin")))
    names = net.output_names()

    def call(x: torch.Tensor) -> list[torch.Tensor]:
        per_output: list[list[torch.Tensor]] = [[] for _ in names]
        for image in x.detach().float().contiguous():
            extractor = net.create_extractor()
            extractor.input(net.input_names()[0], ncnn.Mat(image.numpy()).clone())
            for i, name in enumerate(names):
                status, mat = extractor.extract(name)
                if status != 0:
                    raise RuntimeError(f"NCNN could not compute {name} (status {status})")
                per_output[i].append(torch.from_numpy(np.array(mat)))
        return [torch.stack(parts) for parts in per_output]

    return call


def check_ncnn(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    with quiet():
        return ncnn_net(path)(x)


# --------------------------------------------------------------------------------------------
# Core ML (an ML program; it runs on macOS only)


def write_coreml(model: nn.Module, x: torch.Tensor, path: Path, output_names: Sequence[str]) -> None:
    """An ``.mlpackage`` (fp32 ML program) with the input named ``input`` and the outputs named."""
    ct = require("coremltools")
    program = torch.export.export(model, (x,)).run_decompositions({})
    converted = ct.convert(
        program,
        inputs=[ct.TensorType(name="input", shape=tuple(x.shape))],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS16,
    )
    spec = converted.get_spec()
    for output, name in zip(list(spec.description.output), output_names, strict=True):
        ct.utils.rename_feature(spec, output.name, name)
    converted = ct.models.MLModel(spec, weights_dir=converted.weights_dir)
    if path.exists():
        shutil.rmtree(path)
    converted.save(str(path))


def check_coreml(path: Path, x: torch.Tensor, output_names: Sequence[str]) -> list[torch.Tensor] | None:
    """Outputs from Core ML where it runs (macOS); elsewhere the package's structure is checked and
    None is returned (Core ML predicts on macOS only)."""
    ct = require("coremltools")
    loaded = ct.models.MLModel(str(path), skip_model_load=sys.platform != "darwin")
    description = loaded.get_spec().description
    inputs = [(i.name, list(i.type.multiArrayType.shape)) for i in description.input]
    if inputs != [("input", list(x.shape))]:
        raise ValueError(f"the Core ML package takes {inputs}, not [('input', {list(x.shape)})]")
    found = [o.name for o in description.output]
    if found != list(output_names):
        raise ValueError(f"the Core ML package's outputs are {found}, not {list(output_names)}")
    if sys.platform != "darwin":
        return None
    result = loaded.predict({"input": x.detach().float().numpy()})
    return [torch.from_numpy(np.asarray(result[name])) for name in output_names]
