"""utils.py: boolean flag values, the run-directory hold (exclusive, released with its block, a new directory
removed when nothing was written), atomic writes flushed before the rename, and the one line when a run
directory cannot be created."""

import os

import pytest
from fakes.runs import tiny_flags

from utils import DRNetError, atomic_write, hold_run_dir, str2bool


@pytest.mark.parametrize("text,value", [("True", True), ("true", True), ("1", True), ("yes", True),
                                        ("False", False), ("false", False), ("0", False), ("no", False)])
def test_str2bool(text, value):
    assert str2bool(text) is value


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


@pytest.mark.e2e
def test_a_run_directory_that_cannot_be_created_is_one_line(tmp_path, mnist_root, fails_with_one_line):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    fails_with_one_line(tiny_flags(blocker / "run", mnist_root), f"cannot create the run directory {blocker / 'run'}")


@pytest.mark.e2e
def test_a_save_dir_name_too_long_for_the_file_system_is_one_line(tmp_path, mnist_root, fails_with_one_line):
    run_dir = tmp_path / ("x" * 300)
    fails_with_one_line(tiny_flags(run_dir, mnist_root), f"cannot create the run directory {run_dir}: File name "
                                                         "too long")
    fails_with_one_line(["--evaluate", "--save_dir", str(run_dir)], "File name too long")
