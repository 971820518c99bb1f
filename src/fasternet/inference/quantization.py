"""INT8 post-training quantization with the runtimes' own tools: NNCF (OpenVINO), onnxruntime.

The deployed graph is quantized, not the training one: BN is folded and the partial
convolution has no concat, so no quantize/dequantize pair has to wrap a copy of the untouched
channels. Calibration runs the model's own evaluation transform over real images. The written
file (OpenVINO IR or ONNX QDQ) records which model it came from (configuration and a fingerprint
of the weights) and the package format version; :func:`load_quantized` refuses a file from
another model or version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from fasternet._utils import require
from fasternet.inference.calibration import QuantizationError, calibration_images
from fasternet.inference.deployed import DeployedFasterNet, deploy
from fasternet.inference.exporters import export
from fasternet.models import EvalTransform, FasterNet

__all__ = ["QUANT_BACKENDS", "QuantizationError", "QuantizedModel", "fingerprint", "load_quantized", "quantize"]

QUANT_BACKENDS = ("openvino", "onnxruntime")
PRESETS = ("accuracy", "performance")
FORMAT_VERSION = "1"


@dataclasses.dataclass(frozen=True)
class QuantizedModel:
    """An INT8 model file and what it was made from; ``fasternet.runner(q, precision="int8")`` runs it."""

    path: Path
    backend: str
    metadata: dict[str, Any]

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(self.metadata["input_size"])


def fingerprint(model: FasterNet | DeployedFasterNet) -> str:
    """A short hash of the weights: which trained model a quantized file was made from."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _ignored_nodes(nodes: Iterable[tuple[str, str]], keep_fp32: tuple[str, ...]) -> list[str]:
    """Names of the graph nodes of the stem and/or the head, by the module path each node records."""
    wanted = []
    for name, scope in nodes:
        if "stem" in keep_fp32 and "stem" in scope:
            wanted.append(name)
        if "head" in keep_fp32 and any(part in scope for part in ("conv_head", "classifier")):
            wanted.append(name)
    return wanted


def _onnx_scope(node) -> str:
    """The PyTorch module path the exporter wrote into an ONNX node's metadata."""
    props = {p.key: p.value for p in node.metadata_props}
    return props.get("pkg.torch.onnx.name_scopes", props.get("namespace", node.name))


def quantize(
    model: FasterNet | DeployedFasterNet,
    calibration: Any,
    *,
    backend: str = "openvino",
    samples: int = 300,
    preset: str = "accuracy",
    keep_fp32: tuple[str, ...] = (),
    input_size: tuple[int, ...] | None = None,
    output: str | os.PathLike | None = None,
    transform: EvalTransform | None = None,
) -> QuantizedModel:
    """Quantize ``model`` to INT8 with ``backend``'s own tool, calibrated on real images.

    ``calibration`` is an image folder path (evaluated with the model's transform), a dataset of
    image tensors (or (image, label) pairs), or a data loader. ``preset="accuracy"`` uses
    asymmetric activations (NNCF's MIXED); "performance" symmetric ones. ``keep_fp32`` may name
    "stem" and/or "head" to leave them unquantized. The file is written to ``output`` (an
    ``.xml`` for OpenVINO, ``.onnx`` for onnxruntime; a temporary one by default).
    """
    if backend not in QUANT_BACKENDS:
        raise ValueError(f"unknown quantization backend {backend!r}; choose one of {', '.join(QUANT_BACKENDS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = set(keep_fp32) - {"stem", "head"}
    if unknown:
        raise ValueError(f"keep_fp32 takes 'stem' and/or 'head', not {sorted(unknown)}")
    transform = transform or getattr(model, "eval_transform", None) or EvalTransform()
    size = transform.image_size
    input_size = tuple(input_size or (1, model.in_chans, size, size))
    # The "dense" form has no channel slicing: sliced INT8 tensors cost OpenVINO reference-path
    # copies, more than the zero-weight MACs (benchmarks/results/int8_forms.txt).
    deployed = deploy(model, form="dense") if isinstance(model, FasterNet) else model
    if deployed.features_only:
        raise ValueError("quantize() takes a classifier; a features_only model has no accuracy to keep")
    images = calibration_images(calibration, input_size, samples, transform)
    suffix = ".xml" if backend == "openvino" else ".onnx"
    path = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="fasternet-int8-")) / f"model{suffix}"
    if path.suffix != suffix:
        raise ValueError(f"a {backend} INT8 model is written as {suffix}, not {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "fasternet_int8_format": FORMAT_VERSION,
        "config": deployed.config,
        "fingerprint": fingerprint(model),
        "input_size": list(input_size),
        "preset": preset,
        "keep_fp32": list(keep_fp32),
        "calibration_samples": len(images),
        "class_names": deployed.class_names,
        "settings": {
            "image_size": input_size[-1],
            "crop_pct": transform.crop_pct,
            "mean": list(transform.mean),
            "std": list(transform.std),
        },
    }
    if backend == "openvino":
        _quantize_openvino(deployed, images, input_size, preset, keep_fp32, path, metadata)
    else:
        _quantize_onnxruntime(deployed, images, input_size, preset, keep_fp32, path, metadata)
    return QuantizedModel(path, backend, metadata)


def _quantize_openvino(deployed, images, input_size, preset, keep_fp32, path, metadata) -> None:
    ov = require("openvino")
    nncf = require("nncf")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shape = ov.PartialShape([-1, *input_size[1:]])  # any batch: calibration feeds one image at a time
        source = ov.convert_model(deployed, example_input=torch.zeros(input_size), input=[shape])
    names = [op.get_friendly_name() for op in source.get_ordered_ops()]
    ignored = _ignored_nodes(((name, name) for name in names), keep_fp32)
    dataset = nncf.Dataset(images, lambda x: x.numpy())
    quantized = nncf.quantize(
        source,
        dataset,
        preset=nncf.QuantizationPreset.MIXED if preset == "accuracy" else nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(images),
        ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
    )
    quantized.set_rt_info(json.dumps(metadata), ["fasternet", "int8"])
    ov.save_model(quantized, str(path), compress_to_fp16=False)


def _quantize_onnxruntime(deployed, images, input_size, preset, keep_fp32, path, metadata) -> None:
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export(deployed, Path(tmp) / "fp32.onnx", format="onnx", input_size=input_size, dynamic_batch=True)
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        input_name = graph.graph.input[0].name
        scopes = {node.name: _onnx_scope(node) for node in onnx.load(str(fp32)).graph.node}
        ignored = _ignored_nodes(((n.name, scopes.get(n.name, n.name)) for n in graph.graph.node), keep_fp32)
        if keep_fp32 and not ignored:
            raise QuantizationError(f"could not find the {'/'.join(keep_fp32)} nodes in the exported graph")

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(images)

            def get_next(self):
                x = next(self.items, None)
                return None if x is None else {input_name: x.numpy()}

        quantize_static(
            str(prepared),
            str(path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8 if preset == "accuracy" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=ignored or None,
        )
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "fasternet_int8", json.dumps(metadata)
    onnx.save(model, str(path))


def load_quantized(path: str | os.PathLike, *, expect: FasterNet | DeployedFasterNet | None = None) -> QuantizedModel:
    """Read a quantized file's record; refuse one from another package version or (with ``expect``) model."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"quantized model not found: {path}")
    if path.suffix == ".xml":
        ov = require("openvino")
        model = ov.Core().read_model(str(path))
        try:
            raw = model.get_rt_info(["fasternet", "int8"]).astype(str)
        except Exception:
            raw = None
        backend = "openvino"
    elif path.suffix == ".onnx":
        onnx = require("onnx")
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        raw, backend = props.get("fasternet_int8"), "onnxruntime"
    else:
        raise QuantizationError(f"{path.name}: a quantized model is an OpenVINO .xml or an ONNX .onnx file")
    if not raw:
        raise QuantizationError(f"{path} was not written by fasternet.quantize (no fasternet record in it)")
    metadata = json.loads(raw)
    if metadata.get("fasternet_int8_format") != FORMAT_VERSION:
        raise QuantizationError(
            f"{path} was written by another fasternet version (format {metadata.get('fasternet_int8_format')}, "
            f"this one reads {FORMAT_VERSION}); quantize the model again"
        )
    if expect is not None and metadata["fingerprint"] != fingerprint(expect):
        raise QuantizationError(
            f"{path} was quantized from another model (weights {metadata['fingerprint']}, "
            f"this one {fingerprint(expect)}); quantize this model again"
        )
    return QuantizedModel(path, backend, metadata)
