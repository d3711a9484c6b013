"""Compare runs: one test metric of several run directories against iterations, one line per run.

    python -m tools.plot_runs runs/screen/* --metric test_content_transfer --out content_transfer.png

Reads each run's `test_metrics.csv`; a second panel puts the same lines against training clips seen
(iterations x batch size from the run's config.json), so runs at different batch sizes compare fairly.
With `--cpu_s_per_clip S` (measured with `python -m tools.speed` on the machine that trained the runs) that panel shows
CPU hours instead: clips seen x S / 3600.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run by path: our imports need the repository root
    print("error: run it from the repository root as a module: python -m tools.plot_runs", file=sys.stderr)
    sys.exit(2)  # the user-error status of every command (utils.USER_ERROR)

from utils import read_metrics


def plot_runs(run_dirs: list[Path], metric: str, out: Path, cpu_s_per_clip: float | None = None) -> None:
    """Save a PNG of `metric` from each run's test_metrics.csv against iterations and clips seen (or CPU hours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_iteration, by_clips) = plt.subplots(1, 2, figsize=(10, 3.6))
    for run_dir in run_dirs:
        rows = [r for r in read_metrics(run_dir / "test_metrics.csv") if not math.isnan(r.get(metric, math.nan))]
        if not rows:
            continue
        batch = json.loads((run_dir / "config.json").read_text())["batch_size"]
        iterations = [r["iteration"] for r in rows]
        values = [r[metric] for r in rows]
        by_iteration.plot(iterations, values, marker="o", label=run_dir.name)
        scale = batch * cpu_s_per_clip / 3600 if cpu_s_per_clip else batch
        by_clips.plot([i * scale for i in iterations], values, marker="o", label=run_dir.name)
    second = f"CPU hours ({cpu_s_per_clip} CPU-s per clip)" if cpu_s_per_clip else "training clips seen (thousands)"
    if not cpu_s_per_clip:  # six-digit tick labels run into each other
        by_clips.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}")
    for ax, label in ((by_iteration, "iteration"), (by_clips, second)):
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    """Parse the run directories, the metric and the output file, and plot."""
    parser = argparse.ArgumentParser(prog="python -m tools.plot_runs", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding test_metrics.csv")
    parser.add_argument("--metric", default="test_content_transfer", help="a column of test_metrics.csv")
    parser.add_argument("--out", type=Path, default=Path("runs.png"), help="the PNG to write")
    parser.add_argument("--cpu_s_per_clip", type=float, help="CPU seconds per training clip: the second panel in "
                                                                "CPU hours instead of clips")
    args = parser.parse_args()
    plot_runs(args.runs, args.metric, args.out, args.cpu_s_per_clip)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
