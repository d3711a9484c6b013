"""Shared helpers: user-facing errors, flag parsing, devices, RNG state, checkpoints, logs, pictures."""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm


class DRNetError(Exception):
    """An error the user can fix; `main` prints its message as one line and exits non-zero."""


def str2bool(value: str | bool) -> bool:
    """Parse a boolean flag value honestly: True/False, 1/0, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("true", "1", "yes", "y", "on", "t"):
        return True
    if text in ("false", "0", "no", "n", "off", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False, 1/0, yes/no), got '{value}'")


def resolve_device(name: str = "auto", gpu: int = 0) -> torch.device:
    """Pick the device once: `auto` prefers CUDA (GPU number `gpu`), then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DRNetError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
        if not 0 <= gpu < torch.cuda.device_count():
            raise DRNetError(f"--gpu {gpu} does not exist: {torch.cuda.device_count()} CUDA GPU(s) visible")
        return torch.device("cuda", gpu)
    if name == "mps" and not torch.backends.mps.is_available():
        raise DRNetError("--device mps was asked for, but MPS is not available on this machine")
    return torch.device(name)


def rng_state(data_state: torch.Tensor) -> dict:
    """Every random state a run depends on: the data generator's before the next batch, torch's CPU and CUDA."""
    state = {"data": data_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what `rng_state` saved."""
    generator.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write a checkpoint atomically: to a temporary file first, renamed over `path` once complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint of plain tensors and values (`weights_only=True`), or raise a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise DRNetError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated, corrupt, or not a checkpoint at all
        raise DRNetError(f"cannot read checkpoint {path}: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'unreadable'}") from error
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "model" not in checkpoint:
        raise DRNetError(f"{path} is not a DRNET checkpoint of this project")
    return checkpoint


def export_weights(checkpoint: dict, path: str | Path) -> None:
    """Save a checkpoint's weights in half precision, without optimizer or random states, for shipping.

    `load_model` reads the result like any checkpoint (loading casts the weights back to float32).
    """
    def half(state: dict) -> dict:
        return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}

    kept = {k: v for k, v in checkpoint.items() if k not in ("optimizers", "rng")}
    kept["model"] = half(checkpoint["model"])
    if "lstm" in checkpoint:
        kept["lstm"] = half(checkpoint["lstm"])
    save_checkpoint(kept, path)


class TqdmHandler(logging.Handler):
    """Logging handler that prints through tqdm, so messages do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(run_dir: Path | None = None, filename: str = "train.log") -> logging.Logger:
    """The `drnet` logger: messages to the terminal and, given a run directory, to a log file in it."""
    logger = logging.getLogger("drnet")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    terminal = TqdmHandler()
    terminal.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(terminal)
    if run_dir is not None:
        to_file = logging.FileHandler(Path(run_dir) / filename)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(to_file)
    logger.propagate = False
    return logger


class MetricsLog:
    """Append-only CSV of per-iteration metrics; on resume, rows after the resumed iteration are dropped."""

    def __init__(self, path: Path, columns: list[str], resume_from: int | None = None):
        self.path, self.columns = Path(path), ["iteration", *columns]
        rows = read_metrics(self.path) if resume_from is not None and self.path.exists() else []
        kept = [row for row in rows if row["iteration"] <= resume_from] if rows else []
        with open(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.columns)
            writer.writerows([[_format(row.get(c, math.nan)) for c in self.columns] for row in kept])

    def append(self, iteration: int, values: dict[str, float]) -> None:
        """Add one row; missing columns are written empty."""
        with open(self.path, "a", newline="") as f:
            row = [iteration] + [_format(values.get(c, math.nan)) for c in self.columns[1:]]
            csv.writer(f).writerow(row)


def _format(value: float) -> str:
    """CSV text of a metric: empty for NaN, otherwise enough digits to plot and compare."""
    return "" if isinstance(value, float) and math.isnan(value) else f"{value:.6g}"


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics CSV as dicts of floats (the iteration as int; empty cells as NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "iteration" else float(v) if v else math.nan) for k, v in row.items()}
            for row in rows]


def plot_curves(panels: dict[str, list[tuple[Path, str]]], path: Path, smooth: int = 20) -> None:
    """Save a PNG with one panel per title, each plotting (csv file, column) series against iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items(), strict=True):
        for csv_path, column in series:
            rows = [r for r in read_metrics(csv_path) if not math.isnan(r.get(column, math.nan))]
            if not rows:
                continue
            x = [r["iteration"] for r in rows]
            y = torch.tensor([r[column] for r in rows])
            ax.plot(x, y.numpy(), alpha=0.3 if len(rows) > smooth else 1.0, label=column)
            if len(rows) > smooth:  # a running mean shows the trend under the per-batch noise
                kernel = torch.ones(1, 1, smooth) / smooth
                trend = torch.nn.functional.conv1d(y[None, None], kernel)[0, 0]
                ax.plot(x[smooth - 1:], trend.numpy(), color=ax.lines[-1].get_color(), label=f"{column} (mean)")
        values = [y for line in ax.lines for y in line.get_ydata()]
        if values and min(values) > 0 and max(values) > 20 * min(values):
            ax.set_yscale("log")  # losses fall by orders of magnitude: a linear axis hides the later progress
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_image_grid(images: torch.Tensor, path: Path, columns: int) -> None:
    """Save images (N, C, H, W) in [0, 1] as one PNG with `columns` per row and a thin white border."""
    from torchvision.utils import save_image

    save_image(images.detach().float().cpu().clamp(0, 1), path, nrow=columns, padding=2, pad_value=1.0)


class StopOnInterrupt:
    """Within this context the first Ctrl-C asks the training loop to stop cleanly after the current
    iteration (so the checkpoint holds a whole iteration); a second Ctrl-C aborts at once."""

    def __enter__(self) -> StopOnInterrupt:
        self.requested = False
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logging.getLogger("drnet").info("stopping after this iteration (Ctrl-C again to abort)")

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def report_errors(action: Callable[[], str]) -> int:
    """Run a command-line action: print its success message, or its DRNetError as one line; the exit status."""
    try:
        message = action()
    except DRNetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(message)
    return 0
