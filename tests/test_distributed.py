"""torchrun with 2 processes (gloo): synchronized BN is exact, and DDP agrees with one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import torch

from imagetools import make_dataset

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def run_group(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command in its own process group, and kill the whole group if it hangs."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"timed out after {timeout} s: {' '.join(command)}\n{stderr[-3000:]}") from None
    assert process.returncode == 0, stderr[-4000:]
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return run_group([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args])


def test_distributed_batchnorm_equals_one_batchnorm_over_the_global_batch(tmp_path):
    script = tmp_path / "bn.py"
    script.write_text(
        textwrap.dedent("""
        import json, sys, torch, torch.distributed as dist
        from fasternet.training.distributed import DistributedBatchNorm2d
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        torch.manual_seed(0)
        x = torch.randn(8, 4, 3, 5, dtype=torch.float64) * 3 + 1
        w = torch.randn(8, 4, 3, 5, dtype=torch.float64)
        reference = torch.nn.BatchNorm2d(4).double()
        x_all = x.clone().requires_grad_()
        y_all = reference(x_all)
        (y_all * w).sum().backward()
        bn = DistributedBatchNorm2d(4).double()
        part = slice(4 * rank, 4 * rank + 4)
        x_mine = x[part].clone().requires_grad_()
        y = bn(x_mine)
        (y * w[part]).sum().backward()
        weight_grad = bn.weight.grad.clone()
        dist.all_reduce(weight_grad)
        errors = {
            "out": (y - y_all[part]).abs().max().item(),
            "x_grad": (x_mine.grad - x_all.grad[part]).abs().max().item(),
            "weight_grad": (weight_grad - reference.weight.grad).abs().max().item(),
            "running_mean": (bn.running_mean - reference.running_mean).abs().max().item(),
            "running_var": (bn.running_var - reference.running_var).abs().max().item(),
        }
        if rank == 0:
            print(json.dumps(errors))
        dist.destroy_process_group()
    """)
    )
    errors = json.loads(torchrun(str(script)).stdout.strip().splitlines()[-1])
    assert max(errors.values()) < 1e-12, errors


def test_ddp_training_agrees_with_a_single_process_on_the_same_global_batch(tmp_path):
    data = make_dataset(tmp_path / "data", classes=2, train=8, val=2)  # 16 images: two global batches of 8
    args = [
        "train",
        "--model",
        "fasternet_t0",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--warmup-epochs",
        "0",
        "--lr",
        "0.002",
        "--mixup",
        "0",
        "--cutmix",
        "0",
        "--drop-path-rate",
        "0",
        "--sync-bn",
        "--amp",
        "off",
        "--workers",
        "0",
        "--no-progress",
    ]
    run_group([sys.executable, "-m", "fasternet", *args, "--output", str(tmp_path / "single")])
    torchrun("-m", "fasternet", *args, "--output", str(tmp_path / "ddp"))

    logs = [json.loads((tmp_path / run / "log.jsonl").read_text()) for run in ("single", "ddp")]
    assert abs(logs[0]["train_loss"] - logs[1]["train_loss"]) < 1e-4 * logs[0]["train_loss"]
    a = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]
    # Adam turns a gradient into about +-lr per element, so float rounding in the gradient
    # reduction can flip the sign of the few updates whose gradient is ~0; everything else agrees.
    total = differing = 0
    for key in a:
        if a[key].is_floating_point():
            diff = (a[key] - b[key]).abs()
            total += diff.numel()
            differing += int((diff > 1e-4).sum())
            assert diff.max() <= 2 * 2 * 0.002 + 1e-6, key  # at most two sign flips of an lr step
    assert differing / total < 1e-3, f"{differing} of {total} weights differ"
