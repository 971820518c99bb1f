#!/usr/bin/env bash
# The GPU checks of the open issues as one prepared run, for a session that is lent a GPU:
#   device run: bash benchmarks/gpu_session.sh   (writes its results under $OUT)
# The device machine has torch, triton, timm and torchvision but not this package: it runs from
# src/. Every step is independent, so a failing one leaves the others' results. Not yet run: no
# GPU has been lent to a session of this project so far.
set -uo pipefail
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
OUT="${OUT:-/tmp/fasternet-gpu}"
mkdir -p "$OUT"
step() { echo "=== $*" | tee -a "$OUT/steps.txt"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

step "GPU tests (fused kernel against PyTorch on CUDA)"
timeout 240 python3 -m pytest -q -m gpu tests/test_kernels.py -p no:cacheprovider 2>&1 | tail -20 | tee "$OUT/gpu_tests.txt"

step "throughput: eager vs torch.compile vs the fused kernel vs timm, batch 256 and 1024"
timeout 420 python3 -m fasternet bench --device cuda --models fasternet_t0,fasternet_t2,fasternet_s \
    --backends torch,triton,torch-compile --precisions fp16,bf16 --batch-sizes 256,1024 --rounds 3 --peers \
    --json > "$OUT/bench_gpu.json" 2> "$OUT/bench_gpu.log"
tail -3 "$OUT/bench_gpu.log"

step "latency at batch 1"
timeout 120 python3 -m fasternet bench --device cuda --models fasternet_t0,fasternet_s --backends torch,triton \
    --precisions fp16 --batch-sizes 1 --rounds 5 > "$OUT/bench_gpu_bs1.txt" 2>&1
cat "$OUT/bench_gpu_bs1.txt"
