"""--tensorboard: event files mirror the CSV metrics and pictures, roll-out GIFs become videos; one error without it."""

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main
from engine.board import Board


def events(run_dir):
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    return accumulator


def test_a_run_with_tensorboard_writes_its_metrics_and_pictures(tmp_path, tiny_args):
    main.main(tiny_args("--tensorboard", "True"))
    written = events(tmp_path / "run")
    assert {"metrics/rec", "metrics/disc_acc", "test_metrics/test_content_transfer"} <= set(written.Tags()["scalars"])
    assert [e.step for e in written.Scalars("metrics/rec")] == [1, 2]  # one point per CSV row
    csv_rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert written.Scalars("metrics/rec")[1].value == pytest.approx(float(csv_rows[1].split(",")[1]), rel=1e-4)
    assert set(written.Tags()["images"]) == {"analogy", "reconstruction"}
    assert [e.step for e in written.Images("analogy")] == [1, 2]


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


def test_missing_tensorboard_is_one_error_before_anything_is_written(tmp_path, tiny_args, monkeypatch, capsys):
    monkeypatch.setattr(main, "tensorboard_missing", lambda: "--tensorboard needs the tensorboard package")
    with pytest.raises(SystemExit) as exit_info:
        main.main(tiny_args("--tensorboard", "True"))
    assert exit_info.value.code == 2 and "needs the tensorboard package" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
