#!/usr/bin/env bash
# The GPU check: DRNET training speed (clips/s) and peak GPU memory at 64 px (Moving MNIST, its networks) and
# 128 px (KTH's VGG16/ResNet-18 networks on random frames): fp32 as main.py runs it, with the losses read every
# iteration, per-tensor Adam, cudnn.benchmark, channels_last, bf16 autocast (--amp bf16) and torch.compile
# (--compile True), pinned batches at 128 px; and the pose LSTM roll-out decoded one step per call against one
# pass. Needs a CUDA GPU and requirements.txt only; under 5 minutes on one GPU.
# Usage: [ALL=1] bash tools/gpu_check.sh [iterations timed per variant, default 20]
# (ALL=1 adds cudnn.benchmark and channels_last, which gained nothing on an H200; see docs/speed.md.)
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-20}
python -m tools.speed --device cuda --iters "$iters" --warmup 5 \
    --variants reference ours "ours, losses read every iteration" "ours, PyTorch's default Adam" "ours, bf16" \
    "ours, compile" ${ALL:+"ours, cudnn.benchmark" "ours, channels_last" "ours, bf16 + channels_last"}
echo
python -m tools.speed --device cuda --dataset kth --iters "$iters" --warmup 5 \
    --variants ours "ours, losses read every iteration" "ours, pinned batches" "ours, bf16" "ours, compile" \
    ${ALL:+"ours, cudnn.benchmark"}
