"""engine/config.py: every bad value is one line before anything is written (the refusals run main.main, marked
e2e), an existing run, missing data, clips too short for the stage and a run with nothing left to do are said in
one line, and any flag values at all give a valid configuration or one line (hypothesis)."""

import contextlib
import io
import math
from pathlib import Path

import pytest
import torch
from fakes.frames import write_clip
from fakes.runs import digest, report_rows, tiny_flags
from hypothesis import given, settings
from hypothesis import strategies as st

import main
from datasets import registry
from datasets.frames import FrameClips
from datasets.prefetch import MAX_AHEAD
from engine.checkpoints import load_checkpoint, with_checksums
from engine.config import LSTM_COUNTS, check_clip_lengths, resolve_run
from utils import DRNetError


@pytest.mark.e2e
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
def test_a_bad_value_is_one_line_and_writes_no_run_directory(tmp_path, mnist_root, fails_with_one_line, extra,
                                                             expected):
    if "cuda" in extra and torch.cuda.is_available() or "mps" in extra and torch.backends.mps.is_available():
        pytest.skip("the device exists here")
    run_dir = tmp_path / "run"
    fails_with_one_line(tiny_flags(run_dir, mnist_root, *extra), expected)
    assert not run_dir.exists()


@pytest.mark.e2e
def test_an_unsupported_image_size_is_one_line(tiny_args, fails_with_one_line):
    fails_with_one_line(tiny_args("--image_width", "96"), "unsupported --image_width 96", alone=True)


@pytest.mark.e2e
def test_a_data_root_that_cannot_be_created_is_one_line(tiny_args, tmp_path, fails_with_one_line):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    fails_with_one_line(tiny_args("--data_root", str(blocker / "data")), "cannot create --data_root", alone=True)


@pytest.mark.e2e
def test_a_missing_data_root_is_reported_not_created(tmp_path, tiny_args, fails_with_one_line):
    line = fails_with_one_line(tiny_args("--dataset", "kth", "--data_root", str(tmp_path / "dta")), alone=True)
    assert f"--data_root {tmp_path / 'dta'} is missing: the kth data must be there already" in line
    assert not (tmp_path / "dta").exists()
    resolve_run(main.parse_flags(tiny_args("--data_root", str(tmp_path / "mn"))))  # MNIST downloads into it
    assert (tmp_path / "mn").is_dir()


@pytest.mark.e2e
def test_a_dataset_not_available_yet_is_one_line(tiny_args, fails_with_one_line, monkeypatch):
    monkeypatch.setitem(registry.DATASETS, "norb", {**registry.DATASETS["norb"], "loader": None})
    fails_with_one_line(tiny_args("--dataset", "norb"), "not available yet", alone=True)


@pytest.mark.e2e
def test_an_existing_run_without_resume_is_one_line(tiny_args, fails_with_one_line):
    main.main(tiny_args("--max_iter", "1"))
    fails_with_one_line(tiny_args(), "already holds a run", alone=True)


@pytest.mark.e2e
def test_resuming_an_lstm_run_without_use_lstm_is_one_line(saved_run, mnist_root, tmp_path, fails_with_one_line):
    lstm_dir = tmp_path / "drnet" / "lstm"
    lstm_dir.mkdir(parents=True)
    checkpoint = torch.load(saved_run / "checkpoint.pt", weights_only=True)
    torch.save({**checkpoint, "kind": "lstm"}, lstm_dir / "checkpoint.pt")
    fails_with_one_line(tiny_flags(lstm_dir, mnist_root, "--resume", "True"),
                        "is the checkpoint of a pose-LSTM run, not of a DRNET run: continue it with --use_lstm True "
                        f"--resume True --save_dir {tmp_path / 'drnet'}")


@pytest.mark.e2e
def test_evaluate_without_a_checkpoint_says_how_to_get_one(tmp_path, fails_with_one_line):
    run_dir = tmp_path / "none"
    fails_with_one_line(["--evaluate", "--save_dir", str(run_dir), "--use_lstm", "True"],
                        f"error: no checkpoint at {run_dir / 'lstm' / 'checkpoint.pt'} to evaluate: train one with "
                        f"`python main.py --dataset mnist --save_dir {run_dir} --use_lstm True`, or pass --checkpoint "
                        "PATH", alone=True)


@pytest.mark.e2e
def test_frame_clips_too_short_are_refused_before_the_run_directory_naming_the_flags(tmp_path, fails_with_one_line):
    root, run_dir = tmp_path / "clips", tmp_path / "run"
    for index, name in enumerate(("a", "b", "c")):
        write_clip(root / name, 4, 100 + index)
    fails_with_one_line(["--dataset", "frames", "--data_root", str(root), "--save_dir", str(run_dir),
                         "--max_step", "20", "--batch_size", "4", "--device", "cpu"],
                        f"the longest test clip in {root} has 4 frames, fewer than the 10 consecutive frames the "
                        "periodic analogy pictures show (min(--max_step, 10)): lower --max_step to 4, or add longer "
                        "clips")
    assert not run_dir.exists()
    data = FrameClips(str(root), "train", 64, 3, 4), FrameClips(str(root), "test", 64, 3, 4)
    check_clip_lengths({"max_step": 4, "data_root": str(root)}, data, lstm=False)
    with pytest.raises(DRNetError, match=r"the longest train clip in .* has 4 frames, fewer than the --n_past \+ "
                                         r"--n_future = 5 frames the LSTM stage trains on: lower them, or add"):
        check_clip_lengths({"n_past": 3, "n_future": 2, "data_root": str(root)}, data, lstm=True)


@pytest.mark.e2e
def test_resuming_a_run_with_nothing_left_to_do_says_so_and_changes_nothing(run_dir, mnist_root, capsys):
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    torch.save(with_checksums({**checkpoint, "iteration": 2}), run_dir / "checkpoint.pt")  # a run at iteration 2
    main.main(tiny_flags(run_dir, mnist_root, "--resume", "True", "--max_iter", "1"))  # its last report was missing
    assert report_rows(run_dir) == [1, 2]
    written = {name: digest(run_dir / name) for name in ("config.json", "test_metrics.csv", "checkpoint.pt")}
    capsys.readouterr()
    main.main(tiny_flags(run_dir, mnist_root, "--resume", "True", "--max_iter", "1"))  # before: config rewritten
    assert f"{run_dir} is at iteration 2 (--max_iter 1): nothing left to do, nothing changed" in capsys.readouterr().err
    assert {name: digest(run_dir / name) for name in written} == written


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
