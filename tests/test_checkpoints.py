"""Hostile cases, round 3 (issue 26): the lock race, silent corruption, full disks, kills between a checkpoint
and its report, the last tracebacks, and late or vague refusals.

Each case is reproduced as a user meets it: a real second process for the race, byte-level corruption of a
saved file, a small tmpfs for the full disk (a writer that fails the same way where mounting is not allowed),
real SIGKILL and SIGINT signals in a child process, and read-only bind mounts (read-only permissions without
root). The tiny DRNET run is test_hardening.py's (its checkpoint of iteration 1 and an empty test report).
"""

import errno
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_config import Collect, digest, fails_with_one_line, flags

import demo
import hubconf
import main
import utils
from datasets.frames import FrameClips
from engine import checkpoints
from engine.board import Board, tensorboard_missing
from engine.checkpoints import export_weights, load_checkpoint, tensor_checksum, with_checksums
from engine.config import check_clip_lengths
from utils import DRNetError, read_metrics

pytest_plugins = ["test_config"]  # its fixtures: data_root, trained (a tiny run at iteration 1) and run_dir (a copy)
REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "saved_results" / "drnet_mnist_fp16.pt"
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
    """A child process running main.main(argv) after the PRELUDE and `patch`."""
    return subprocess.Popen([sys.executable, "-c", PRELUDE + patch + "\nmain.main(sys.argv[1:])\n", *argv],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def report_rows(run_dir: Path) -> list[int]:
    """The iterations of a run's periodic test reports."""
    return [row["iteration"] for row in read_metrics(run_dir / "test_metrics.csv")]


def one_error_line(err: str) -> str:
    """The one error line of a command's stderr, which holds no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


# 1. The lock is taken before anything looks at the run directory.

SLOW_START = """
real_build = main.build_dataset

def slow_build(config, split):  # a slow start-up, as counting many videos of --dataset frames is
    Path(os.environ["STARTED"]).touch()
    while not Path(os.environ["GO_ON"]).exists():
        time.sleep(0.05)
    return real_build(config, split)

main.build_dataset = slow_build
"""


def test_a_run_that_starts_slowly_holds_its_directory_against_a_second_run(tmp_path, data_root, capsys):
    run_dir, started, go_on = tmp_path / "run", tmp_path / "started", tmp_path / "go_on"
    slow = start_child(SLOW_START, flags(run_dir, data_root, "--amp", "off"), STARTED=str(started),
                       GO_ON=str(go_on))
    try:
        deadline = time.monotonic() + 300
        while not started.exists():
            assert slow.poll() is None, slow.communicate()[1]
            assert time.monotonic() < deadline, "the slow run never reached its data"
            time.sleep(0.1)
        # Before the fix this second run found no lock yet, trained, and was then overwritten without a word.
        fails_with_one_line(capsys, flags(run_dir, data_root), f"{run_dir} is in use by another run (pid {slow.pid},")
        assert sorted(path.name for path in run_dir.iterdir()) == ["run.lock"]
        go_on.touch()
        _, err = slow.communicate(timeout=600)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.communicate()
    assert slow.returncode == 0, err
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 1 and report_rows(run_dir) == [1]


def test_a_refused_command_removes_the_run_directory_it_created(tmp_path, data_root, capsys):
    run_dir = tmp_path / "new" / "run"
    fails_with_one_line(capsys, ["--use_lstm", "True", *flags(run_dir, data_root)], "no trained DRNET at")
    assert not (tmp_path / "new").exists()


# 2. Corrupted weights are refused on load, by every path that loads them.

def flip_a_bit(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit in the middle of `tensor`'s bytes inside the saved file at `path`."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    at = bytes(data).find(raw)
    assert at >= 0, "the tensor's bytes are not in the file"
    data[at + len(raw) // 2] ^= 0x08
    path.write_bytes(bytes(data))


def refused_everywhere(path: Path, tmp_path: Path, capsys, expected: str) -> None:
    """Evaluation, the demo and torch.hub each refuse the model file at `path` with one line holding `expected`."""
    with pytest.raises(DRNetError, match=re.escape(expected)):
        load_checkpoint(path)
    fails_with_one_line(capsys, ["--evaluate", "--checkpoint", str(path)], expected)
    with pytest.raises(SystemExit) as stop:
        demo.main(["--model", str(path), "--out", str(tmp_path / "demo")])
    assert stop.value.code == 2 and expected in one_error_line(capsys.readouterr().err)
    with pytest.raises(DRNetError, match=re.escape(expected)):
        hubconf.drnet(str(path))


def test_one_flipped_bit_in_a_checkpoint_or_an_export_is_found_on_load(trained, tmp_path, capsys):
    checkpoint = torch.load(trained / "checkpoint.pt", weights_only=True)
    largest = max(checkpoint["model"].values(), key=torch.Tensor.numel)
    corrupt = tmp_path / "checkpoint.pt"
    shutil.copy(trained / "checkpoint.pt", corrupt)
    flip_a_bit(corrupt, largest)
    assert torch.load(corrupt, weights_only=True)["config"] == checkpoint["config"]  # torch alone sees nothing
    refused_everywhere(corrupt, tmp_path, capsys, f"{corrupt} is corrupt: its model tensors differ from the checksum")

    export = tmp_path / "export_fp16.pt"
    export_weights(checkpoint, export)
    flip_a_bit(export, largest.half())
    with pytest.raises(DRNetError, match="is corrupt: its model tensors differ"):
        load_checkpoint(export)


def test_non_finite_weights_are_refused_on_load_with_or_without_a_checksum(trained, tmp_path, capsys):
    checkpoint = torch.load(trained / "checkpoint.pt", weights_only=True)
    name = next(key for key, value in checkpoint["model"].items() if value.is_floating_point())
    checkpoint["model"][name] = checkpoint["model"][name].clone()
    checkpoint["model"][name].view(-1)[0] = math.inf
    without = {key: value for key, value in checkpoint.items() if key != "checksums"}  # as files before checksums
    torch.save(without, tmp_path / "old.pt")
    torch.save(with_checksums(checkpoint), tmp_path / "new.pt")
    for path in (tmp_path / "old.pt", tmp_path / "new.pt"):
        # Before: --evaluate crashed inside scikit-learn, the demo printed `content transfer nan` and exited 0.
        refused_everywhere(path, tmp_path, capsys, f"{path} holds non-finite weights (NaN or infinity in "
                                                   f"model.{name})")


def test_every_checkpoint_and_export_carries_the_checksums_of_its_tensors(trained, tmp_path):
    checkpoint = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert "model" in checkpoint["checksums"] and "rng" in checkpoint["checksums"]
    for part, checksum in checkpoint["checksums"].items():
        assert checksum == tensor_checksum(checkpoint[part])
    assert digest(trained / "checkpoints" / "iter_0000001.pt") == digest(trained / "checkpoint.pt")
    export_weights(checkpoint, tmp_path / "export.pt")
    exported = torch.load(tmp_path / "export.pt", weights_only=True)
    assert exported["checksums"] == {"model": tensor_checksum(exported["model"])}  # of the half tensors, as stored
    assert next(iter(exported["model"].values())).dtype == torch.float16
    checkpoints.load_model(tmp_path / "export.pt")


def test_files_without_checksums_still_load_and_the_shipped_model_is_left_as_it_is(trained, tmp_path):
    checkpoint = torch.load(trained / "checkpoint.pt", weights_only=True)
    torch.save({key: value for key, value in checkpoint.items() if key != "checksums"}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["iteration"] == 1
    if not SHIPPED.is_file():
        pytest.skip("this copy ships no model file")
    before = digest(SHIPPED)
    assert hasattr(checkpoints.load_model(SHIPPED), "predict")
    assert digest(SHIPPED) == before and "checksums" not in torch.load(SHIPPED, weights_only=True)


def test_the_tensor_checksum_sees_every_bit_name_dtype_and_shape_but_not_the_order():
    base = tensor_checksum({"a": torch.arange(6.0), "b": {"c": torch.ones(2, 3)}, "d": [torch.tensor(7)]})
    assert tensor_checksum({"d": [torch.tensor(7)], "b": {"c": torch.ones(2, 3)}, "a": torch.arange(6.0)}) == base
    flipped = torch.arange(6.0)
    flipped.view(torch.int32)[2] ^= 1
    variants = [{"a": flipped}, {"a": torch.arange(6.0).double()}, {"a": torch.arange(6.0).view(2, 3)},
                {"x": torch.arange(6.0)}]
    for variant in variants:
        state = {"a": torch.arange(6.0), "b": {"c": torch.ones(2, 3)}, "d": [torch.tensor(7)], **variant}
        state = {k: v for k, v in state.items() if k != "a" or "x" not in variant}
        assert tensor_checksum(state) != base
    assert len(tensor_checksum({"w": torch.ones(3, dtype=torch.bfloat16)})) == 64


# 3. A full disk is one line for every writer of checkpoints.

class FillingFile:
    """A file that takes `free` bytes, then fails each write as a full disk does (ENOSPC)."""

    def __init__(self, file, free: int):
        self.file, self.free = file, free

    def write(self, data) -> int:
        if len(data) > self.free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.free -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self) -> "FillingFile":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


@pytest.fixture
def full_folder(tmp_path, monkeypatch):
    """A folder with 1 MB of space: a tmpfs where one can be mounted (root), else one whose atomic writes
    (utils.open) fail with ENOSPC beyond 1 MB, raised from inside torch.save's zip writer as on a full disk."""
    folder, size = tmp_path / "small", 1 << 20
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    if os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0:
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
        return

    def filling_open(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        used = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p != Path(path))
        return FillingFile(file, size - used) if Path(path).is_relative_to(folder) else file

    monkeypatch.setattr(utils, "open", filling_open, raising=False)
    yield folder


def small_and_large(kind: str) -> tuple[dict, dict]:
    """Checkpoints of `kind` (drnet, lstm, export) that fit in 1 MB and that do not."""
    def state(iteration: int, size: int) -> dict:
        weights = {"w": torch.randn(size)}
        checkpoint = {"kind": "lstm" if kind == "lstm" else "drnet", "config": {}, "iteration": iteration,
                      "model": weights, "optimizers": {}, "rng": {"torch": torch.get_rng_state()}}
        return {**checkpoint, "lstm": {"w": torch.randn(size)}} if kind == "lstm" else checkpoint

    return state(1, 1000), state(2, 600_000)


@pytest.mark.parametrize("kind", ["drnet", "lstm", "export"])
def test_a_full_disk_is_one_line_for_every_writer_and_keeps_the_previous_file(full_folder, kind):
    small, large = small_and_large(kind)
    if kind == "export":
        path = full_folder / "model_fp16.pt"
        export_weights(small, path)
        write = lambda: export_weights(large, path)  # noqa: E731
    else:
        path = full_folder / "checkpoint.pt"
        checkpoints.write_checkpoints(full_folder, small, 1, keep=5)
        write = lambda: checkpoints.write_checkpoints(full_folder, large, 2, keep=5)  # noqa: E731
    before = digest(path)
    with pytest.raises(DRNetError) as error:  # before: RuntimeError "[enforce fail at inline_container.cc...]"
        write()
    message = str(error.value)
    assert "\n" not in message
    for text in (f"cannot write {path}: no space left (", "MB needed, ", f"MB free in {full_folder}); "
                 f"the previous {path.name} is unchanged"):
        assert text in message, message
    assert digest(path) == before and load_checkpoint(path)["iteration"] == 1
    assert not list(full_folder.rglob("*.tmp"))


# 4. A run killed between its checkpoint and its report gets the report when resumed.

KILL_AFTER_CHECKPOINT_2 = """
real_copy = checkpoints.copy_to_periodic

def copy_then_die(run_dir, iteration):  # the checkpoint of `iteration` is complete, its report not begun
    periodic = real_copy(run_dir, iteration)
    if iteration == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return periodic

checkpoints.copy_to_periodic = copy_then_die
"""


def killed_at_2(argv: list[str], run_dir: Path) -> None:
    """Run main.main(argv) in a child process that SIGKILL ends right after the checkpoint of iteration 2."""
    child = start_child(KILL_AFTER_CHECKPOINT_2, argv)
    _, err = child.communicate(timeout=600)
    assert child.returncode == -signal.SIGKILL, err
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 2 and report_rows(run_dir) == [1]


def test_a_drnet_run_killed_before_its_report_writes_it_when_resumed(tmp_path, data_root):
    run_dir = tmp_path / "run"
    killed_at_2(flags(run_dir, data_root, "--max_iter", "2", "--amp", "off"), run_dir)
    assert not (run_dir / "samples" / "analogy_0000002.png").exists()
    main.main(flags(run_dir, data_root, "--resume", "True", "--max_iter", "3"))
    assert report_rows(run_dir) == [1, 2, 3]
    assert (run_dir / "samples" / "analogy_0000002.png").is_file()
    assert (run_dir / "samples" / "reconstruction_0000002.png").is_file()
    assert "iteration 2: writing its test report, which the run that saved it did not finish" in (
        run_dir / "train.log").read_text()


def test_an_lstm_run_killed_before_its_last_report_writes_it_when_resumed(trained, tmp_path, data_root):
    drnet_dir = Path(shutil.copytree(trained, tmp_path / "drnet"))
    argv = flags(drnet_dir, data_root, "--use_lstm", "True", "--max_iter", "2", "--amp", "off", "--n_past", "2",
                 "--n_future", "2", "--rollout_len", "3", "--rnn_size", "8", "--rnn_layers", "1")
    killed_at_2(argv, drnet_dir / "lstm")
    main.main([*argv, "--resume", "True"])  # at --max_iter already: only the report is left to do
    assert report_rows(drnet_dir / "lstm") == [1, 2]
    assert (drnet_dir / "lstm" / "samples" / "rollout_0000002.gif").is_file()


# 5. Tracebacks where one line belongs.

def write_clip(folder: Path, frames: int) -> None:
    """A clip folder of `frames` numbered 8x8 RGB frames."""
    folder.mkdir(parents=True)
    for index in range(frames):
        Image.fromarray(np.full((8, 8, 3), 40 * index, dtype=np.uint8)).save(folder / f"frame_{index}.png")


def test_broken_links_and_unreadable_folders_of_a_frames_root_are_skipped_and_named(tmp_path, monkeypatch):
    root = tmp_path / "clips"
    for name in ("a", "b", "c"):
        write_clip(root / name, 4)
    (root / "dangling.mp4").symlink_to(root / "missing.mp4")
    (root / "loop.mp4").symlink_to(root / "loop.mp4")
    locked = root / "locked"
    write_clip(locked, 4)
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads it anyway: refuse as the file system would refuse another user
        real_iterdir = Path.iterdir

        def iterdir(path: Path):
            if path == locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_iterdir(path)

        monkeypatch.setattr(Path, "iterdir", iterdir)
    collect = Collect()
    logging.getLogger("drnet").addHandler(collect)
    try:
        train = FrameClips(str(root), "train", 64, 3, 5)  # before: a traceback from the first broken entry
    finally:
        logging.getLogger("drnet").removeHandler(collect)
        locked.chmod(0o755)
    assert sorted(clip.name for clip in train.clips) == ["b", "c"]  # "a" is the test clip (every 10th name)
    warnings = "\n".join(collect.messages)
    assert f"video {root / 'dangling.mp4'} is no readable file" in warnings
    assert f"video {root / 'loop.mp4'} is no readable file (a symbolic link to nothing, or one that loops)" in warnings
    assert f"cannot read folder {locked} (Permission denied): skipped" in warnings


def test_a_save_dir_name_too_long_for_the_file_system_is_one_line(tmp_path, data_root, capsys):
    run_dir = tmp_path / ("x" * 300)
    fails_with_one_line(capsys, flags(run_dir, data_root), f"cannot create the run directory {run_dir}: File name "
                                                           "too long")
    fails_with_one_line(capsys, ["--evaluate", "--save_dir", str(run_dir)], "File name too long")


@pytest.fixture
def make_read_only():
    """Make a folder read-only: a read-only bind mount on itself (root), else its write permission removed."""
    mounted, locked = [], []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            locked.append(folder)
            return
        if subprocess.run(["mount", "--bind", folder, folder], capture_output=True).returncode != 0:
            pytest.skip("no bind mounts here")
        mounted.append(folder)
        subprocess.run(["mount", "-o", "remount,ro,bind", folder], check=True)

    yield make
    for folder in mounted:
        subprocess.run(["umount", folder], check=True)
    for folder in locked:
        folder.chmod(0o755)


@pytest.mark.skipif(tensorboard_missing() is not None, reason="needs the tensorboard package")
def test_a_tensorboard_folder_that_is_a_file_is_one_line(run_dir, data_root, capsys):
    (run_dir / "tensorboard").write_text("a file where the event files would go")
    argv = flags(run_dir, data_root, "--resume", "True", "--max_iter", "2", "--tensorboard", "True")
    fails_with_one_line(capsys, argv,
                        f"cannot write --tensorboard True event files in {run_dir / 'tensorboard'}: it is a file, "
                        "not a folder")


@pytest.mark.skipif(tensorboard_missing() is not None, reason="needs the tensorboard package")
def test_a_read_only_tensorboard_folder_is_one_error_and_no_thread_traceback(tmp_path, capfd, make_read_only):
    (tmp_path / "tensorboard").mkdir()
    make_read_only(tmp_path / "tensorboard")
    with pytest.raises(DRNetError, match=f"cannot write --tensorboard True event files in {tmp_path}/tensorboard: "):
        Board(tmp_path)  # before: an OSError here, and a traceback from the event writer's thread
    time.sleep(0.5)
    assert "Traceback" not in capfd.readouterr().err


def test_evaluate_on_a_read_only_file_system_is_one_line_before_the_evaluation(trained, tmp_path, capsys,
                                                                               make_read_only, monkeypatch):
    folder = tmp_path / "read_only"
    folder.mkdir()
    shutil.copy(trained / "checkpoint.pt", folder / "checkpoint.pt")
    make_read_only(folder)
    monkeypatch.setattr("evaluation.evaluate.evaluate", lambda *args: pytest.fail("evaluated before trying the folder"))
    fails_with_one_line(capsys, ["--evaluate", "--checkpoint", str(folder / "checkpoint.pt")],
                        f"cannot write the evaluation in {folder / 'eval'}: ")


def test_demo_out_at_a_file_or_a_read_only_place_is_one_line(tmp_path, capsys, make_read_only):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    make_read_only(read_only)
    for out, why in ((blocker, "it is a file, not a folder"), (blocker / "demo", "Not a directory"),
                     (read_only, "")):
        with pytest.raises(SystemExit) as stop:
            demo.main(["--out", str(out)])
        assert stop.value.code == 2
        assert f"cannot write the pictures (--out) in {out}: {why}" in one_error_line(capsys.readouterr().err)


SECOND_CTRL_C_IN_SAVE = """
real_save = torch.save

def interrupted_save(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: stop after this iteration
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again, while the checkpoint is being written
    real_save(*args, **kwargs)

torch.save = interrupted_save
"""


def test_a_second_ctrl_c_during_a_save_is_one_line_and_keeps_the_checkpoint(run_dir, data_root):
    before = digest(run_dir / "checkpoint.pt")
    child = start_child(SECOND_CTRL_C_IN_SAVE, flags(run_dir, data_root, "--resume", "True", "--max_iter", "2",
                                                     "--amp", "off"))
    _, err = child.communicate(timeout=600)
    assert child.returncode == 130, err
    assert "stopped by Ctrl-C; checkpoints are written whole or not at all" in one_error_line(err)
    assert digest(run_dir / "checkpoint.pt") == before and not list(run_dir.rglob("*.tmp"))


# 6. Late and vague.

def test_frame_clips_too_short_are_refused_before_the_run_directory_naming_the_flags(tmp_path, capsys):
    root, run_dir = tmp_path / "clips", tmp_path / "run"
    for name in ("a", "b", "c"):
        write_clip(root / name, 4)
    fails_with_one_line(capsys, ["--dataset", "frames", "--data_root", str(root), "--save_dir", str(run_dir),
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


def test_resuming_a_run_with_nothing_left_to_do_says_so_and_changes_nothing(run_dir, data_root, capsys):
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    torch.save(with_checksums({**checkpoint, "iteration": 2}), run_dir / "checkpoint.pt")  # a run at iteration 2
    main.main(flags(run_dir, data_root, "--resume", "True", "--max_iter", "1"))  # its last report was missing
    assert report_rows(run_dir) == [1, 2]
    written = {name: digest(run_dir / name) for name in ("config.json", "test_metrics.csv", "checkpoint.pt")}
    capsys.readouterr()
    main.main(flags(run_dir, data_root, "--resume", "True", "--max_iter", "1"))  # before: silent, config rewritten
    assert f"{run_dir} is at iteration 2 (--max_iter 1): nothing left to do, nothing changed" in capsys.readouterr().err
    assert {name: digest(run_dir / name) for name in written} == written
