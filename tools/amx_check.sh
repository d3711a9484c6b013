#!/usr/bin/env bash
# The AMX check (docs/speed.md): on a CPU with AMX, (1) tools/speed.py on two CPUs: the reference step against ours in
# fp32, channels_last, bf16 and bf16 + channels_last; (2) the default command's own seconds per iteration with
# --amp auto on the same two CPUs (30 iterations and one save); (3) side by side on other CPUs, bf16 against
# fp32 learning: tools/bf16_learning.py, 1000 iterations at batch 50, evaluated on 1000 test clips.
# Usage: OUT=dir BENCH_CPUS=0,1 LEARN_CPUS="2-8 9-15" LEARN_S=330 bash tools/amx_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-amx_results}
bench_cpus=${BENCH_CPUS:-0,1}
read -r -a learn_cpus <<< "${LEARN_CPUS:-2-8 9-15}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python main.py --device cpu --max_iter 1 --save_dir /tmp/amx_prep > "$out/prep.log" 2>&1  # caches the data
python -m tools.bf16_learning --device cpu --iters 1000 --save_iters 250 --seeds 1 --cpus "${learn_cpus[@]}" \
    --deadline_s "${LEARN_S:-330}" --runs_dir /tmp/amx_learning -- --batch_size 50 > "$out/bf16_learning_cpu.md" 2>&1 &
OMP_NUM_THREADS=2 taskset -c "$bench_cpus" python -m tools.speed --device cpu --iters 5 --warmup 2 \
    --variants reference ours "ours, channels_last" "ours, bf16" "ours, bf16 + channels_last" 2>&1 | tee "$out/bench_cpu.md"
OMP_NUM_THREADS=2 taskset -c "$bench_cpus" python main.py --device cpu --amp auto --max_iter 30 \
    --save_dir /tmp/amx_default 2>&1 | grep -E "precision|channels_last|trained" | tee "$out/default_command.txt"
timeout 60 python -m tools.data_speed --batches 6 2>&1 | tee "$out/data_speed.md"  # the KTH loader, for the GPU
wait
cat "$out/bf16_learning_cpu.md"
