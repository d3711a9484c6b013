"""engine/checkpoints.py: what a checkpoint holds and how it is written and read. Checksums find a flipped bit
and non-finite weights on every path that loads a model; a full disk is one line for every writer and keeps the
previous file; non-finite weights are never saved; a resumed run removes stale temporary files, restores a
missing periodic copy and writes the report a killed run did not; load_model rebuilds the networks.

Most tests read or copy `saved_run` (conftest: a tiny DRNET run at iteration 1, saved without training); the
full disk is a small tmpfs where one can be mounted, else a writer that fails the same way; the kills are real
SIGKILLs in a child process (fakes.runs.start_child).
"""

import argparse
import errno
import math
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from fakes.runs import digest, poison_weights_from, report_rows, start_child, tiny_flags

import demo
import hubconf
import main
import utils
from engine import checkpoints
from engine.checkpoints import export_weights, load_checkpoint, load_model, tensor_checksum, with_checksums
from utils import DRNetError

SHIPPED = Path(__file__).resolve().parent.parent / "saved_results" / "drnet_mnist_fp16.pt"


# Checksums and non-finite weights.

def flip_a_bit(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit in the middle of `tensor`'s bytes inside the saved file at `path`."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    at = bytes(data).find(raw)
    assert at >= 0, "the tensor's bytes are not in the file"
    data[at + len(raw) // 2] ^= 0x08
    path.write_bytes(bytes(data))


def refused_everywhere(path: Path, tmp_path: Path, fails_with_one_line, expected: str) -> None:
    """Evaluation, the demo and torch.hub each refuse the model file at `path` with one line holding `expected`."""
    with pytest.raises(DRNetError, match=re.escape(expected)):
        load_checkpoint(path)
    fails_with_one_line(["--evaluate", "--checkpoint", str(path)], expected)
    fails_with_one_line(["--model", str(path), "--out", str(tmp_path / "demo")], expected, command=demo.main)
    with pytest.raises(DRNetError, match=re.escape(expected)):
        hubconf.drnet(str(path))


@pytest.mark.e2e
def test_one_flipped_bit_in_a_checkpoint_or_an_export_is_found_on_load(saved_run, tmp_path, fails_with_one_line):
    checkpoint = torch.load(saved_run / "checkpoint.pt", weights_only=True)
    largest = max(checkpoint["model"].values(), key=torch.Tensor.numel)
    corrupt = tmp_path / "checkpoint.pt"
    shutil.copy(saved_run / "checkpoint.pt", corrupt)
    flip_a_bit(corrupt, largest)
    assert torch.load(corrupt, weights_only=True)["config"] == checkpoint["config"]  # torch alone sees nothing
    refused_everywhere(corrupt, tmp_path, fails_with_one_line,
                       f"{corrupt} is corrupt: its model tensors differ from the checksum")

    export = tmp_path / "export_fp16.pt"
    export_weights(checkpoint, export)
    flip_a_bit(export, largest.half())
    with pytest.raises(DRNetError, match="is corrupt: its model tensors differ"):
        load_checkpoint(export)


@pytest.mark.e2e
def test_non_finite_weights_are_refused_on_load_with_or_without_a_checksum(saved_run, tmp_path,
                                                                          fails_with_one_line):
    checkpoint = torch.load(saved_run / "checkpoint.pt", weights_only=True)
    name = next(key for key, value in checkpoint["model"].items() if value.is_floating_point())
    checkpoint["model"][name] = checkpoint["model"][name].clone()
    checkpoint["model"][name].view(-1)[0] = math.inf
    without = {key: value for key, value in checkpoint.items() if key != "checksums"}  # as files before checksums
    torch.save(without, tmp_path / "old.pt")
    torch.save(with_checksums(checkpoint), tmp_path / "new.pt")
    for path in (tmp_path / "old.pt", tmp_path / "new.pt"):
        # Before: --evaluate crashed inside scikit-learn, the demo printed `content transfer nan` and exited 0.
        refused_everywhere(path, tmp_path, fails_with_one_line,
                           f"{path} holds non-finite weights (NaN or infinity in model.{name})")


def test_every_checkpoint_and_export_carries_the_checksums_of_its_tensors(saved_run, tmp_path):
    checkpoint = torch.load(saved_run / "checkpoint.pt", weights_only=True)
    assert "model" in checkpoint["checksums"] and "rng" in checkpoint["checksums"]
    for part, checksum in checkpoint["checksums"].items():
        assert checksum == tensor_checksum(checkpoint[part])
    assert digest(saved_run / "checkpoints" / "iter_0000001.pt") == digest(saved_run / "checkpoint.pt")
    export_weights(checkpoint, tmp_path / "export.pt")
    exported = torch.load(tmp_path / "export.pt", weights_only=True)
    assert exported["checksums"] == {"model": tensor_checksum(exported["model"])}  # of the half tensors, as stored
    assert next(iter(exported["model"].values())).dtype == torch.float16
    checkpoints.load_model(tmp_path / "export.pt")


def test_files_without_checksums_still_load_and_the_shipped_model_is_left_as_it_is(saved_run, tmp_path):
    checkpoint = torch.load(saved_run / "checkpoint.pt", weights_only=True)
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


def test_a_checkpoint_holding_code_is_refused_without_inviting_to_run_it(tmp_path):
    torch.save({"config": {}, "model": {}, "extra": argparse.Namespace(a=1)}, tmp_path / "unsafe.pt")
    with pytest.raises(DRNetError) as error:
        load_checkpoint(tmp_path / "unsafe.pt")
    message = str(error.value)
    assert "is not a plain checkpoint of this project: it holds a Python object (argparse.Namespace)" in message
    assert "weights_only" not in message and "\n" not in message


# A full disk, and weights that became non-finite.

@pytest.mark.e2e
def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_previous_checkpoint(run_dir, mnist_root,
                                                                                 fails_with_one_line, monkeypatch):
    before = digest(run_dir / "checkpoint.pt")

    def disk_full(state, sink):
        sink.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    fails_with_one_line(tiny_flags(run_dir, mnist_root, "--resume", "True", "--max_iter", "2"),
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


@pytest.mark.e2e
def test_non_finite_weights_are_never_saved(run_dir, mnist_root, fails_with_one_line, monkeypatch):
    before = digest(run_dir / "checkpoint.pt")
    poison_weights_from(monkeypatch, 1)
    fails_with_one_line(tiny_flags(run_dir, mnist_root, "--resume", "True", "--max_iter", "2"),
                        "DRNET stopped at iteration 2: the weights or optimizer state became non-finite",
                        "(model.decoder.",
                        f"the last good checkpoint {run_dir / 'checkpoint.pt'} is kept; try a lower --lr")
    assert digest(run_dir / "checkpoint.pt") == before
    assert not (run_dir / "checkpoints" / "iter_0000002.pt").exists()


# Resuming.

@pytest.mark.e2e
def test_stale_temporary_files_are_removed_and_a_missing_periodic_copy_restored(run_dir, mnist_root):
    periodic = run_dir / "checkpoints" / "iter_0000001.pt"
    latest = digest(run_dir / "checkpoint.pt")
    periodic.unlink()  # killed while copying it: the copy never landed
    stale = [run_dir / "checkpoint.pt.tmp", run_dir / "checkpoints" / "iter_0000001.pt.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    nested = run_dir / "lstm" / "checkpoint.pt.tmp"  # another run's (the LSTM stage's): not ours to remove
    nested.parent.mkdir()
    nested.write_bytes(b"being written")
    main.main(tiny_flags(run_dir, mnist_root, "--resume", "True", "--max_iter", "2"))
    assert not any(path.exists() for path in stale) and nested.exists()
    assert digest(periodic) == latest
    log_text = (run_dir / "train.log").read_text()
    assert f"removed {stale[0]}, left half-written" in log_text and f"restored the missing periodic copy {periodic}" \
        in log_text


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


@pytest.mark.e2e
def test_a_drnet_run_killed_before_its_report_writes_it_when_resumed(tmp_path, mnist_root):
    run_dir = tmp_path / "run"
    killed_at_2(tiny_flags(run_dir, mnist_root, "--max_iter", "2", "--amp", "off"), run_dir)
    assert not (run_dir / "samples" / "analogy_0000002.png").exists()
    main.main(tiny_flags(run_dir, mnist_root, "--resume", "True", "--max_iter", "3"))
    assert report_rows(run_dir) == [1, 2, 3]
    assert (run_dir / "samples" / "analogy_0000002.png").is_file()
    assert (run_dir / "samples" / "reconstruction_0000002.png").is_file()
    assert "iteration 2: writing its test report, which the run that saved it did not finish" in (
        run_dir / "train.log").read_text()


@pytest.mark.e2e
def test_an_lstm_run_killed_before_its_last_report_writes_it_when_resumed(saved_run, tmp_path, mnist_root):
    drnet_dir = Path(shutil.copytree(saved_run, tmp_path / "drnet"))
    argv = tiny_flags(drnet_dir, mnist_root, "--use_lstm", "True", "--max_iter", "2", "--amp", "off", "--n_past", "2",
                      "--n_future", "2", "--rollout_len", "3", "--rnn_size", "8", "--rnn_layers", "1")
    killed_at_2(argv, drnet_dir / "lstm")
    main.main([*argv, "--resume", "True"])  # at --max_iter already: only the report is left to do
    assert report_rows(drnet_dir / "lstm") == [1, 2]
    assert (drnet_dir / "lstm" / "samples" / "rollout_0000002.gif").is_file()


@pytest.mark.e2e
def test_resume_without_a_checkpoint_is_one_line(tiny_args, fails_with_one_line):
    fails_with_one_line(tiny_args("--resume", "True"), "nothing to resume", alone=True)


@pytest.mark.e2e
def test_a_checkpoint_of_another_architecture_is_one_line(tiny_args, fails_with_one_line):
    main.main(tiny_args("--max_iter", "1"))
    fails_with_one_line(tiny_args("--resume", "--pose_dim", "7"), "different architecture: pose_dim=5", alone=True)


@pytest.mark.e2e
@pytest.mark.parametrize("use_skip", ["False", "True"])
def test_load_model_rebuilds_the_networks_from_the_checkpoint(tiny_args, tmp_path, use_skip):
    main.main(tiny_args("--use_skip", use_skip, "--max_iter", "1"))
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
