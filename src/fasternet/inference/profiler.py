"""Per-layer parameters, MACs and memory access: the paper's latency = FLOPs / FLOPS, as a tool.

MACs count multiply-accumulates of convolutions and linear layers (what
``torch.utils.flop_counter`` counts, halved). Memory access counts tensor elements read and
written per layer, as the paper does: input + output + weights, and for PConv only the
convolved channels, ``h*w*2*c_p + k^2*c_p^2``, since the untouched ones need not move.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fasternet.inference.timing import synchronize
from fasternet.layers import DropPath, FasterNetBlock, PartialConv

__all__ = ["LayerProfile", "ProfileReport", "profile"]


@dataclasses.dataclass
class LayerProfile:
    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    memory_access: int  # elements read + written
    time_ms: float | None = None  # measured median, with ``measure=True``

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s (2 FLOPs per MAC) when measured."""
        return 2 * self.macs / self.time_ms / 1e6 if self.time_ms else None

    @property
    def group(self) -> str:
        """Stem, stage i (with its merging layer), outputs or head: how the table is grouped."""
        parts = self.name.split(".")
        if parts[0] == "patch_embed":
            return "stem"
        if parts[0] == "stages":
            return f"stage {parts[1]}"
        if parts[0] == "feature_norms":
            return "output norms"
        return "head"


@dataclasses.dataclass
class ProfileReport:
    input_size: tuple[int, ...]
    rows: list[LayerProfile]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def memory_access(self) -> int:
        return sum(r.memory_access for r in self.rows)

    def groups(self) -> dict[str, list[LayerProfile]]:
        out: dict[str, list[LayerProfile]] = {}
        for row in self.rows:
            out.setdefault(row.group, []).append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "params": self.params,
            "macs": self.macs,
            "memory_access": self.memory_access,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }

    @property
    def measured(self) -> bool:
        return any(r.time_ms is not None for r in self.rows)

    def table(self, *, by_stage: bool = False) -> str:
        """The report as text: layers grouped by stage with subtotals, then a totals line."""
        measured = self.measured
        header = f"{'layer':<40} {'type':<16} {'output':<18} {'params':>12} {'MMACs':>10} {'mem (K el.)':>12}"
        if measured:
            header += f" {'ms':>8} {'GFLOP/s':>8}"
        lines = [header, "-" * len(header)]

        def fmt(name: str, kind: str, shape: str, rows: list[LayerProfile]) -> str:
            macs = sum(r.macs for r in rows)
            line = (
                f"{name:<40} {kind:<16} {shape:<18} {sum(r.params for r in rows):>12,} {macs / 1e6:>10.2f} "
                f"{sum(r.memory_access for r in rows) / 1e3:>12.1f}"
            )
            if measured:
                ms = sum(r.time_ms or 0.0 for r in rows)
                line += f" {ms:>8.3f} {2 * macs / ms / 1e6 if ms else 0.0:>8.1f}"
            return line

        for group, rows in self.groups().items():
            if not by_stage:
                for r in rows:
                    lines.append(fmt(r.name, r.type, "x".join(str(d) for d in r.output_shape), [r]))
            shape = "x".join(str(d) for d in rows[-1].output_shape)
            lines.append(fmt(f"[{group}]", f"{len(rows)} layers", shape, rows))
            if not by_stage:
                lines.append("")
        lines.append("-" * len(header))
        size = "x".join(str(d) for d in self.input_size)
        lines.append(fmt("total", f"input {size}", "", self.rows))
        return "\n".join(lines)


def _numel(t: Any) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _layer_row(name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> LayerProfile:
    x = inputs[0]
    params = sum(p.numel() for p in module.parameters())
    macs = 0
    memory = _numel(x) + _numel(output) + params
    if isinstance(module, PartialConv):
        conv = module.partial_conv3
        n, _, h, w = output.shape
        macs = n * h * w * conv.out_channels * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
        memory = n * h * w * 2 * module.dim_conv + params
    elif isinstance(module, nn.Conv2d):
        macs = output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    elif isinstance(module, nn.Linear):
        macs = output.numel() * module.in_features
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        memory += sum(b.numel() for b in module.buffers() if b.ndim == 1)  # running mean and var
    kind = "PConv" if isinstance(module, PartialConv) else type(module).__name__
    return LayerProfile(name, kind, tuple(output.shape), params, macs, memory)


def _residual_row(name: str, block: FasterNetBlock, output: torch.Tensor) -> LayerProfile:
    scale = block.layer_scale.numel() if block.layer_scale is not None else 0
    return LayerProfile(f"{name} (+ shortcut)", "Add", tuple(output.shape), scale, 0, 3 * output.numel() + scale)


def _profiled_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """PConvs as units, blocks for their residual add, and every other compute leaf."""
    chosen = []
    inside_pconv: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, PartialConv):
            inside_pconv.append(name + ".")
            chosen.append((name, module))
        elif isinstance(module, FasterNetBlock) or (
            not any(name.startswith(p) for p in inside_pconv)
            and not list(module.children())
            and not isinstance(module, (nn.Identity, DropPath))
        ):
            chosen.append((name, module))
    return chosen


@torch.no_grad()
def profile(
    model: nn.Module,
    input_size: Sequence[int] = (1, 3, 224, 224),
    *,
    measure: bool = False,
    repeats: int = 20,
    threads: int | None = None,
) -> ProfileReport:
    """Run one forward pass of a zero batch of ``input_size`` and account for every layer.

    Works on the meta device too (no computation), which makes profiling large variants instant.
    ``measure=True`` also times every layer (median of ``repeats`` eager forward passes, after a
    warm-up) so that the table shows where the time goes and the FLOPS each layer achieves.
    """
    rows: list[LayerProfile] = []
    handles = []

    def hook_for(name: str, module: nn.Module):
        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(mod, FasterNetBlock):
                rows.append(_residual_row(name, mod, output))
            else:
                rows.append(_layer_row(name, mod, inputs, output))

        return hook

    for name, module in _profiled_modules(model):
        handles.append(module.register_forward_hook(hook_for(name, module)))
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(tuple(input_size), device=device))
    finally:
        for handle in handles:
            handle.remove()
    try:
        if measure:
            _measure(model, rows, input_size, device, repeats, threads)
    finally:
        model.train(was_training)
    return ProfileReport(tuple(input_size), rows)


def _measure(
    model: nn.Module,
    rows: list[LayerProfile],
    input_size: Sequence[int],
    device: torch.device,
    repeats: int,
    threads: int | None,
) -> None:
    """Time each profiled module with hooks; a block's own row gets its time minus its children's."""
    if threads is not None:
        torch.set_num_threads(threads)
    modules = dict(_profiled_modules(model))
    samples: dict[str, list[float]] = {name: [] for name in modules}
    starts: dict[str, float] = {}

    def before(name: str):
        def hook(module, inputs):
            synchronize()  # on a GPU, time this layer's kernels, not the queue before them
            starts[name] = time.perf_counter()

        return hook

    def after(name: str):
        def hook(module, inputs, output):
            synchronize()
            samples[name].append(time.perf_counter() - starts[name])

        return hook

    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(before(name)))
        handles.append(module.register_forward_hook(after(name)))
    x = torch.randn(tuple(input_size), device=device)
    try:
        for _ in range(3):
            model(x)
        for values in samples.values():
            values.clear()
        for _ in range(repeats):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    median_ms = {name: 1e3 * statistics.median(values) for name, values in samples.items() if values}
    for row in rows:
        if row.type == "Add":  # the block's residual add: its time minus what its layers took
            block = row.name.removesuffix(" (+ shortcut)")
            inner = sum(ms for name, ms in median_ms.items() if name.startswith(block + "."))
            row.time_ms = max(median_ms.get(block, 0.0) - inner, 0.0)
        else:
            row.time_ms = median_ms.get(row.name)
