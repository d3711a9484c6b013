"""Does bf16 learn as well as fp32? The same DRNET runs trained both ways side by side, then evaluated.

    python -m tools.bf16_learning --iters 1000 --seeds 1 --device cpu --cpus 0-7 8-15 -- --batch_size 50
    python -m tools.bf16_learning --iters 4000 --seeds 1 2 --device cuda -- --num_digits 1 --channels 1

Each (seed, precision) pair is one `python main.py --dataset mnist` run with the flags after `--`, differing only
in --amp (off or bf16); all run at once, each pinned to its own CPU set where --cpus names them (one per run,
in the order seed 1 fp32, seed 1 bf16, seed 2 fp32, ...) with as many threads as that set has CPUs. A deadline
stops the runs by Ctrl-C (each saves its last whole iteration). Then the checkpoint of the last iteration every
run reached is evaluated (`main.py --evaluate`, fp32) and one Markdown table is printed: the evaluation's test
reconstruction MSE and content transfer of each run, and the spread between seeds of one precision, which is
the run-to-run noise that a bf16-fp32 difference is measured against.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run by path: our imports need the repository root
    print("error: run it from the repository root as a module: python -m tools.bf16_learning", file=sys.stderr)
    sys.exit(2)  # the user-error status of every command (utils.USER_ERROR)

from engine.checkpoints import checkpoint_path
from utils import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def cpu_set(spec: str) -> set[int]:
    """CPUs of a spec like '0-7' or '0,2,4'."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def start_run(run_dir: Path, seed: int, amp: str, args: argparse.Namespace, cpus: set[int] | None,
              extra: list[str]) -> subprocess.Popen:
    """Start one training run in the background, its output in <run_dir>.log."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "30"}
    if cpus:
        env["OMP_NUM_THREADS"] = str(len(cpus))
    command = [sys.executable, str(ROOT / "main.py"), "--dataset", "mnist", "--device", args.device, "--amp", amp,
               "--seed", str(seed), "--max_iter", str(args.iters), "--save_iters", str(args.save_iters),
               "--keep_checkpoints", "0", "--save_dir", str(run_dir), *extra]
    log = open(f"{run_dir}.log", "w")  # noqa: SIM115  (closed with the process, in main)
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)


def evaluate(checkpoint: Path, args: argparse.Namespace) -> dict:
    """The evaluation of one checkpoint (main.py --evaluate, fp32), as written to its metrics.json."""
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--evaluate", "--checkpoint", str(checkpoint),
                           "--eval_clips", str(args.eval_clips), "--device", args.eval_device, "--amp", "off"],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"evaluating {checkpoint} failed:\n{done.stderr[-2000:]}")
    return json.loads((checkpoint.parent / "eval" / "metrics.json").read_text())


def main() -> None:
    """Train, stop at the deadline, evaluate, print the table."""
    parser = argparse.ArgumentParser(prog="python -m tools.bf16_learning", description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--save_iters", type=int, default=250)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval_device", default="auto")
    parser.add_argument("--eval_clips", type=int, default=1000)
    parser.add_argument("--cpus", nargs="*", default=[], help="one CPU set per run, e.g. 0-7 8-15")
    parser.add_argument("--deadline_s", type=float, default=3600, help="stop the runs (saving) after this long")
    parser.add_argument("--runs_dir", type=Path, default=ROOT / "runs" / "bf16_learning")
    args, extra = parser.parse_known_args()
    extra = [flag for flag in extra if flag != "--"]
    names = [(seed, amp) for seed in args.seeds for amp in ("off", "bf16")]
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    processes = {name: start_run(args.runs_dir / f"seed{name[0]}_{name[1]}", *name, args,
                                 cpu_set(args.cpus[i]) if i < len(args.cpus) else None, extra)
                 for i, name in enumerate(names)}
    for process in processes.values():
        try:
            process.wait(timeout=max(1.0, args.deadline_s - (time.perf_counter() - began)))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)  # main.py saves its last whole iteration and stops
            process.wait()
    seconds = time.perf_counter() - began
    tables = {name: read_metrics(args.runs_dir / f"seed{name[0]}_{name[1]}" / "test_metrics.csv") for name in names}
    common = max(set.intersection(*({int(row["iteration"]) for row in rows} for rows in tables.values())))
    print(f"flags: {' '.join(extra) or '(defaults)'}; --device {args.device}; {seconds:.0f} s; compared at "
          f"iteration {common}, evaluated on {args.eval_clips} test clips\n")
    print("| seed | precision | test reconstruction MSE | content transfer | s / iteration |\n|---|---|---|---|---|")
    scores = {}
    for seed, amp in names:
        run_dir = args.runs_dir / f"seed{seed}_{amp}"
        result = evaluate(checkpoint_path(run_dir, common), args)
        scores[seed, amp] = (result["reconstruction"]["mse"], result["swap"]["content_transfer"])
        speed = [line for line in Path(f"{run_dir}.log").read_text().splitlines() if "s/iteration" in line]
        per_iteration = speed[-1].rsplit("(", 1)[-1].split()[0] if speed else "-"
        print(f"| {seed} | {'fp32' if amp == 'off' else 'bf16'} | {scores[seed, amp][0]:.5f} | "
              f"{scores[seed, amp][1]:.3f} | {per_iteration} |")
    if len(args.seeds) > 1:
        for amp in ("off", "bf16"):
            mses = [scores[seed, amp][0] for seed in args.seeds]
            print(f"\n{'fp32' if amp == 'off' else 'bf16'}: MSE spread over seeds {max(mses) - min(mses):.5f}")


if __name__ == "__main__":
    main()
