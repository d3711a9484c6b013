#!/usr/bin/env bash
# The two-digit GPU campaign (docs/gpu.md): one command on one CUDA GPU, at most DEADLINE_S seconds (530) from its
# start, everything under $OUT:
#   speed.md        tools/speed.py at batch 100, 64 px: eager ("ours") against the captured step (--cuda_graph True) in
#                   fp32 and bf16, with peak GPU memory;
#   equivalence.md  the same seed trained EQUIV_ITERS iterations eagerly and captured, side by side: the losses;
#   screen.md       SCREEN's two-digit, two-colour variants trained side by side (captured) for SCREEN_S seconds,
#                   ranked by the content transfer of `main.py --evaluate`; content_transfer.png their curves;
#   the best variant continued towards the authors' 100,000 iterations until the time left is the LSTM's and
#   the final steps'; its pose LSTM for LSTM_S seconds; the evaluation of the two stages (eval_*.txt and the
#   eval/ pictures), half-precision exports split in parts under 16 MB (best*.half.pt.part*), and the logs,
#   CSVs, curves and pictures of every run in results.tar.gz.
# Every run stops by Ctrl-C (SIGINT) at its deadline, so it saves its last whole iteration and can be resumed.
# SMOKE=1 runs the same steps on the CPU with tiny sizes (eager: the CPU cannot capture; minutes on 2 cores).
# Usage: OUT=results_dir bash tools/gpu_campaign.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-campaign_results}
runs=${RUNS:-/tmp/drnet_campaign_runs}
# name:flags;... (two digits in two colours is the mnist default; see docs/faithfulness.md for the regimes)
screen=${SCREEN:-"sphere:--normalize True;lua:--normalize True --sampling lua --max_step 12;\
py:--normalize_pose True --sampling py;lua_pose10:--normalize True --sampling lua --max_step 12 --pose_dim 10 \
--beta 0.001"}
if [ -n "${SMOKE:-}" ]; then
    device="--device cpu --batch_size 4"
    bench="--device cpu --batch_size 4 --iters 1 --warmup 0 --no_rollout"
    screen_iters=2 schedule=3 lstm_iters=2 equiv_iters=${EQUIV_ITERS:-2} eval_clips=10 final_clips=10
    screen_s=${SCREEN_S:-300} lstm_s=${LSTM_S:-300} bench_s=300 eval_s=300 final_s=300
    lstm_flags="--batch_size 4 --rollout_len 20" deadline_s=${DEADLINE_S:-3000} threads=1
else
    device="--device cuda --cuda_graph True --data_threads 2"
    bench="--device cuda --iters 300 --warmup 20"
    screen_iters=100000 schedule=100000 lstm_iters=1000000 equiv_iters=${EQUIV_ITERS:-300} eval_clips=500
    final_clips=1000 screen_s=${SCREEN_S:-120} lstm_s=${LSTM_S:-60} bench_s=75 eval_s=60 final_s=${FINAL_S:-60}
    lstm_flags="--data_threads 2" deadline_s=${DEADLINE_S:-530} threads=3  # four runs and two loaders at once
fi
# The LSTM stage encodes its clips through a pool where main.py has one: a small one in the smoke run.
if [ -n "${SMOKE:-}" ] && python main.py --help | grep -q -- --code_pool; then lstm_flags="$lstm_flags --code_pool 8"; fi
mkdir -p "$out" "$runs"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
began=$(date +%s)
stamp() { echo "[$(( $(date +%s) - began )) s] $*" | tee -a "$out/campaign.log"; }
left() { echo $(( began + deadline_s - $(date +%s) )); }
# Seconds for a stage: what it asks for, but never past the deadline less what later stages reserve.
budget() { local s=$(( $(left) - $2 )); [ "$1" -lt "$s" ] && s=$1; [ "$s" -lt 1 ] && s=1; echo "$s"; }
stopped() { timeout -s INT -k 30 "$@"; }  # SIGINT: a training run saves its last iteration and stops
later=$(( screen_s + eval_s + lstm_s + final_s ))

stamp "speed: eager against captured (fp32, bf16) at 64 px"
# shellcheck disable=SC2086
stopped "$(budget "$bench_s" "$later")" python -m tools.speed $bench --variants ours captured "captured bf16" \
    2>&1 | tee "$out/speed.md"

declare -A flags=()
IFS=';' read -ra entries <<< "$screen"
for entry in "${entries[@]}"; do flags[${entry%%:*}]=${entry#*:}; done
names=("${!flags[@]}")
common="$device --max_iter $screen_iters --save_iters ${SAVE_ITERS:-2000} --keep_checkpoints 1"
stamp "learning equivalence ($equiv_iters iterations, seed 1) and the screen (${names[*]}) side by side"
eager_device=${device/--cuda_graph True/}
# shellcheck disable=SC2086
for mode in eager captured; do
    mode_device=$([ "$mode" = eager ] && echo "$eager_device" || echo "$device")
    stopped "$(budget "$screen_s" $(( later - screen_s )))" python main.py $mode_device --seed 1 \
        --max_iter "$equiv_iters" --save_iters "$equiv_iters" --save_dir "$runs/equiv_$mode" \
        > "$runs/equiv_$mode.log" 2>&1 &
done
screen_budget=$(budget "$screen_s" $(( later - screen_s )))
for name in "${names[@]}"; do
    # shellcheck disable=SC2086
    stopped "$screen_budget" python main.py $common ${flags[$name]} --save_dir "$runs/$name" \
        > "$runs/$name.log" 2>&1 &
done
wait
python - "$runs" > "$out/equivalence.md" <<'EOF'
import math, sys
from pathlib import Path
from utils import read_metrics
runs = Path(sys.argv[1])
eager, captured = (read_metrics(runs / f"equiv_{mode}" / "metrics.csv") for mode in ("eager", "captured"))
n = min(len(eager), len(captured))
print(f"| loss | iterations | first iteration differing by > 1e-4 (relative) | largest relative difference, "
      f"first 10 | eager mean, last 100 | captured mean, last 100 |\n|---|---|---|---|---|---|")
tail = slice(max(0, n - 100), n)
for name in ("rec", "sim", "adv", "disc_loss", "disc_acc"):
    rel = [abs(e[name] - c[name]) / max(abs(e[name]), 1e-12) for e, c in zip(eager[:n], captured[:n])]
    first = next((i + 1 for i, r in enumerate(rel) if not r <= 1e-4), "none")
    means = [sum(r[name] for r in rows[tail]) / max(1, len(rows[tail])) for rows in (eager, captured)]
    print(f"| {name} | {n} | {first} | {max(rel[:10], default=math.nan):.2e} | {means[0]:.5g} | {means[1]:.5g} |")
EOF
cat "$out/equivalence.md"

stamp "ranking by content transfer (main.py --evaluate, $eval_clips clips, max_step 20 for all)"
for name in "${names[@]}"; do
    # shellcheck disable=SC2086
    stopped "$(budget "$eval_s" $(( lstm_s + final_s )))" python main.py --evaluate ${device%% --cuda_graph*} \
        --checkpoint "$runs/$name/checkpoint.pt" --eval_clips "$eval_clips" --max_step 20 \
        > "$runs/$name.eval.log" 2>&1 &
done
wait
ranked=$(python - "$runs" "${names[@]}" <<'EOF'
import json, math, sys
from pathlib import Path
from utils import read_metrics
runs, names = Path(sys.argv[1]), sys.argv[2:]
score, rows = {}, []
for name in names:
    tests = read_metrics(runs / name / "test_metrics.csv") if (runs / name / "test_metrics.csv").exists() else []
    last = tests[-1] if tests else {}
    path = runs / name / "eval" / "metrics.json"
    evaluated = json.loads(path.read_text())["swap"]["content_transfer"] if path.exists() else math.nan
    # The evaluation ranks; a run whose evaluation did not finish falls back on its last periodic test.
    score[name] = evaluated if not math.isnan(evaluated) else last.get("test_content_transfer", -math.inf)
    rows.append(f"| {name} | {last.get('iteration', 0):.0f} | {evaluated:.3f} | "
                f"{last.get('test_content_transfer', math.nan):.3f} | {last.get('test_rec_mse', math.nan):.5f} |")
with open(sys.argv[1] + "/screen.md", "w") as table:
    table.write("| variant | iterations | content transfer (--evaluate) | test content transfer (200 swaps) "
                "| test rec. MSE |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
print(" ".join(sorted(names, key=lambda n: score[n], reverse=True)))
EOF
)
for name in "${names[@]}"; do echo "- $name: ${flags[$name]}"; done | cat "$runs/screen.md" - > "$out/screen.md"
cat "$out/screen.md"
python -m tools.plot_runs "${names[@]/#/$runs/}" --metric test_content_transfer --out "$out/content_transfer.png" \
    > /dev/null 2>&1
read -r best _ <<< "$ranked"
echo "$best: ${flags[$best]}" > "$out/best.txt"

continue_s=$(( $(left) - lstm_s - final_s ))
stamp "$best continued towards iteration $schedule for $continue_s s"
if [ "$continue_s" -gt 10 ]; then
    # shellcheck disable=SC2086
    stopped "$continue_s" python main.py --resume True --save_dir "$runs/$best" $device --max_iter "$schedule" \
        --save_iters ${SAVE_ITERS:-5000} >> "$runs/$best.log" 2>&1
fi
grep -h "content transfer\|trained\|rror" "$runs/$best.log" | tail -3

stamp "the pose LSTM of $best for $(budget "$lstm_s" "$final_s") s"
# shellcheck disable=SC2086
stopped "$(budget "$lstm_s" "$final_s")" python main.py --use_lstm True --save_dir "$runs/$best" \
    ${eager_device%% --data_threads*} $lstm_flags --max_iter "$lstm_iters" --save_iters 500 --keep_checkpoints 1 \
    > "$runs/$best.lstm.log" 2>&1
grep -h "test frame mse\|trained\|rror" "$runs/$best.lstm.log" | tail -2

stamp "evaluation, half-precision exports and results"
final=$runs/$best/lstm/checkpoint.pt
[ -f "$final" ] || final=$runs/$best/checkpoint.pt
stopped "$(budget "$final_s" 15)" python main.py --evaluate ${device%% --cuda_graph*} --checkpoint "$final" \
    --eval_clips "$final_clips" > "$out/eval_$best.txt" 2> "$runs/$best.final_eval.log"
export_half() {
    python -c "import sys; from engine.checkpoints import export_weights, load_checkpoint; \
export_weights(load_checkpoint(sys.argv[1]), sys.argv[2])" "$1" "$2" && split -b 15M "$2" "$out/$(basename "$2").part"
}
export_half "$final" "$runs/best_$best.half.pt"
# Logs, CSVs, curves and pictures (the roll-out animation of the last save only), without checkpoints.
(cd "$runs" && find . -name "*.log" -o -name "*.csv" -o -name "*.json" -o -name "*.png" -o -name "*.txt" \
    | tar czf "$out/results.tar.gz" -T - $(find "$best/lstm/samples" -name "rollout_*.gif" 2>/dev/null | sort | tail -1))
stamp "done: best $best; $(ls "$out" | tr '\n' ' ')"
