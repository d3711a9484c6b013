"""main.py end to end: a tiny run writes every output, resume and --start_iter continue it as one run would, the
run directory is held from before anything looks at it, `--evaluate` uses the checkpoint it names, and what
main.py itself reports in one line (a full disk, a second Ctrl-C, a folder it cannot write).

Most runs are tiny DRNET runs in process; the runs racing for a directory or stopped by signals are child
processes (fakes.runs.start_child)."""

import csv
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from fakes.runs import REPO, digest, report_rows, start_child, tiny_flags

import train_drnet
from datasets import registry
from engine.checkpoints import load_checkpoint
from evaluation import evaluate
from main import build_parser, main

pytestmark = pytest.mark.e2e


def test_two_iteration_run_writes_every_output(tiny_args, tmp_path):
    main(tiny_args())
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "mnist" and config["pose_dim"] == 5 and config["beta"] == 0.0001
    assert config["use_skip"] is False and config["batch_size"] == 4
    assert "iteration 2" in (run / "train.log").read_text()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["iteration"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"iteration", "rec", "sim", "adv", "disc_loss", "disc_acc"}
    assert all(0 <= float(r["disc_acc"]) <= 1 for r in rows)
    test_rows = list(csv.DictReader(open(run / "test_metrics.csv")))
    assert [r["iteration"] for r in test_rows] == ["1", "2"] and float(test_rows[-1]["test_rec_mse"]) > 0
    assert float(test_rows[-1]["test_content_spread"]) > 0
    assert list(test_rows[0])[:2] == ["iteration", "test_content_transfer"]  # the disentanglement signal leads
    assert all(math.isfinite(float(test_rows[-1][k])) for k in ("test_content_transfer", "test_content_ratio"))
    for name in ("checkpoint.pt", "checkpoints/iter_0000001.pt", "checkpoints/iter_0000002.pt",
                 "samples/reconstruction_0000002.png", "samples/analogy_0000002.png", "loss_curves.png"):
        assert (run / name).stat().st_size > 0, name
    assert not list(run.rglob("*.tmp"))  # atomic writes leave no temporary files
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["iteration"] == 2 and set(checkpoint["optimizers"]) == {"main", "discriminator"}
    assert {"data", "torch"} <= set(checkpoint["rng"])


def test_resume_gives_the_same_weights_as_one_run(tiny_args, tmp_path):
    main(tiny_args("--max_iter", "4", "--save_iters", "10", run="straight"))
    main(tiny_args("--max_iter", "2", "--save_iters", "10", run="resumed"))
    main(tiny_args("--max_iter", "4", "--resume", "True", run="resumed"))
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert resumed["iteration"] == straight["iteration"] == 4
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    rows = list(csv.DictReader(open(tmp_path / "resumed" / "metrics.csv")))
    assert [r["iteration"] for r in rows] == ["1", "2", "3", "4"]
    straight_rows = list(csv.DictReader(open(tmp_path / "straight" / "metrics.csv")))
    assert rows == straight_rows


def test_start_iter_resumes_from_that_iteration(tiny_args, tmp_path):
    main(tiny_args("--max_iter", "3"))
    main(tiny_args("--max_iter", "3", "--start_iter", "1"))
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["iteration"] for r in rows] == ["1", "2", "3"]


def test_learning_rate_given_on_resume_takes_effect(tiny_args, tmp_path):
    main(tiny_args())
    main(tiny_args("--resume", "True", "--max_iter", "3", "--lr", "0.0005", "--beta1", "0.8"))
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    for state in checkpoint["optimizers"].values():
        assert [(g["lr"], g["betas"][0]) for g in state["param_groups"]] == [(0.0005, 0.8)]


def test_help_lists_the_model_defaults_of_every_dataset(capsys, monkeypatch):
    # An added dataset shows up too: the table is generated from the registry.
    monkeypatch.setitem(registry.DATASETS, "toy", {**registry.DATASETS["mnist"], "image_width": 128, "channels": 1,
                                                   "content_encoder": "vgg16", "pose_dim": 7, "use_skip": True})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    help_text = capsys.readouterr().out
    table = help_text[help_text.index("model defaults of each --dataset"):].splitlines()[2:]  # after the header
    rows = {line.split()[0]: line.split() for line in table}
    assert list(rows) == list(registry.DATASETS)
    for name, entry in registry.DATASETS.items():
        row = rows[name]
        assert row == [name, str(entry["image_width"]), str(entry["channels"]),
                       f"{entry['content_encoder']}/{entry['pose_encoder']}", entry["decoder"], str(entry["use_skip"]),
                       str(entry["content_dim"]), str(entry["pose_dim"])]


# The run directory is held from before anything looks at it.

def test_a_second_run_is_refused_while_the_first_holds_the_directory_and_not_after_it_is_killed(
        run_dir, mnist_root, fails_with_one_line):
    command = [sys.executable, "main.py", *tiny_flags(run_dir, mnist_root, "--resume", "True", "--max_iter", "1000000",
                                                      "--save_iters", "1000000")]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        lock = run_dir / "run.lock"
        deadline = time.monotonic() + 300
        while not (lock.is_file() and lock.read_text().startswith(f"pid {first.pid},")):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run never took the directory"
            time.sleep(0.2)
        line = fails_with_one_line(tiny_flags(run_dir, mnist_root, "--resume", "True"), "is in use by another run",
                                   f"pid {first.pid}", "--max_iter 1000000")
        assert line.endswith("choose another --save_dir")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    main(tiny_flags(run_dir, mnist_root, "--resume", "True"))  # the kill released the lock
    assert (run_dir / "run.lock").read_text().startswith(f"pid {os.getpid()},")


SLOW_START = """
real_build = main.build_dataset

def slow_build(config, split):  # a slow start-up, as counting many videos of --dataset frames is
    Path(os.environ["STARTED"]).touch()
    while not Path(os.environ["GO_ON"]).exists():
        time.sleep(0.05)
    return real_build(config, split)

main.build_dataset = slow_build
"""


def test_a_run_that_starts_slowly_holds_its_directory_against_a_second_run(tmp_path, mnist_root, fails_with_one_line):
    run_dir, started, go_on = tmp_path / "run", tmp_path / "started", tmp_path / "go_on"
    slow = start_child(SLOW_START, tiny_flags(run_dir, mnist_root, "--amp", "off"), STARTED=str(started),
                       GO_ON=str(go_on))
    try:
        deadline = time.monotonic() + 300
        while not started.exists():
            assert slow.poll() is None, slow.communicate()[1]
            assert time.monotonic() < deadline, "the slow run never reached its data"
            time.sleep(0.1)
        # Had the slow run not taken the lock first, this run would train and then be overwritten silently.
        fails_with_one_line(tiny_flags(run_dir, mnist_root), f"{run_dir} is in use by another run (pid {slow.pid},")
        assert sorted(path.name for path in run_dir.iterdir()) == ["run.lock"]
        go_on.touch()
        _, err = slow.communicate(timeout=600)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.communicate()
    assert slow.returncode == 0, err
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 1 and report_rows(run_dir) == [1]


def test_a_refused_command_removes_the_run_directory_it_created(tmp_path, mnist_root, fails_with_one_line):
    run_dir = tmp_path / "new" / "run"
    fails_with_one_line(["--use_lstm", "True", *tiny_flags(run_dir, mnist_root)], "no trained DRNET at")
    assert not (tmp_path / "new").exists()


# What main.py reports itself.

def test_a_full_disk_elsewhere_in_the_run_is_one_line_too(run_dir, mnist_root, fails_with_one_line, monkeypatch):
    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(train_drnet, "MetricsLog", disk_full)
    fails_with_one_line(tiny_flags(run_dir, mnist_root, "--resume", "True", "--max_iter", "2"),
                        f"no space left on the device writing {run_dir / 'metrics.csv'}; free some space")


SECOND_CTRL_C_IN_SAVE = """
real_save = torch.save

def interrupted_save(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: stop after this iteration
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again, while the checkpoint is being written
    real_save(*args, **kwargs)

torch.save = interrupted_save
"""


def test_a_second_ctrl_c_during_a_save_is_one_line_and_keeps_the_checkpoint(run_dir, mnist_root, one_error_line):
    before = digest(run_dir / "checkpoint.pt")
    child = start_child(SECOND_CTRL_C_IN_SAVE, tiny_flags(run_dir, mnist_root, "--resume", "True", "--max_iter", "2",
                                                          "--amp", "off"))
    _, err = child.communicate(timeout=600)
    assert child.returncode == 130, err
    assert "stopped by Ctrl-C; checkpoints are written whole or not at all" in one_error_line(err)
    assert digest(run_dir / "checkpoint.pt") == before and not list(run_dir.rglob("*.tmp"))


# --evaluate.

@pytest.fixture
def evaluations(monkeypatch) -> list[tuple]:
    """The evaluations main asks for, recorded instead of run."""
    calls = []
    monkeypatch.setattr(evaluate, "evaluate", lambda *args: calls.append(args))
    return calls


def test_evaluate_refuses_a_dataset_the_checkpoint_was_not_trained_on(saved_run, fails_with_one_line, evaluations):
    checkpoint = str(saved_run / "checkpoint.pt")
    fails_with_one_line(["--evaluate", "--checkpoint", checkpoint, "--dataset", "norb"],
                        f"{checkpoint} is a mnist checkpoint, not norb: evaluation uses the checkpoint's dataset")
    main(["--evaluate", "--checkpoint", checkpoint, "--dataset", "mnist"])
    main(["--evaluate", "--checkpoint", checkpoint])
    assert [str(call[0]) for call in evaluations] == [checkpoint, checkpoint]


@pytest.mark.skipif(torch.cuda.is_available(), reason="--gpu applies here")
def test_a_gpu_number_without_cuda_is_said_to_be_ignored(saved_run, capsys, evaluations):
    main(["--evaluate", "--checkpoint", str(saved_run / "checkpoint.pt"), "--gpu", "5"])
    assert "warning: --gpu 5 ignored: the run is on cpu, not on a CUDA GPU" in capsys.readouterr().err
    assert evaluations[0][2] == torch.device("cpu")


def test_evaluate_on_a_read_only_file_system_is_one_line_before_the_evaluation(saved_run, tmp_path, make_read_only,
                                                                               fails_with_one_line, monkeypatch):
    folder = tmp_path / "read_only"
    folder.mkdir()
    shutil.copy(saved_run / "checkpoint.pt", folder / "checkpoint.pt")
    make_read_only(folder)
    monkeypatch.setattr(evaluate, "evaluate", lambda *args: pytest.fail("evaluated before trying the folder"))
    fails_with_one_line(["--evaluate", "--checkpoint", str(folder / "checkpoint.pt")],
                        f"cannot write the evaluation in {folder / 'eval'}: ")

