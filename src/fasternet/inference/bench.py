"""Speed measurement: models on each runner, the GEMM peak, and the paper's operator table.

Everything timed in one run is interleaved: each round times every configuration for a few
iterations in turn, so slow drifts of a shared machine (turbo, neighbours) hit all of them alike.
Rows report medians and the spread (10th-90th percentile) of all timed iterations.

Achieved GFLOP/s counts 2 FLOPs per multiply-accumulate, like the GEMM peak it is compared to
(``2 * n^3`` for an ``n^3`` matrix product, the best of torch, onnxruntime and OpenVINO measured
in the same run). The paper counts one FLOP per MAC; the operator table reports in its unit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fasternet._utils import machine_description, require
from fasternet.builder import create_model
from fasternet.inference.deployed import deploy
from fasternet.inference.profiler import profile
from fasternet.inference.runners import UnsupportedPrecisionError, int8_runner, openvino_cpu_config, runner
from fasternet.inference.timing import interleaved
from fasternet.models import EvalTransform, FasterNet, get_variant

__all__ = [
    "BASELINES",
    "PRESETS",
    "BenchReport",
    "BenchRequest",
    "BenchRow",
    "Config",
    "benchmark",
    "gemm_peak",
    "operator_table",
    "run_benchmark",
]

BASELINES = ("eager", "onnxruntime-official", "openvino-official")


@dataclasses.dataclass(frozen=True)
class Config:
    model: str
    backend: str  # a runner backend, or a baseline from BASELINES
    precision: str = "fp32"
    batch: int = 1
    threads: int | None = None
    image_size: int = 224
    device: str = "cpu"


@dataclasses.dataclass
class BenchRow:
    config: Config
    params: int
    macs: int  # per image
    times: list[float]  # seconds per batch

    @property
    def latency_ms(self) -> float:
        return 1e3 * statistics.median(self.times)

    @property
    def spread_ms(self) -> tuple[float, float]:
        low, high = np.percentile(self.times, [10, 90])
        return 1e3 * float(low), 1e3 * float(high)

    @property
    def images_per_s(self) -> float:
        return self.config.batch / statistics.median(self.times)

    @property
    def gflops(self) -> float:
        return 2 * self.macs * self.images_per_s / 1e9

    def to_dict(self, peak: float | None = None) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.config),
            "params": self.params,
            "macs": self.macs,
            "latency_ms": self.latency_ms,
            "p10_ms": self.spread_ms[0],
            "p90_ms": self.spread_ms[1],
            "images_per_s": self.images_per_s,
            "gflops": self.gflops,
            "peak_share": self.gflops / peak if peak else None,
        }


# --------------------------------------------------------------------------------------------
# GEMM peak


def _gemm_calls(n: int, threads: int | None, precision: str) -> dict[str, Callable[[], Any]]:
    """n^3 matrix products in each installed engine."""
    calls: dict[str, Callable[[], Any]] = {}
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)

    def torch_matmul():
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return torch.mm(a, b)

    calls["torch"] = torch_matmul
    with contextlib.suppress(ImportError):
        import onnx
        import onnxruntime as ort

        if precision == "fp32":
            graph = onnx.helper.make_graph(
                [onnx.helper.make_node("MatMul", ["a", "b"], ["c"])],
                "gemm",
                [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [n, n])],
                [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [n, n])],
                [onnx.numpy_helper.from_array(b.numpy(), "b")],
            )
            options = ort.SessionOptions()
            if threads is not None:
                options.intra_op_num_threads = threads
            session = ort.InferenceSession(
                onnx.helper.make_model(graph).SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            a_np = a.numpy()
            calls["onnxruntime"] = lambda: session.run(None, {"a": a_np})
    with contextlib.suppress(ImportError):
        import openvino as ov
        import openvino.opset13 as ops

        param = ops.parameter([n, n], np.float32)
        model = ov.Model([ops.matmul(param, ops.constant(b.float().numpy()), False, False)], [param])
        request = ov.Core().compile_model(model, "CPU", openvino_cpu_config(precision, threads)).create_infer_request()
        a32 = a.float().numpy()
        calls["openvino"] = lambda: request.infer({0: a32}, share_inputs=True)
    return calls


def gemm_peak(
    threads: int | None = None, precision: str = "fp32", sizes: Sequence[int] = (1024, 2048), rounds: int = 3
) -> dict[str, float]:
    """GFLOP/s (2 n^3 per product) of n^3 matrix products in each engine, the best size per engine.

    The best engine is the peak that model speed is judged against. 1024^3 alone understates it on
    CPUs with AMX or large caches (oneDNN's convolutions beat it), hence the larger size too.
    """
    best: dict[str, float] = {}
    for n in sizes:
        times = interleaved(_gemm_calls(n, threads, precision), rounds=rounds, per_round=3, warmup=2)
        for engine, t in times.items():
            best[engine] = max(best.get(engine, 0.0), 2 * n**3 / statistics.median(t) / 1e9)
    return best


# --------------------------------------------------------------------------------------------
# Models


def _baseline_call(model: FasterNet, config: Config) -> Callable[[torch.Tensor], Any]:
    """What a user gets without this package: the official computation (concat PConv), BN folded."""
    official = deploy(model, form="concat")
    size = (config.batch, 3, config.image_size, config.image_size)
    if config.backend == "eager":
        threads = config.threads

        def call(x):
            if threads is not None and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            with torch.inference_mode():
                return official(x)

        return call
    backend = config.backend.removesuffix("-official")
    return runner(official, backend=backend, precision=config.precision, input_size=size, threads=config.threads)


def _int8_call(
    model: FasterNet, config: Config, input_size: tuple[int, ...], calibration: str | None, samples: int
) -> Callable[[torch.Tensor], Any]:
    if config.backend not in ("openvino", "onnxruntime"):
        raise ValueError(f"int8 runs with openvino or onnxruntime, not {config.backend}")
    return int8_runner(
        model,
        calibration=calibration,
        backend=config.backend,
        samples=samples,
        transform=EvalTransform(config.image_size),
        input_size=input_size,
        threads=config.threads,
    )


def run_benchmark(
    configs: Sequence[Config],
    *,
    rounds: int = 5,
    per_round: int = 10,
    warmup: int = 5,
    progress: Callable[[str], None] = lambda message: None,
    calibration: str | None = None,
    calibration_samples: int = 64,
) -> tuple[list[BenchRow], list[str]]:
    """Build every configuration, time them interleaved; returns rows and the skipped ones' reasons."""
    models: dict[tuple[str, int], FasterNet] = {}
    calls: dict[Config, Callable[[], Any]] = {}
    skipped: list[str] = []
    for config in configs:
        key = (config.model, config.image_size)
        if key not in models:
            torch.manual_seed(0)
            models[key] = create_model(config.model).eval()
        model = models[key]
        x = torch.randn(config.batch, 3, config.image_size, config.image_size)
        if config.device != "cpu":
            x = x.to(config.device)
        progress(f"preparing {config.model} {config.backend} {config.precision} batch {config.batch}")
        try:
            if config.backend in BASELINES:
                call = _baseline_call(model, config)
            elif config.precision == "int8":
                call = _int8_call(model, config, tuple(x.shape), calibration, calibration_samples)
            else:
                call = runner(
                    model,
                    backend=config.backend,
                    precision=config.precision,
                    input_size=tuple(x.shape),
                    threads=config.threads,
                    device=config.device,
                )
        except (UnsupportedPrecisionError, ImportError, ValueError) as error:
            skipped.append(f"{config.model} {config.backend} {config.precision}: {error}")
            continue
        calls[config] = (lambda c, t: lambda: c(t))(call, x)
    progress(f"timing {len(calls)} configurations, {rounds} interleaved rounds")
    times = interleaved(calls, rounds=rounds, per_round=per_round, warmup=warmup)
    rows = []
    for config, t in times.items():
        with torch.device("meta"):
            meta = create_model(config.model)
        report = profile(meta, (1, 3, config.image_size, config.image_size))
        rows.append(BenchRow(config, report.params, report.macs, t))
    return rows, skipped


def format_rows(rows: Sequence[BenchRow], peaks: dict[str, float]) -> str:
    header = (
        f"{'model':<13} {'backend':<21} {'prec':<5} {'batch':>5} {'thr':>3} {'GMACs':>6} {'ms (median)':>11} "
        f"{'p10-p90 ms':>15} {'img/s':>9} {'GFLOP/s':>8} {'% peak':>7}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        c = row.config
        peak = peaks.get(c.precision)
        share = f"{100 * row.gflops / peak:6.1f}%" if peak else "      -"
        low, high = row.spread_ms
        lines.append(
            f"{c.model:<13} {c.backend:<21} {c.precision:<5} {c.batch:>5} {c.threads or '-':>3} "
            f"{row.macs / 1e9:>6.3f} {row.latency_ms:>11.3f} {f'{low:.2f}-{high:.2f}':>15} "
            f"{row.images_per_s:>9.1f} {row.gflops:>8.1f} {share}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The paper's Table 1: operators


class _PartialConvOp(nn.Module):
    """PConv as the paper benchmarks it: a 3x3 conv over c/4 channels, the rest untouched."""

    def __init__(self, channels: int, ratio: int = 4) -> None:
        super().__init__()
        self.dim = channels // ratio
        self.conv = nn.Conv2d(self.dim, self.dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.conv(x[:, : self.dim]), x[:, self.dim :]), dim=1)


OPERATORS: dict[str, Callable[[int], nn.Module]] = {
    "conv3x3": lambda c: nn.Conv2d(c, c, 3, padding=1, bias=False),
    "gconv_g16": lambda c: nn.Conv2d(c, c, 3, padding=1, groups=16, bias=False),
    "dwconv": lambda c: nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
    "pconv": lambda c: _PartialConvOp(c),
}
OPERATOR_SHAPES = ((96, 56), (192, 28), (384, 14), (768, 7))


def operator_macs(name: str, channels: int, size: int, layers: int = 10) -> int:
    """MACs of ``layers`` stacked operators: h*w*k^2*c^2 (conv), /16 (GConv g16), /c (DWConv), c_p^2 (PConv)."""
    per_layer = {
        "conv3x3": size * size * 9 * channels * channels,
        "gconv_g16": size * size * 9 * channels * channels // 16,
        "dwconv": size * size * 9 * channels,
        "pconv": size * size * 9 * (channels // 4) ** 2,
    }[name]
    return layers * per_layer


def operator_table(
    *,
    threads: int | None = None,
    rounds: int = 5,
    per_round: int = 10,
    backend: str = "torch",
    device: str = "cpu",
    batch: int = 1,
) -> list[dict[str, Any]]:
    """Ten stacked layers of each operator on each feature-map size; latency and achieved GMAC/s.

    The paper measures batch 1 on CPUs and ARM, and a large batch on its GPU (its Table 1).
    """
    calls = {}
    for name, build in OPERATORS.items():
        for channels, size in OPERATOR_SHAPES:
            stack = nn.Sequential(*(build(channels) for _ in range(10))).eval().to(device)
            x = torch.randn(batch, channels, size, size, device=device)
            if backend == "torch":

                def call(stack=stack, x=x):
                    if threads is not None and torch.get_num_threads() != threads:
                        torch.set_num_threads(threads)
                    with torch.inference_mode():
                        return stack(x)
            else:
                raise ValueError(f"operator table backend {backend!r} is not supported; use torch")
            calls[(name, channels, size)] = call
    times = interleaved(calls, rounds=rounds, per_round=per_round, warmup=3)
    rows = []
    for (name, channels, size), t in times.items():
        latency = statistics.median(t)
        macs = operator_macs(name, channels, size) * batch
        rows.append(
            {
                "operator": name,
                "channels": channels,
                "size": size,
                "mmacs": macs / 1e6,
                "latency_ms": 1e3 * latency,
                "gmacs_per_s": macs / latency / 1e9,
            }
        )
    return rows


# The paper's Table 1 (Chen et al., CVPR 2023): achieved "GFLOPs/s" (one FLOP per MAC) of ten
# stacked layers averaged over the four feature-map sizes; i9-9900X CPU, RTX 2080Ti GPU, Cortex-A72.
PAPER_OPERATOR_FLOPS = {
    "conv3x3": {"gpu": 10151, "cpu": 71.89, "arm": 3.95},
    "gconv_g16": {"gpu": 1833, "cpu": 25.93, "arm": 1.92},
    "dwconv": {"gpu": 313, "cpu": 6.42, "arm": 0.12},
    "pconv": {"gpu": 3274, "cpu": 39.91, "arm": 2.73},
}


def format_operator_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'operator':<10} {'feature map':<12} {'MMACs':>8} {'ms':>9} {'GMAC/s':>8}   "
        f"{'paper CPU':>9} {'paper GPU':>9} {'paper ARM':>9}"
    )
    lines = [header, "-" * len(header)]
    for name in OPERATORS:
        mine = [r for r in rows if r["operator"] == name]
        for r in mine:
            shape = f"{r['channels']}x{r['size']}x{r['size']}"
            lines.append(f"{name:<10} {shape:<12} {r['mmacs']:>8.2f} {r['latency_ms']:>9.3f} {r['gmacs_per_s']:>8.2f}")
        total_macs = sum(r["mmacs"] for r in mine) / 1e3
        total_seconds = sum(r["latency_ms"] for r in mine) / 1e3
        paper = PAPER_OPERATOR_FLOPS[name]
        lines.append(
            f"{name:<10} {'mean':<12} {'':>8} {'':>9} {total_macs / total_seconds:>8.2f}   "
            f"{paper['cpu']:>9.2f} {paper['gpu']:>9.0f} {paper['arm']:>9.2f}"
        )
    return "\n".join(lines)


# The paper's Table 3 peers as timm names them, and timm's own FasterNet port.
PEERS = (
    "mobilevit_xxs",
    "mobilenetv2_100",
    "efficientnet_b0",
    "resnet50",
    "convnext_tiny",
    "swin_tiny_patch4_window7_224",
    "swin_base_patch4_window7_224",
    "fasternet_t0",
    "fasternet_s",
)


def peer_rows(
    batches: Sequence[int],
    threads: int | None,
    image_size: int,
    device: str,
    rounds: int,
    precisions: Sequence[str] = ("fp32",),
) -> list[BenchRow] | str:
    """timm's models (the paper's peers and timm's own FasterNet port) through the same protocol.

    On CPUs: eager fp32. On GPUs: eager with autocast in each precision, and timm's FasterNets
    under torch.compile too (what the fused kernel is measured against).
    """
    try:
        import timm
    except Exception as error:  # timm needs torchvision, which a CPU-only torch may not have
        return f"timm is not importable here ({type(error).__name__}: {str(error).splitlines()[0][:80]}); skipped"
    from torch.utils.flop_counter import FlopCounterMode

    cuda = device.startswith("cuda")
    dtypes = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    calls, info = {}, {}
    for name in PEERS:
        model = timm.create_model(name, pretrained=False).eval().to(device)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.randn(1, 3, image_size, image_size, device=device))
        stats = (sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2)
        variants = [("timm-eager", model)]
        if cuda and name.startswith("fasternet"):
            variants.append(("timm-compile", torch.compile(model)))
        for batch in batches:
            x = torch.randn(batch, 3, image_size, image_size, device=device)
            for precision in precisions if cuda else ("fp32",):
                dtype = dtypes[precision]
                for backend, runnable in variants:
                    config = Config(f"timm:{name}", backend, precision, batch, threads, image_size, device)

                    def call(runnable=runnable, x=x, dtype=dtype):
                        if threads is not None and torch.get_num_threads() != threads:
                            torch.set_num_threads(threads)
                        with (
                            torch.inference_mode(),
                            torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None),
                        ):
                            return runnable(x)

                    calls[config] = call
                    info[config] = stats
    times = interleaved(calls, rounds=rounds, per_round=10, warmup=3)
    return [BenchRow(config, *info[config], t) for config, t in times.items()]


def plot(rows: Sequence[BenchRow], path: str) -> None:
    """Latency against MACs per model and backend, like the paper's Figure 1."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot")
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_backend: dict[str, list[BenchRow]] = {}
    for row in rows:
        by_backend.setdefault(f"{row.config.backend} {row.config.precision}", []).append(row)
    for label, group in sorted(by_backend.items()):
        group = sorted(group, key=lambda r: r.macs)
        macs = [r.macs / 1e9 for r in group]
        left.plot(macs, [r.latency_ms for r in group], marker="o", label=label)
        right.plot(macs, [r.gflops for r in group], marker="o", label=label)
    for axis, ylabel in ((left, "latency per batch (ms, median)"), (right, "achieved GFLOP/s")):
        axis.set_xlabel("GMACs per image")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    left.legend(fontsize=7)
    batch = sorted({r.config.batch for r in rows})
    figure.suptitle(f"{machine_description()} - batch {', '.join(map(str, batch))}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --------------------------------------------------------------------------------------------
# A whole benchmark: what `fasternet bench` runs

# The paper's protocols (Table 3): CPU latency at one thread and batch 1; GPU throughput at batch 32.
PRESETS: dict[str, dict[str, Any]] = {
    "paper-cpu": {"threads": 1, "batch_sizes": (1,), "precisions": ("fp32",)},
    "paper-gpu": {"device": "cuda", "batch_sizes": (32,), "backends": ("torch",)},
}


@dataclasses.dataclass(frozen=True)
class BenchRequest:
    """What to time: variants x backends x precisions x batch sizes, and how."""

    models: tuple[str, ...] = ("fasternet_t0",)
    backends: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
    precisions: tuple[str, ...] = ("fp32", "bf16")
    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None
    image_size: int = 224
    device: str = "cpu"
    baselines: bool = True  # the official computation: eager and exported as-is (fp32, CPU)
    rounds: int = 5
    calibration: str | None = None  # int8: images to calibrate on
    samples: int = 64
    peers: bool = False  # timm's models, when timm imports

    def with_preset(self, preset: str | None) -> BenchRequest:
        """The request with a paper protocol's settings (``paper-cpu``, ``paper-gpu``) applied."""
        if preset is None:
            return self
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(self, **PRESETS[preset])

    def configs(self) -> list[Config]:
        for name in self.models:
            get_variant(name)
        if any(b < 1 for b in self.batch_sizes) or self.image_size < 32 or self.rounds < 1:
            raise ValueError("batch sizes and rounds must be >= 1 and the image size >= 32")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is available here")
        baselines = list(BASELINES) if self.baselines and self.device == "cpu" else []
        return [
            Config(name, backend, precision, batch, self.threads, self.image_size, self.device)
            for name in self.models
            for batch in self.batch_sizes
            for precision in self.precisions
            for backend in [*self.backends, *(baselines if precision == "fp32" else [])]
        ]


@dataclasses.dataclass
class BenchReport:
    """Timed rows, the GEMM peak of each precision measured in the same run, and what was skipped."""

    machine: str
    rows: list[BenchRow]
    skipped: list[str]
    gemm_peaks: dict[str, dict[str, float]]  # precision -> engine -> GFLOP/s
    peers: list[BenchRow] | str | None = None  # rows, or why timm's models were not timed

    @property
    def peaks(self) -> dict[str, float]:
        """The best engine's GEMM GFLOP/s per precision: what model speed is judged against."""
        return {precision: max(engines.values()) for precision, engines in self.gemm_peaks.items()}

    def to_dict(self) -> dict[str, Any]:
        peers = self.peers if self.peers is None or isinstance(self.peers, str) else [r.to_dict() for r in self.peers]
        return {
            "machine": self.machine,
            "gemm_peak_gflops": self.gemm_peaks,
            "rows": [r.to_dict(self.peaks.get(r.config.precision)) for r in self.rows],
            "skipped": self.skipped,
            "peers": peers,
        }

    def format(self) -> str:
        lines = [f"# {self.machine}"]
        for precision, engines in self.gemm_peaks.items():
            detail = ", ".join(f"{k} {v:.0f}" for k, v in engines.items())
            lines.append(
                f"# GEMM peak {precision} (best of 1024^3, 2048^3; GFLOP/s): {detail}; best {self.peaks[precision]:.0f}"
            )
        lines.append(format_rows(self.rows, self.peaks))
        lines += [f"# skipped: {reason}" for reason in self.skipped]
        if isinstance(self.peers, str):
            lines.append(f"# peers: {self.peers}")
        elif self.peers:
            lines.append(format_rows(self.peers, self.peaks))
        return "\n".join(lines)


def benchmark(request: BenchRequest, *, progress: Callable[[str], None] = lambda message: None) -> BenchReport:
    """Time every configuration of ``request`` interleaved, with the GEMM peak on CPUs."""
    rows, skipped = run_benchmark(
        request.configs(),
        rounds=request.rounds,
        progress=progress,
        calibration=request.calibration,
        calibration_samples=request.samples,
    )
    peaks: dict[str, dict[str, float]] = {}
    if request.device == "cpu":
        for precision in sorted({r.config.precision for r in rows} - {"int8"}):  # no int8 GEMM reference here
            progress(f"measuring the {precision} GEMM peak")
            peaks[precision] = gemm_peak(request.threads, precision, rounds=min(3, request.rounds))
    peers = None
    if request.peers:
        peers = peer_rows(
            request.batch_sizes, request.threads, request.image_size, request.device, request.rounds, request.precisions
        )
    return BenchReport(machine_description(request.device), rows, skipped, peaks, peers)
