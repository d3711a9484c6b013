#!/usr/bin/env bash
# One GPU-machine session of the speed checks (docs/speed.md): the GPU check and the GPU bf16-vs-fp32 learning
# comparison on the GPU, and beside them the AMX check (tools/amx_check.sh) on CPUs of their own: two
# physical cores for the CPU timings, the rest split between the fp32 and the bf16 learning run. Results, as
# Markdown, go to $OUT. Usage: OUT=dir bash tools/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
began=$(date +%s)
stamp() { echo "[$(( $(date +%s) - began )) s] $*"; }
lscpu > "$out/lscpu.txt"
# The first logical CPU of each physical core, so that timed CPUs do not share a core with other work.
mapfile -t cores < <(lscpu -p=CPU,CORE | grep -v '^#' | sort -t, -k2,2n -k1,1n | awk -F, '!seen[$2]++ {print $1}')
n=${#cores[@]}
half=$(( (n - 4) / 2 ))
join() { local IFS=,; echo "$*"; }
bench_cpus=$(join "${cores[@]:0:2}")
gpu_cpus=$(join "${cores[@]:2:2}")
learn_cpus="$(join "${cores[@]:4:half}") $(join "${cores[@]:4+half:half}")"
stamp "$n physical cores; CPU timings on $bench_cpus, GPU work on $gpu_cpus, CPU learning runs on $learn_cpus"
OUT=$out BENCH_CPUS=$bench_cpus LEARN_CPUS=$learn_cpus LEARN_S=${LEARN_S:-330} bash tools/amx_check.sh \
    > "$out/amx_check.log" 2>&1 &
sleep 20  # the AMX check caches the Moving MNIST digits first
stamp "GPU check"
taskset -c "$gpu_cpus" bash tools/gpu_check.sh 20 2>&1 | tee "$out/gpu_check.md"
stamp "GPU learning comparison"
taskset -c "$gpu_cpus" python -m tools.bf16_learning --device cuda --iters 3000 --save_iters 500 --seeds 1 2 \
    --deadline_s "${GPU_LEARN_S:-120}" --runs_dir /tmp/gpu_learning -- --num_digits 1 --channels 1 \
    --data_threads 2 2>&1 | tee "$out/bf16_learning_gpu.md"
stamp "waiting for the AMX check"
wait
cat "$out/amx_check.log"
stamp "done"
