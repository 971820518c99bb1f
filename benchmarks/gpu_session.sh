#!/usr/bin/env bash
# The GPU checks of the open issues as one prepared run, for a session that is lent a GPU:
#   device run: bash benchmarks/gpu_session.sh   (writes its results under $OUT)
# The device machine has torch, triton and timm but not this package: everything runs from src/.
# Each step is independent: a failing one leaves the others' results. About 6-7 minutes on an
# H200, plus the machine's start; results of the first session: benchmarks/results/gpu_h200/.
set -uo pipefail
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
OUT="${OUT:-/tmp/fasternet-gpu}"
BUDGET="${BUDGET:-380}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1
cat "$OUT/nvidia-smi.txt"
# Throughput, blocks, tile configurations (benchmarks/gpu_bench.py says what each file holds).
timeout $((BUDGET + 60)) python3 benchmarks/gpu_bench.py --out "$OUT" --budget-s "$BUDGET" 2>&1 | tee "$OUT/bench.log" \
    | grep -v -e "^\s*$" -e Warning
# The GPU tests behind the marker (the fused runner against eager PyTorch on CUDA).
timeout 100 python3 -m pytest -q -m gpu tests/test_kernels.py -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1
tail -5 "$OUT/gpu_tests.txt"
# Issue 17, item 1: where our eager runner loses to timm's fp16 channels-last model (per-kernel times).
timeout 120 python3 benchmarks/gpu_profile_gap.py --out "$OUT" --models fasternet_t2,fasternet_s --batch 256 \
    > "$OUT/gap.txt" 2>&1; tail -30 "$OUT/gap.txt"
# Issue 17, item 5: the paper's GPU table (batch 32) beside timm's peers, and its operator table on the GPU.
timeout 240 python3 -m fasternet bench --device cuda --preset paper-gpu \
    --models fasternet_t0,fasternet_t1,fasternet_t2,fasternet_s,fasternet_m,fasternet_l --peers --rounds 3 --json \
    > "$OUT/paper_gpu.json" 2> "$OUT/paper_gpu.log"
timeout 120 python3 -m fasternet bench operators --device cuda --rounds 3 > "$OUT/operators_gpu.txt" 2>&1
cat "$OUT/operators_gpu.txt"
