"""The command line: flag parsing, a tiny end-to-end run, resume equivalence, load_model, and the errors."""

import argparse
import csv
import json
import math

import pytest
import torch

from datasets import registry
from engine.checkpoints import load_model
from main import build_parser, main
from utils import str2bool


@pytest.mark.parametrize("text,value", [("True", True), ("true", True), ("1", True), ("yes", True),
                                        ("False", False), ("false", False), ("0", False), ("no", False)])
def test_str2bool(text, value):
    assert str2bool(text) is value


def test_boolean_flags_parse_honestly():
    parse = build_parser().parse_args
    assert parse(["--use_skip", "False"]).use_skip is False
    assert parse(["--use_skip", "True"]).use_skip is True
    assert parse(["--use_skip"]).use_skip is True  # bare flag
    assert parse(["--use_skip", "0"]).use_skip is False
    assert parse([]).use_skip is None  # unset: the dataset's default applies
    assert parse(["--use_lstm", "True"]).use_lstm is True
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def one_line_error(capsys, argv, match):
    """Run main and check it fails with a non-zero exit and a single line naming the problem."""
    capsys.readouterr()  # forget what earlier runs of the test printed
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0], err


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


@pytest.mark.parametrize("use_skip", ["False", "True"])
def test_load_model_rebuilds_the_networks_from_the_checkpoint(tiny_args, tmp_path, use_skip):
    main(tiny_args("--use_skip", use_skip, "--max_iter", "1"))
    model = load_model(str(tmp_path / "run" / "checkpoint.pt"))
    assert not model.training
    for name in ("content_encoder", "pose_encoder", "decoder", "scene_discriminator"):
        assert isinstance(getattr(model, name), torch.nn.Module)
    clip_a, clip_b = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        pose = model.encode_pose(clip_b)
        frames = model.decode(model.encode_content(clip_a), pose)
    assert pose.shape == (3, 5) and frames.shape == (3, 3, 64, 64)
    assert len(model.encode_content(clip_a).skips) == (4 if use_skip == "True" else 0)


def test_error_unknown_dataset(capsys):
    one_line_error(capsys, ["--dataset", "cifar"], "invalid choice: 'cifar'")


def test_error_unsupported_image_size(capsys, tiny_args):
    one_line_error(capsys, tiny_args("--image_width", "96"), "unsupported --image_width 96")


def test_error_data_root_cannot_be_created(capsys, tiny_args, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    one_line_error(capsys, tiny_args("--data_root", str(blocker / "data")), "cannot create --data_root")


def test_error_resume_without_checkpoint(capsys, tiny_args):
    one_line_error(capsys, tiny_args("--resume", "True"), "nothing to resume")


def test_error_checkpoint_of_another_architecture(capsys, tiny_args):
    main(tiny_args("--max_iter", "1"))
    one_line_error(capsys, tiny_args("--resume", "--pose_dim", "7"), "different architecture: pose_dim=5")


def test_error_existing_run_without_resume(capsys, tiny_args):
    main(tiny_args("--max_iter", "1"))
    one_line_error(capsys, tiny_args(), "already holds a run")


def test_error_dataset_not_available_yet(capsys, tiny_args, monkeypatch):
    monkeypatch.setitem(registry.DATASETS, "norb", {**registry.DATASETS["norb"], "loader": None})
    one_line_error(capsys, tiny_args("--dataset", "norb"), "not available yet")


def test_error_bad_boolean(capsys):
    one_line_error(capsys, ["--use_skip", "maybe"], "expected a boolean")


def test_evaluate_without_a_checkpoint_says_how_to_get_one(capsys, tmp_path):
    run_dir = tmp_path / "none"
    with pytest.raises(SystemExit) as stop:
        main(["--evaluate", "--save_dir", str(run_dir), "--use_lstm", "True"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: no checkpoint at {run_dir / 'lstm' / 'checkpoint.pt'} to evaluate: train one with "
        f"`python main.py --dataset mnist --save_dir {run_dir} --use_lstm True`, or pass --checkpoint PATH"]


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


def test_learning_rate_given_on_resume_takes_effect(tiny_args, tmp_path):
    main(tiny_args())
    main(tiny_args("--resume", "True", "--max_iter", "3", "--lr", "0.0005", "--beta1", "0.8"))
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    for state in checkpoint["optimizers"].values():
        assert [(g["lr"], g["betas"][0]) for g in state["param_groups"]] == [(0.0005, 0.8)]
