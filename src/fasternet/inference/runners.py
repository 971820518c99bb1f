"""Runners: the fastest way to run a FasterNet on each engine, behind one callable interface.

``runner(model, backend=..., precision=...)`` returns a :class:`Runner`: a float32 NCHW torch
tensor in, a torch tensor out (a list of four for a features_only model). Backends:

* ``torch``: the deployed model (BN folded, copy-free PConv) in inference mode, channels-last,
  weights in bf16 for ``precision="bf16"`` (oneDNN uses AVX512-BF16/AMX);
* ``torch-compile``: the same through ``torch.compile`` (inductor, weights frozen);
* ``onnxruntime``: the ONNX export in onnxruntime's CPU provider (fp32);
* ``openvino``: OpenVINO's CPU plugin with ``INFERENCE_PRECISION_HINT`` pinned to f32 (OpenVINO
  silently computes in bf16 on CPUs that have it unless told) or set to bf16 when asked;
* ``executorch`` / ``litert``: the model exported to a ``.pte`` (XNNPACK) / ``.tflite`` and run by
  ExecuTorch's / LiteRT's runtime: the engines phones use (fp32; INT8 files from
  ``fasternet.export(..., int8=True)`` run with ``runner(path)``), fixed input shape;
* ``triton`` (CUDA): the fused block kernel (one Triton kernel per block, see
  ``fasternet.kernels``) on the stages where it beats cuDNN/cuBLAS on this GPU and input size,
  timed once when the runner is built (``Runner.metadata`` records the choice);
  ``triton-compile``: the same with ``torch.compile`` fusing the rest of the model;
* ``auto``: times the installed ones once and keeps the fastest (cached per model architecture,
  input shape, precision, threads and machine in ``$FASTERNET_HOME/autotune.json``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fasternet._utils import atomic_write, cache_dir, cpu_flags, cpu_has_bf16, cpu_name, require
from fasternet.builder import create_model
from fasternet.inference import edge
from fasternet.inference.deployed import DeployedFasterNet, deploy, is_deployed
from fasternet.inference.exporters import ExportError, export, output_names
from fasternet.inference.kernels.block import choose_fused_stages, fuse_blocks
from fasternet.inference.quantization import QuantizedModel, load_quantized, quantize
from fasternet.inference.timing import median_seconds
from fasternet.models import EvalTransform, FasterNet

__all__ = ["BACKENDS", "PRECISIONS", "Runner", "UnsupportedPrecisionError", "int8_runner", "runner"]

BACKENDS = ("torch", "torch-compile", "onnxruntime", "openvino", "executorch", "litert", "triton", "triton-compile")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch-compile compiles for minutes: opt-in only
AUTO_CANDIDATES = ("torch", "onnxruntime", "openvino", "executorch", "litert")
EDGE_SUFFIXES = {".pte": "executorch", ".tflite": "litert"}
# The PConv form each engine runs fastest (benchmarks/pconv_forms.py; T0 batch 1, 2 threads): eager
# torch pays per operator and prefers one concat to two 1x1 convolutions; the graph compilers
# prefer the split weight (no copy). A model that is already deployed keeps its form.
PREFERRED_FORM = {
    "torch": "concat",
    "torch-compile": "split",
    "onnxruntime": "concat",
    "openvino": "split",
    "executorch": "split",
    "litert": "split",
    "triton": "split",
    "triton-compile": "split",
}


class UnsupportedPrecisionError(RuntimeError):
    """The hardware or the backend cannot compute in the precision asked for."""


def _check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise UnsupportedPrecisionError("INT8 runs on the CPU (OpenVINO or onnxruntime) here")
    if precision == "fp16" and device.type != "cuda":
        raise UnsupportedPrecisionError("fp16 runners are for CUDA devices; on a CPU use bf16 or fp32")
    if precision == "bf16":
        if device.type == "cuda":
            if not torch.cuda.is_bf16_supported():
                raise UnsupportedPrecisionError(f"{torch.cuda.get_device_name(device)} has no bf16 support")
        elif not cpu_has_bf16():
            raise UnsupportedPrecisionError(
                f"this CPU ({cpu_name()}) has no native bf16 (it needs AVX512_BF16 or AMX); use precision='fp32'"
            )


class Runner:
    """A compiled model: ``runner(x)`` with a float32 NCHW tensor returns torch output(s)."""

    def __init__(
        self,
        backend: str,
        precision: str,
        input_size: tuple[int, ...],
        threads: int | None,
        device: torch.device,
        call: Callable[[torch.Tensor], Any],
        features_only: bool,
    ) -> None:
        self.backend = backend
        self.precision = precision
        self.input_size = input_size
        self.threads = threads
        self.device = device
        self.features_only = features_only
        self.metadata: dict[str, Any] = {}  # what an INT8 file records about its source model
        self._call = call

    def __call__(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {tuple(x.shape)}")
        return self._call(x)

    def __repr__(self) -> str:
        return (
            f"Runner(backend={self.backend!r}, precision={self.precision!r}, input_size={self.input_size}, "
            f"threads={self.threads}, device={str(self.device)!r})"
        )


def _allow_recompiles(limit: int = 64) -> None:
    """Let dynamo compile one forward per runner: its limit (8) counts every model, shape and dtype
    compiled from the same ``forward`` code, and with ``fullgraph=True`` the ninth runner fails."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


def _torch_call(
    model: nn.Module, precision: str, device: torch.device, threads: int | None, compile_model: bool
) -> Callable:
    dtype = TORCH_DTYPES[precision]
    model = copy.deepcopy(model).to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    if compile_model:
        _allow_recompiles()
        model = torch.compile(model, dynamic=False, fullgraph=True)

    def call(x: torch.Tensor):
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            x = x.to(device=device, dtype=dtype, memory_format=torch.channels_last)
            if compile_model and device.type == "cpu":
                with torch._inductor.config.patch(freezing=True):
                    out = model(x)
            else:
                out = model(x)
        if isinstance(out, list):
            return [o.float().contiguous() for o in out]
        return out.float()

    return call


def _onnxruntime_call(
    model: nn.Module | None, precision: str, input_size: Sequence[int], threads: int | None, onnx_path: Path | None
) -> Callable:
    ort = require("onnxruntime")
    if precision == "bf16":
        raise UnsupportedPrecisionError("onnxruntime's CPU provider has no bf16 kernels; use openvino or torch")
    if onnx_path is None:
        directory = Path(tempfile.mkdtemp(prefix="fasternet-onnx-"))
        onnx_path = export(model, directory / "model.onnx", format="onnx", input_size=input_size)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def call(x: torch.Tensor):
        outputs = session.run(None, {input_name: x.detach().float().cpu().contiguous().numpy()})
        tensors = [torch.from_numpy(o) for o in outputs]
        return tensors if len(tensors) > 1 else tensors[0]

    return call


def openvino_cpu_config(precision: str, threads: int | None) -> dict[str, str]:
    """OpenVINO CPU settings for one latency-bound stream, the precision pinned.

    Unpinned, OpenVINO computes in bf16 on CPUs that have it; INT8 files keep their unquantized
    operations in f32.
    """
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def _openvino_call(
    model: nn.Module | None,
    precision: str,
    input_size: Sequence[int],
    threads: int | None,
    ir_path: Path | None,
) -> Callable:
    ov = require("openvino")
    core = ov.Core()
    config = openvino_cpu_config(precision, threads)
    if ir_path is not None:
        source = core.read_model(str(ir_path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = torch.zeros(tuple(input_size))
            source = ov.convert_model(model, example_input=example)
        for output, name in zip(source.outputs, output_names(model, example), strict=True):
            output.get_tensor().set_names({name})
    compiled: dict[tuple[int, ...], Any] = {}

    def request_for(shape: tuple[int, ...]):
        if shape not in compiled:
            reshaped = source.clone()
            reshaped.reshape({reshaped.inputs[0]: ov.PartialShape(list(shape))})
            compiled[shape] = core.compile_model(reshaped, "CPU", config).create_infer_request()
        return compiled[shape]

    request_for(tuple(input_size))

    def call(x: torch.Tensor):
        x = x.detach().float().cpu().contiguous()
        request = request_for(tuple(x.shape))
        request.infer({0: x.numpy()}, share_inputs=True)
        tensors = [
            torch.from_numpy(request.get_output_tensor(i).data.copy()) for i in range(len(request.model_outputs))
        ]
        return tensors if len(tensors) > 1 else tensors[0]

    return call


def _architecture(model: nn.Module) -> object:
    """What identifies a model's architecture for the autotuning cache (the weights do not matter)."""
    config = getattr(model, "config", None)
    if config is not None:
        return config
    return hashlib.sha1(repr(model).encode()).hexdigest()


def _autotune_key(
    model: nn.Module,
    precision: str,
    input_size: Sequence[int],
    threads: int | None,
    device: torch.device,
) -> str:
    versions = [torch.__version__]
    for name in ("onnxruntime", "openvino"):
        with contextlib.suppress(ImportError):
            versions.append(f"{name} {__import__(name).__version__}")
    blob = json.dumps(
        [
            _architecture(model),
            getattr(model, "form", None),
            list(input_size),
            precision,
            threads,
            str(device),
            cpu_name(),
            sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni"}),
            versions,
        ],
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()


def _autotune_file() -> Path:
    return cache_dir() / "autotune.json"


def _build(
    backend: str,
    deployed: nn.Module,
    precision: str,
    input_size: tuple[int, ...],
    threads: int | None,
    device: torch.device,
) -> tuple[Callable, dict[str, Any]]:
    """The backend's call, and what the runner should record of how it was built."""
    if backend in ("torch", "torch-compile"):
        return _torch_call(deployed, precision, device, threads, compile_model=backend == "torch-compile"), {}
    if backend in ("triton", "triton-compile"):
        if device.type != "cuda":
            raise ValueError(f"backend {backend!r} runs the fused block kernel on CUDA devices; use device='cuda'")
        require("triton")

        dtype = TORCH_DTYPES[precision]
        # Eager, the stages left to cuDNN run fastest in the concat form; compiled, in the split form.
        form = "split" if backend == "triton-compile" else "concat"
        # The choice is timed eagerly; torch.compile then speeds up the unfused stages too. On an H200
        # a stage fused at 1.05x eager lost 7-9% compiled (T2), ones at 1.4-1.7x still won (T0).
        margin = 1.25 if backend == "triton-compile" else 1.0
        stages, timings = choose_fused_stages(deployed, input_size, device, dtype, unfused_form=form, margin=margin)
        fused = fuse_blocks(copy.deepcopy(deployed), stages, unfused_form=form)
        call = _torch_call(fused, precision, device, threads, compile_model=backend == "triton-compile")
        return call, {"fused_stages": stages, "stage_timings": timings}
    if device.type != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU here; use backend='torch' for {device}")
    if backend in ("executorch", "litert"):
        if precision != "fp32":
            raise UnsupportedPrecisionError(
                f"{backend} runners are built in fp32; for INT8 export with fasternet.export(..., "
                f"format={backend!r}, int8=True, calibration=...) and run the file"
            )
        directory = Path(tempfile.mkdtemp(prefix=f"fasternet-{backend}-"))
        path = export(deployed, directory / "model", format=backend, input_size=input_size)
        return _edge_call(path, backend, threads, input_size), {"file": str(path)}
    if backend == "onnxruntime":
        return _onnxruntime_call(deployed, precision, input_size, threads, None), {}
    if backend == "openvino":
        return _openvino_call(deployed, precision, input_size, threads, None), {}
    raise ValueError(f"unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")


_ENGINE_MODULES = {
    "onnxruntime": ("onnxruntime",),
    "openvino": ("openvino",),
    "executorch": ("executorch",),
    "litert": ("litert_torch", "ai_edge_litert"),
}


def _installed(backend: str) -> bool:
    """Whether the engine behind ``backend`` imports (torch always does)."""
    try:
        for module in _ENGINE_MODULES.get(backend, ()):
            require(module)
    except ImportError:
        return False
    return True


def _edge_call(path: Path, backend: str, threads: int | None, input_size: Sequence[int] | None) -> Callable:
    """A ``.pte`` in ExecuTorch (XNNPACK) or a ``.tflite`` in LiteRT: float32 NCHW in, torch tensors out."""
    if backend == "executorch":
        portable = require("executorch.extension.pybindings.portable_lib")
        if threads is not None:
            portable._unsafe_reset_threadpool(threads)  # XNNPACK's thread pool is process-wide
        run = edge.executorch_method(path)
    else:
        run = edge.litert_interpreter(path, threads)

    def call(x: torch.Tensor):
        if input_size is not None and tuple(x.shape) != tuple(input_size):
            raise ValueError(f"{path.name} takes inputs of shape {tuple(input_size)}, not {tuple(x.shape)}")
        outputs = run(x.detach().float().cpu())
        return outputs if len(outputs) > 1 else outputs[0]

    return call


def runner(
    model: nn.Module | str | os.PathLike,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    input_size: Sequence[int] = (1, 3, 224, 224),
    threads: int | None = None,
    device: str | torch.device = "cpu",
) -> Runner:
    """A callable that runs ``model`` on ``backend`` in ``precision`` (see the module docstring).

    ``model`` is a FasterNet, any model built with ``fasternet.layers`` (deployed here), a
    deployed one, a checkpoint, or an exported ``.onnx`` / OpenVINO ``.xml`` file (run by its own
    runtime). fp32 runners match eager PyTorch to 1e-4 relative; bf16 ones to about 2e-2 (bf16
    keeps 8 bits of mantissa). The fused Triton backends take FasterNets only.
    """
    device = torch.device(device)
    input_size = tuple(int(v) for v in input_size)
    _check_precision(precision, device)
    edge_file = isinstance(model, (str, os.PathLike)) and Path(model).suffix in EDGE_SUFFIXES
    if (precision == "int8" and not edge_file) or isinstance(model, QuantizedModel):
        if isinstance(model, nn.Module):
            raise ValueError(
                "INT8 needs calibration: q = fasternet.quantize(model, calibration_images); "
                "fasternet.runner(q, precision='int8')"
            )
        quantized = model if isinstance(model, QuantizedModel) else load_quantized(model)
        if precision != "int8":
            raise ValueError(f"{quantized.path.name} is an INT8 model: run it with precision='int8'")
        if backend not in ("auto", quantized.backend):
            raise ValueError(f"{quantized.path.name} runs with {quantized.backend}, not {backend!r}")
        run = _runner_for_file(quantized.path, quantized.backend, "int8", quantized.input_size, threads, device)
        run.metadata = quantized.metadata
        return run
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix in (".onnx", ".xml", *EDGE_SUFFIXES):
        return _runner_for_file(Path(model), backend, precision, input_size, threads, device)
    if isinstance(model, (str, os.PathLike)):
        model = create_model(model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"runner() takes a model, a checkpoint or an exported file, not {type(model).__name__}")
    if backend.startswith("triton") and not isinstance(model, (FasterNet, DeployedFasterNet)):
        raise ValueError(f"backend {backend!r} fuses FasterNet's stages; run other models with backend='torch'")
    if backend == "auto":
        backend = _auto_backend(model, precision, input_size, threads, device)
    elif backend in BACKENDS and not _installed(backend):
        require(backend)
    deployed = _deployed_for(model, backend)
    call, metadata = _build(backend, deployed, precision, input_size, threads, device)
    run = Runner(backend, precision, input_size, threads, device, call, getattr(deployed, "features_only", False))
    run.metadata = metadata  # triton: which stages run the fused kernel, and the timings that chose them
    return run


def _deployed_for(model: nn.Module, backend: str) -> nn.Module:
    if is_deployed(model):
        return model
    return deploy(model, form=PREFERRED_FORM.get(backend, "split"))


def _runner_for_file(
    path: Path, backend: str, precision: str, input_size: tuple[int, ...], threads: int | None, device: torch.device
) -> Runner:
    if not path.exists():
        raise FileNotFoundError(f"exported model not found: {path}")
    if path.suffix in EDGE_SUFFIXES:
        natural = EDGE_SUFFIXES[path.suffix]
        if backend not in ("auto", natural):
            raise ValueError(f"{path.name} runs with {natural}, not {backend!r}")
        call = _edge_call(path, natural, threads, None)
        return Runner(natural, precision, input_size, threads, device, call, features_only=False)
    natural = "onnxruntime" if path.suffix == ".onnx" else "openvino"
    backend = natural if backend == "auto" else backend
    if backend == "onnxruntime" and path.suffix == ".onnx":
        call = _onnxruntime_call(None, precision, input_size, threads, path)
    elif backend == "openvino":
        call = _openvino_call(None, precision, input_size, threads, path)
    else:
        raise ValueError(f"{path.name} runs with onnxruntime or openvino, not {backend!r}")
    return Runner(backend, precision, input_size, threads, device, call, features_only=False)


def _auto_backend(
    model: nn.Module,
    precision: str,
    input_size: tuple[int, ...],
    threads: int | None,
    device: torch.device,
) -> str:
    if device.type != "cpu":
        return "torch"
    key = _autotune_key(model, precision, input_size, threads, device)
    cache_file = _autotune_file()
    cache: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(cache_file.read_text())
    if key in cache and _installed(cache[key]["backend"]):
        return cache[key]["backend"]
    x = torch.randn(input_size)
    timings = {}
    for backend in AUTO_CANDIDATES:
        if not _installed(backend):
            continue
        try:
            call, _ = _build(backend, _deployed_for(model, backend), precision, input_size, threads, device)
        except (UnsupportedPrecisionError, ExportError):
            continue  # this engine cannot run this model here
        timings[backend] = median_seconds(lambda call=call: call(x))
    best = min(timings, key=timings.get)
    cache[key] = {"backend": best, "seconds": timings, "input_size": list(input_size), "precision": precision}
    atomic_write(cache_file, json.dumps(cache, indent=1))
    return best


def int8_runner(
    model: FasterNet | DeployedFasterNet,
    *,
    calibration: Any = None,
    quantized: str | os.PathLike | None = None,
    backend: str = "openvino",
    samples: int = 300,
    preset: str = "accuracy",
    transform: EvalTransform | None = None,
    input_size: Sequence[int] | None = None,
    threads: int | None = None,
) -> Runner:
    """An INT8 runner for ``model``: from an existing quantized file (checked to come from this
    model) or quantized now on ``calibration`` images with ``transform`` (the model's own by default)."""
    if quantized is not None:
        result = load_quantized(quantized, expect=model)
    elif calibration is not None:
        result = quantize(
            model,
            calibration,
            backend=backend,
            samples=samples,
            preset=preset,
            transform=transform,
            input_size=tuple(input_size) if input_size is not None else None,
        )
    else:
        raise ValueError("INT8 needs --calibration DIR (images to calibrate on) or --quantized FILE")
    return runner(result, precision="int8", threads=threads)
