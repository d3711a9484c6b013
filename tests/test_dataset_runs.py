"""KTH, SUNCG chairs and smallNORB end to end through main.py, on tiny fake datasets in their real formats.

Each dataset trains DRNET for two iterations with its own defaults (architectures, dims, channels) and
then the pose LSTM on it, which `--evaluate` then scores; smallNORB also resumes (with the loader
thread) to the weights of one uninterrupted run, SUNCG resumes its second iteration on a tree with the real
set's elevation folder names. The fixed test clips behind the periodic pictures and
metrics are made fewer here (module constants of train_drnet.py and train_lstm.py): that only saves time, the code
paths are the same.
"""

import csv
import json
from pathlib import Path

import pytest
import torch
from fakes.kth import write_fake_raw
from PIL import Image, ImageSequence
from test_norb import write_split
from test_suncg import ELEVATIONS, OBJECTS, VIEWS, write_tree

import train_drnet
import train_lstm
from datasets.prepare.convert_kth import convert_kth
from datasets.suncg import suncg_chair_dir, view_file_name
from engine import pictures
from main import main

KTH_SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def few_test_clips():
    """Few fixed test clips for the periodic pictures and metrics: the code paths stay the same."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_drnet, "TEST_CLIPS", 8)
        patch.setattr(train_lstm, "METRIC_CLIPS", 4)
        patch.setattr(train_lstm, "PICTURE_CLIPS", 2)
        yield


def flags(dataset: str, data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny CPU run of `dataset`: batch 4, two iterations, pictures and a checkpoint at the end."""
    return ["--dataset", dataset, "--data_root", str(data_root), "--save_dir", str(run_dir), "--device", "cpu",
            "--batch_size", "4", "--max_iter", "2", "--save_iters", "2", *extra]


def lstm_flags(dataset: str, data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny LSTM run on the DRNET of `run_dir`."""
    return [*flags(dataset, data_root, run_dir, "--use_lstm", "True", "--n_past", "2", "--n_future", "3"), *extra]


def rows(csv_path: Path) -> list[dict[str, str]]:
    """The rows of a metrics CSV."""
    return list(csv.DictReader(csv_path.read_text().splitlines()))


def iterations(csv_path: Path) -> list[str]:
    """The iteration column of a metrics CSV."""
    return [row["iteration"] for row in rows(csv_path)]


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
    main(["--evaluate", "--checkpoint", str(run_dir / "lstm" / "checkpoint.pt"), "--eval_clips", "6",
          "--eval_steps", "3", "--device", "cpu"])
    results = json.loads((run_dir / "lstm" / "eval" / "metrics.json").read_text())
    assert set(results["skipped"]) == {"swap", "identity"}  # only Moving MNIST has ground-truth swaps and digits
    assert len(results["prediction"]["mse"]) == 3 and results["reconstruction"]["mse"] > 0
    return results


@pytest.fixture(scope="module")
def kth_root(tmp_path_factory) -> Path:
    """Tiny fake KTH videos converted at 64 px with convert_kth.py."""
    root = tmp_path_factory.mktemp("kth")
    write_fake_raw(root)
    assert not convert_kth(root, KTH_SIZE, workers=2).failed
    return root


def test_kth_trains_at_64_px_then_its_lstm_on_short_segments(kth_root, tmp_path):
    run_dir = tmp_path / "kth"
    main(flags("kth", kth_root, run_dir, "--image_width", str(KTH_SIZE)))
    check_drnet_run(run_dir, {"image_width": KTH_SIZE, "channels": 1, "content_encoder": "vgg16",
                              "pose_encoder": "resnet18", "decoder": "vgg16", "use_skip": True, "pose_dim": 24})
    # The longest fake test segment has 24 frames: the 30-frame rollout's ground truth (and so the
    # step-10 metric) has to come from shorter test clips, and the rollout still runs its full length.
    main(lstm_flags("kth", kth_root, run_dir, "--image_width", str(KTH_SIZE), "--rollout_len", "30"))
    columns = check_lstm_run(run_dir / "lstm", frames=2 + 30)
    assert columns == ["iteration", "mse_step1", "copy_last_step1", "mse_step10", "copy_last_step10"]
    assert {"class_from_content", "person_from_pose"} <= set(evaluate_lstm(run_dir)["probes"])


def test_kth_missing_data_is_one_line_naming_both_commands(tmp_path, capsys):
    empty = tmp_path / "empty"
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "kth", "--data_root", str(empty), "--save_dir", str(tmp_path / "run"), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # The run's first log line (its directory and config), then the error in one line, no traceback.
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err
    assert f"sh datasets/prepare/download_kth.sh {empty}" in errors[0]
    assert f"python -m datasets.prepare.convert_kth --data_root {empty} --image_width 128" in errors[0]
    assert not (tmp_path / "run" / "config.json").exists()  # nothing was built or written first


@pytest.fixture(scope="module")
def norb_root(tmp_path_factory) -> Path:
    """Tiny smallNORB train and test files in the real binary-matrix format."""
    root = tmp_path_factory.mktemp("norb")
    write_split(root, "train", gz=False)
    write_split(root, "test", gz=False)
    return root


@pytest.fixture(scope="module")
def norb_run(norb_root, tmp_path_factory) -> Path:
    """A two-iteration smallNORB DRNET run, batches drawn in the training loop."""
    run_dir = tmp_path_factory.mktemp("norb_runs") / "straight"
    main(flags("norb", norb_root, run_dir))
    return run_dir


def test_norb_trains_with_its_defaults(norb_run):
    check_drnet_run(norb_run, {"image_width": 64, "channels": 1, "content_encoder": "resnet18",
                               "pose_encoder": "resnet18", "decoder": "dcgan", "use_skip": False, "pose_dim": 10,
                               "data_threads": 0})


def test_norb_resumed_with_a_loader_thread_equals_one_run(norb_root, norb_run, tmp_path):
    run_dir = tmp_path / "resumed"
    main(flags("norb", norb_root, run_dir, "--max_iter", "1", "--data_threads", "3"))
    main(flags("norb", norb_root, run_dir, "--resume", "True"))  # keeps --data_threads 3 from the checkpoint
    assert json.loads((run_dir / "config.json").read_text())["data_threads"] == 3
    straight = torch.load(norb_run / "checkpoint.pt", weights_only=True)
    resumed = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert torch.equal(straight["rng"]["data"], resumed["rng"]["data"])
    assert rows(run_dir / "metrics.csv") == rows(norb_run / "metrics.csv")


def test_norb_lstm_rolls_out_past_the_18_azimuths(norb_root, norb_run):
    main(lstm_flags("norb", norb_root, norb_run, "--rollout_len", "20"))
    columns = check_lstm_run(norb_run / "lstm", frames=2 + 20)
    assert "mse_step10" in columns  # clips are cyclic: 12 frames of ground truth exist
    probes = evaluate_lstm(norb_run)["probes"]
    assert {"category_from_content", "category_new_instances_from_content", "category_new_instances_from_pose",
            "category_new_instances_chance"} <= set(probes)


@pytest.fixture(scope="module")
def suncg_root(tmp_path_factory) -> Path:
    """A tiny SUNCG chair tree with the real folder names: seven chairs (five train, two test: the probes' two
    parts) at the five elevations elevation_-1.00 .. elevation_2.00, one of the train chairs lacking one."""
    root = tmp_path_factory.mktemp("suncg")
    write_tree(root, objects=OBJECTS[:7])
    missing = suncg_chair_dir(str(root)) / sorted(OBJECTS[:7])[0] / f"elevation_{ELEVATIONS[0]}"
    for view in VIEWS:
        (missing / view_file_name(view)).unlink()
    missing.rmdir()
    return root


def test_suncg_trains_resumes_then_its_lstm_with_the_real_folder_names(suncg_root, tmp_path, capsys):
    run_dir = tmp_path / "suncg"
    main(flags("suncg", suncg_root, run_dir, "--data_threads", "1", "--max_iter", "1"))
    assert "SUNCG chairs train: 1 of 5 chairs lack some elevation" in capsys.readouterr().err
    main(flags("suncg", suncg_root, run_dir, "--resume", "True"))
    check_drnet_run(run_dir, {"image_width": 64, "channels": 3, "content_encoder": "resnet18",
                              "pose_encoder": "resnet18", "decoder": "dcgan", "use_skip": False, "pose_dim": 10,
                              "data_threads": 1})
    main(lstm_flags("suncg", suncg_root, run_dir, "--rollout_len", "40"))
    columns = check_lstm_run(run_dir / "lstm", frames=2 + 40)
    assert "mse_step10" in columns
    probes = evaluate_lstm(run_dir)["probes"]
    assert {"elevation_from_content", "elevation_from_pose"} <= set(probes)
    assert probes["elevation_chance"] < 1  # the probes met several elevations, not one
