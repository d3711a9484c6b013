#!/usr/bin/env bash
# One GPU session of the disentanglement screening (docs/evaluation.md, docs/results.md): a smoke run of
# both stages and the evaluation on CUDA, the GPU check, then three Moving MNIST DRNETs trained side by side on
# one GPU (the default; one grey digit; --normalize True) until DEADLINE_S seconds after the start less the
# LSTM stage, the pose LSTM for LSTM_S seconds on the run with the highest content transfer, and half-precision
# exports of that run (with its LSTM) and the runner-up. Every run stops by Ctrl-C (SIGINT), so it saves its
# last whole iteration and can be resumed with --resume True.
# Usage: OUT=results_dir bash tools/gpu_screen.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_results}
runs=${RUNS:-/tmp/drnet_gpu_runs}
lstm_s=${LSTM_S:-80}
deadline_s=${DEADLINE_S:-540}  # the whole script, from its start
mkdir -p "$out" "$runs"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 OMP_NUM_THREADS=4  # three runs share the CPU cores
began=$(date +%s)
stamp() { echo "[$(( $(date +%s) - began )) s] $*"; }

stamp "smoke: both stages and the evaluation, 2 iterations each"
python main.py --dataset mnist --max_iter 2 --save_iters 2 --save_dir "$runs/smoke" || exit 3
python main.py --use_lstm True --save_dir "$runs/smoke" --max_iter 2 --save_iters 2 --rollout_len 20 || exit 3
python main.py --evaluate --checkpoint "$runs/smoke/lstm/checkpoint.pt" --eval_clips 20 --eval_steps 5 || exit 3

stamp "GPU check"
bash tools/gpu_check.sh 10 2>&1 | tee "$out/gpu_check.md"

declare -A flags=([default]="" [digits1]="--num_digits 1 --channels 1" [sphere]="--normalize True")
# What is left before the deadline goes to DRNET, less the LSTM stage and a margin for saves and exports.
drnet_s=$(( began + deadline_s - $(date +%s) - lstm_s - 60 ))
stamp "DRNET: ${!flags[*]} side by side for $drnet_s s"
for name in "${!flags[@]}"; do
    # shellcheck disable=SC2086
    timeout -s INT -k 60 "$drnet_s" python main.py --dataset mnist ${flags[$name]} --max_iter 1000000 \
        --save_iters 1000 --keep_checkpoints 1 --data_threads 2 --save_dir "$runs/$name" > "$runs/$name.log" 2>&1 &
done
wait
for name in "${!flags[@]}"; do grep -h "content transfer\|trained\|Error" "$runs/$name.log" | tail -3; done
ranked=$(python -c "import csv, sys
last = {name: float(list(csv.DictReader(open(f'$runs/{name}/test_metrics.csv')))[-1]['test_content_transfer'])
        for name in sys.argv[1:]}
print(' '.join(sorted(last, key=last.get, reverse=True)))" "${!flags[@]}")
read -r best second _ <<< "$ranked"
stamp "by last content transfer: $ranked; the LSTM on $best for $lstm_s s"
timeout -s INT -k 60 "$lstm_s" python main.py --use_lstm True --save_dir "$runs/$best" --max_iter 1000000 \
    --save_iters 1000 --keep_checkpoints 1 > "$runs/$best.lstm.log" 2>&1
grep -h "test frame mse\|trained\|Error" "$runs/$best.lstm.log" | tail -2
stamp "exports: $best with its LSTM, $second without, in parts under 16 MB"
export_half() {
    python -c "import sys; from engine.checkpoints import export_weights, load_checkpoint; \
export_weights(load_checkpoint(sys.argv[1]), sys.argv[2])" "$1" "$2" && split -b 15M "$2" "$out/$(basename "$2").part"
}
export_half "$runs/$best/lstm/checkpoint.pt" "$runs/$best.lstm.half.pt"
export_half "$runs/$second/checkpoint.pt" "$runs/$second.half.pt"
# Logs, CSVs, curves and pictures (the roll-out animation of the last save only), without checkpoints.
(cd "$runs" && find . -name "*.log" -o -name "*.csv" -o -name "*.json" -o -name "*.png" -o -name "*.txt" \
    | grep -v "^./smoke" | tar czf "$out/results.tar.gz" -T - \
    $(find "$best/lstm/samples" -name "rollout_*.gif" | sort | tail -1))
stamp "done"
