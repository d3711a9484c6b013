"""Tiny runs: the small Moving MNIST networks of unit tests, the flags of a tiny run, a run directory or
checkpoint saved without training, a child process running main.py with a patch, fewer fixed test clips, and
the checks of a tiny run of each dataset."""

import contextlib
import csv
import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageSequence

import main
import train_drnet
import train_lstm
from datasets.registry import DATASETS
from engine import pictures
from engine.checkpoints import drnet_checkpoint, lstm_checkpoint
from engine.config import DEFAULTS, LSTM_DEFAULTS, resolve_run
from models import DRNet, DRNetPredictor
from utils import MetricsLog, read_metrics, save_checkpoint

REPO = Path(__file__).resolve().parent.parent.parent


def small_mnist_config() -> dict:
    """The Moving MNIST networks with one channel and small vectors, for unit tests of the networks."""
    entry = {k: v for k, v in DATASETS["mnist"].items() if k != "loader"}
    return {**entry, "channels": 1, "content_dim": 8, "pose_dim": 3}


def tiny_flags(run_dir: Path, data_root: Path, *extra: str, dataset: str | None = None, max_iter: int = 1,
               save_iters: int = 1) -> list[str]:
    """Flags of a tiny CPU run in `run_dir` (of `dataset`, if given): batch 4, `max_iter` iterations, a checkpoint
    every `save_iters`; then `extra`, which win over them."""
    return [*(["--dataset", dataset] if dataset else []), "--batch_size", "4", "--max_iter", str(max_iter),
            "--save_iters", str(save_iters), "--device", "cpu", "--save_dir", str(run_dir),
            "--data_root", str(data_root), *extra]


def save_tiny_run(run_dir: Path, data_root: Path) -> None:
    """Create `run_dir` holding the checkpoints of iteration 1 of a tiny DRNET run, as training saves them.

    They are saved directly, with an empty test report: the pictures and test metrics of a real save would take
    most of the time (a run resumed without that row writes the report first, as after a kill).
    """
    config = resolve_run(main.build_parser().parse_args(tiny_flags(run_dir, data_root))).config
    torch.manual_seed(config["seed"])
    model = DRNet(config)
    run_dir.mkdir()
    train_drnet.save_run_state(run_dir, model, train_drnet.make_optimizers(model, config), config, 1,
                               torch.Generator().manual_seed(config["seed"]).get_state(), config["keep_checkpoints"])
    MetricsLog(run_dir / "test_metrics.csv", train_drnet.TEST_METRICS).append(1, {})


def write_checkpoint(path: Path, data_root: Path, kind: str = "lstm", **changes) -> Path:
    """An untrained Moving MNIST checkpoint of `kind` (lstm or drnet; grey, two digits unless `changes` say
    otherwise) at `path`."""
    entry = {k: v for k, v in DATASETS["mnist"].items() if k != "loader"}
    config = {"dataset": "mnist", **DEFAULTS, **entry, **LSTM_DEFAULTS, "channels": 1, "rnn_size": 8,
              "rnn_layers": 1, "data_root": str(data_root), **changes}
    torch.manual_seed(0)
    model = DRNetPredictor(config, config)
    data_state = torch.Generator().get_state()
    if kind == "lstm":
        state = lstm_checkpoint(model, torch.optim.Adam(model.lstm.parameters()), config, 7, data_state)
    else:
        state = drnet_checkpoint(model, {}, config, 7, data_state)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, path)
    return path


def digest(path: Path) -> str:
    """A file's SHA-256, to tell that it was left exactly as it was."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def report_rows(run_dir: Path) -> list[int]:
    """The iterations of a run's periodic test reports."""
    return [row["iteration"] for row in read_metrics(run_dir / "test_metrics.csv")]


# What a child process sets up before it runs main.main(sys.argv[1:]) with one patch: the conftest's few swaps.
PRELUDE = """
import os, signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import main
import train_drnet
from engine import checkpoints
train_drnet.SWAP_CLIPS = 16
"""


def start_child(patch: str, argv: list[str], **env: str) -> subprocess.Popen:
    """A child process running main.main(argv) from the repository after the PRELUDE and `patch`."""
    return subprocess.Popen([sys.executable, "-c", PRELUDE + patch + "\nmain.main(sys.argv[1:])\n", *argv],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@contextlib.contextmanager
def fewer_test_clips() -> Iterator[None]:
    """Few fixed test clips behind the periodic pictures and metrics (module constants of train_drnet.py and
    train_lstm.py): that only saves time, the code paths stay the same."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_drnet, "TEST_CLIPS", 8)
        patch.setattr(train_lstm, "METRIC_CLIPS", 4)
        patch.setattr(train_lstm, "PICTURE_CLIPS", 2)
        yield


def dataset_flags(dataset: str, data_root: Path, run_dir: Path, *extra: str, lstm: bool = False) -> list[str]:
    """A tiny CPU run of `dataset`: two iterations, pictures and a checkpoint at the end; with `lstm`, the LSTM
    stage on the DRNET of `run_dir` (2 frames observed, 3 predicted)."""
    stage = ("--use_lstm", "True", "--n_past", "2", "--n_future", "3") if lstm else ()
    return tiny_flags(run_dir, data_root, *stage, *extra, dataset=dataset, max_iter=2, save_iters=2)


def csv_rows(csv_path: Path) -> list[dict[str, str]]:
    """The rows of a metrics CSV, as written."""
    return list(csv.DictReader(csv_path.read_text().splitlines()))


def iterations(csv_path: Path) -> list[str]:
    """The iteration column of a metrics CSV."""
    return [row["iteration"] for row in csv_rows(csv_path)]


def check_drnet_run(run_dir: Path, expected: dict) -> None:
    """The run used the dataset's defaults (and the given flags) and wrote metrics, checkpoint and pictures."""
    config = json.loads((run_dir / "config.json").read_text())
    assert {key: config[key] for key in expected} == expected
    assert iterations(run_dir / "metrics.csv") == ["1", "2"]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["iteration"] == 2
    for picture in ("reconstruction_0000002.png", "analogy_0000002.png"):
        assert (run_dir / "samples" / picture).stat().st_size > 0


def check_lstm_run(lstm_dir: Path, frames: int) -> list[str]:
    """The LSTM run wrote two iterations, a strip and a GIF of `frames` frames; returns its test columns."""
    assert iterations(lstm_dir / "metrics.csv") == ["1", "2"]
    assert (lstm_dir / "samples" / "rollout_0000002_every1.png").stat().st_size > 0
    with Image.open(lstm_dir / "samples" / "rollout_0000002.gif") as gif:
        # PIL merges identical consecutive frames into one longer frame, so count the time shown.
        assert sum(frame.info["duration"] for frame in ImageSequence.Iterator(gif)) == frames * pictures.GIF_FRAME_MS
    return (lstm_dir / "test_metrics.csv").read_text().splitlines()[0].split(",")


def evaluate_lstm(run_dir: Path) -> dict:
    """`main.py --evaluate` on the LSTM checkpoint of `run_dir` (tiny: 6 clips, 3 steps); its metrics.json."""
    main.main(["--evaluate", "--checkpoint", str(run_dir / "lstm" / "checkpoint.pt"), "--eval_clips", "6",
               "--eval_steps", "3", "--device", "cpu"])
    results = json.loads((run_dir / "lstm" / "eval" / "metrics.json").read_text())
    assert set(results["skipped"]) == {"swap", "identity"}  # only Moving MNIST has ground-truth swaps and digits
    assert len(results["prediction"]["mse"]) == 3 and results["reconstruction"]["mse"] > 0
    return results


def poison_weights_from(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """From the `call`-th DRNET training step on, the step leaves an infinite weight behind (its loss stays finite)."""
    real_step, calls = train_drnet.train_step, []

    def step(model, *args):
        values = real_step(model, *args)
        calls.append(1)
        if len(calls) >= call:
            with torch.no_grad():
                model.decoder.state_dict()[next(iter(model.decoder.state_dict()))].fill_(math.inf)
        return values

    monkeypatch.setattr(train_drnet, "train_step", step)
