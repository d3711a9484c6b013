#!/usr/bin/env bash
# The GPU check: DRNET training speed (clips/s) and peak GPU memory at 64 px (Moving MNIST, its networks) and
# 128 px (KTH's VGG16/ResNet-18 networks on random frames), fp32 and bf16 autocast (--amp bf16), and the pose
# LSTM roll-out decoded one step per call against one pass. Needs a CUDA GPU and requirements.txt only; under
# 5 minutes on one GPU. Usage: bash benchmarks/gpu_check.sh [iterations timed per variant, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-20}
python bench.py --device cuda --iters "$iters" --warmup 5 \
    --variants reference ours "ours, cudnn.benchmark" "ours, channels_last" "ours, bf16" "ours, bf16 + channels_last"
echo
python bench.py --device cuda --dataset kth --iters "$iters" --warmup 5 --variants ours "ours, cudnn.benchmark" "ours, bf16"
