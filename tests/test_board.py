"""engine/board.py, --tensorboard: event files mirror the CSV metrics and pictures, roll-out GIFs become videos;
one error without the package, and one line where the event files cannot be written."""

import time

import numpy as np
import pytest
from fakes.runs import tiny_flags
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main
from engine.board import Board
from utils import DRNetError


def events(run_dir):
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    return accumulator


@pytest.mark.e2e
def test_a_run_with_tensorboard_writes_its_metrics_and_pictures(tmp_path, tiny_args):
    main.main(tiny_args("--tensorboard", "True"))
    written = events(tmp_path / "run")
    assert {"metrics/rec", "metrics/disc_acc", "test_metrics/test_content_transfer"} <= set(written.Tags()["scalars"])
    assert [e.step for e in written.Scalars("metrics/rec")] == [1, 2]  # one point per CSV row
    csv_rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert written.Scalars("metrics/rec")[1].value == pytest.approx(float(csv_rows[1].split(",")[1]), rel=1e-4)
    assert set(written.Tags()["images"]) == {"analogy", "reconstruction"}
    assert [e.step for e in written.Images("analogy")] == [1, 2]


@pytest.mark.e2e
def test_without_the_flag_no_event_files(tmp_path, tiny_args):
    main.main(tiny_args("--max_iter", "1"))
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_a_rollout_gif_becomes_a_video_summary(tmp_path):
    frames = [Image.fromarray(np.full((8, 12, 3), 40 * i, dtype=np.uint8)) for i in range(3)]
    gif = tmp_path / "rollout_0000007.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    board = Board(tmp_path)
    board.pictures(7, [gif])
    board.close()
    (image,) = events(tmp_path).Images("rollout")
    assert (image.step, image.width, image.height) == (7, 12, 8)
    assert image.encoded_image_string == gif.read_bytes()  # the animated GIF itself, as add_video stores it


@pytest.mark.e2e
def test_missing_tensorboard_is_one_error_before_anything_is_written(tmp_path, tiny_args, monkeypatch,
                                                                     fails_with_one_line):
    monkeypatch.setattr(main, "tensorboard_missing", lambda: "--tensorboard needs the tensorboard package")
    fails_with_one_line(tiny_args("--tensorboard", "True"), "needs the tensorboard package")
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_a_tensorboard_folder_that_is_a_file_is_one_line(run_dir, mnist_root, fails_with_one_line):
    (run_dir / "tensorboard").write_text("a file where the event files would go")
    argv = tiny_flags(run_dir, mnist_root, "--resume", "True", "--max_iter", "2", "--tensorboard", "True")
    fails_with_one_line(argv,
                        f"cannot write --tensorboard True event files in {run_dir / 'tensorboard'}: it is a file, "
                        "not a folder")


def test_a_read_only_tensorboard_folder_is_one_error_and_no_thread_traceback(tmp_path, capfd, make_read_only):
    (tmp_path / "tensorboard").mkdir()
    make_read_only(tmp_path / "tensorboard")
    with pytest.raises(DRNetError, match=f"cannot write --tensorboard True event files in {tmp_path}/tensorboard: "):
        Board(tmp_path)  # before: an OSError here, and a traceback from the event writer's thread
    time.sleep(0.5)
    assert "Traceback" not in capfd.readouterr().err
