"""datasets/frames.py, `--dataset frames`: clips from a folder of frame folders and video files, on tiny trees
of fakes/frames.py and fakes/kth.py, whose frames say what they show; broken links, unreadable files and
folders are skipped and named; a run through main.py (e2e)."""

import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from fakes.frames import write_clip
from fakes.kth import write_fake_avi
from fakes.runs import dataset_flags
from PIL import Image

import train_drnet
from datasets import frames
from datasets.frames import FrameClips, numbered_frames
from datasets.registry import DATASETS, build_dataset
from main import main
from utils import DRNetError


def decoded(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame index, clip level) read from the halves of (..., C, 64, 64) frames."""
    levels = (batch * 255).round().long()
    return levels[..., 0, 32, 8] // 8 - 1, levels[..., 0, 32, 56]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Eleven clips: ten folders of 12 frames (clip_00 .. clip_09, levels 100 + i) and a 6-frame video."""
    data = tmp_path_factory.mktemp("frames")
    for i in range(10):
        write_clip(data / f"clip_{i:02d}", 12, 100 + i)
    write_fake_avi(data / "walk.avi", 6, 200)  # 160x120: resized to 64 px
    (data / "notes.txt").write_text("not a clip")
    (data / "empty").mkdir()
    return data


def test_frames_are_ordered_by_the_number_in_their_name(tmp_path):
    write_clip(tmp_path / "c", 12, 50, pattern="img{}.png")
    (tmp_path / "c" / "cover.png").write_bytes(b"")  # an image without a number: left out
    (tmp_path / "c" / "notes.txt").write_text("not a frame")
    ordered, unnumbered = numbered_frames(tmp_path / "c")
    assert [path.name for path in ordered] == [f"img{i}.png" for i in range(12)]  # img2 before img10
    assert [path.name for path in unnumbered] == ["cover.png"]
    Image.new("L", (8, 8)).save(tmp_path / "c" / "img007.png")
    with pytest.raises(DRNetError, match="two frames numbered 7 in .*img007.png and img7.png"):
        numbered_frames(tmp_path / "c")


def test_split_is_every_tenth_clip_or_the_test_list(root, tmp_path):
    test = FrameClips(str(root), "test", 64, 1, 4)
    train_set = FrameClips(str(root), "train", 64, 1, 4)
    assert [clip.name for clip in test.clips] == ["clip_00", "walk.avi"]  # sorted names 0 and 10
    assert [clip.name for clip in train_set.clips] == [f"clip_{i:02d}" for i in range(1, 10)]
    for i in range(3):
        write_clip(tmp_path / f"c{i}", 2, 10 * i)
    (tmp_path / "test.txt").write_text("# held out\nc1\n")
    assert [clip.name for clip in FrameClips(str(tmp_path), "test", 64, 3, 4).clips] == ["c1"]
    (tmp_path / "test.txt").write_text("c1\nc7\n")
    with pytest.raises(DRNetError, match="names 1 clip.* not in .*the first: c7"):
        FrameClips(str(tmp_path), "train", 64, 3, 4)
    (tmp_path / "test.txt").write_text("c0\nc1\nc2\n")
    with pytest.raises(DRNetError, match="no train clip"):
        FrameClips(str(tmp_path), "train", 64, 3, 4)


def test_drnet_batch_draws_four_frames_of_one_window_and_sequences_are_consecutive(root):
    clips = FrameClips(str(root), "train", 64, 3, 3)
    batch = clips.drnet_batch(8, torch.Generator().manual_seed(0))
    assert batch.shape == (4, 8, 3, 64, 64) and batch.dtype == torch.float32
    index, level = decoded(batch)
    assert (level == level[0]).all() and (index.amax(0) - index.amin(0) < 3).all()
    assert torch.equal(clips.drnet_batch(8, torch.Generator().manual_seed(0)), batch)  # same seed, same batch
    sequences = clips.sequence_batch(4, 12, torch.Generator().manual_seed(1))
    index, level = decoded(sequences)
    assert torch.equal(index, torch.arange(12).expand(4, -1)) and (level == level[:, :1]).all()
    with pytest.raises(DRNetError, match="no train clip has 13 frames .*longest has 12"):
        clips.sequence_batch(4, 13, torch.Generator())


def test_videos_are_decoded_once_and_resized(root, monkeypatch):
    calls = []
    real = frames.read_video
    monkeypatch.setattr(frames, "read_video", lambda *args: calls.append(args[0]) or real(*args))
    test = FrameClips(str(root), "test", 64, 1, 4)
    assert [clip.length for clip in test.clips] == [12, 6]
    clip = test._gather(torch.full((6,), 1), torch.arange(6))  # the video, frame by frame
    assert clip.shape == (6, 1, 64, 64)
    index, level = decoded(clip)
    assert index.tolist() == list(range(6)) and ((level - 200).abs() <= 2).all()  # MJPEG is lossy
    assert calls == [root / "walk.avi"]


def test_mixed_sizes_are_resized_and_grey_or_rgb_chosen(tmp_path):
    write_clip(tmp_path / "a", 3, 90, size=(160, 120))
    write_clip(tmp_path / "b", 3, 30, size=(32, 32))
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "b" / "frame_3.png")  # colour frame, mixed in
    grey, colour = (FrameClips(str(tmp_path), "train", 64, channels, 4) for channels in (1, 3))
    sequence = grey.sequence_batch(1, 4, torch.Generator())
    assert sequence.shape == (1, 4, 1, 64, 64) and decoded(sequence[0, :3])[0].tolist() == [0, 1, 2]
    last = colour.sequence_batch(1, 4, torch.Generator())[0, 3]
    assert torch.allclose(last[:, 0, 0], torch.tensor([200, 10, 10]) / 255)


def test_unreadable_files_are_named_and_skipped(tmp_path, caplog):
    for i in range(3):
        write_clip(tmp_path / f"c{i}", 5, 10 * i)
    (tmp_path / "c1" / "frame_2.png").write_bytes(b"not a png")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with caplog.at_level(logging.WARNING, logger="drnet"):
        clips = FrameClips(str(tmp_path), "train", 64, 1, 4)
    # Train: broken.mp4 is name 0, the test clip; c1 is cut at its broken frame into frames 0-1 and 3-4.
    assert [(clip.name, clip.length) for clip in clips.clips] == [("c0", 5), ("c1", 2), ("c1", 2), ("c2", 5)]
    assert f"unreadable frame {tmp_path / 'c1' / 'frame_2.png'}" in caplog.text
    with pytest.raises(DRNetError, match="no readable test clip .*unreadable video .*broken.mp4"):
        FrameClips(str(tmp_path), "test", 64, 1, 4)


@pytest.mark.parametrize("problem", ["empty", "missing", "channels"])
def test_unusable_root_is_one_clear_error(tmp_path, problem):
    (tmp_path / "clips" / "no_frames").mkdir(parents=True)
    root = tmp_path / ("gone" if problem == "missing" else "clips")
    expected = {"empty": "no clips in", "missing": "no folder", "channels": "channels 3.*or grey"}[problem]
    with pytest.raises(DRNetError, match=expected) as error:
        FrameClips(str(root), "train", 64, 2 if problem == "channels" else 3, 4)
    assert "\n" not in str(error.value)


def test_broken_links_and_unreadable_folders_of_a_frames_root_are_skipped_and_named(tmp_path, monkeypatch,
                                                                                   drnet_log):
    root = tmp_path / "clips"
    for index, name in enumerate(("a", "b", "c")):
        write_clip(root / name, 4, 100 + index)
    (root / "dangling.mp4").symlink_to(root / "missing.mp4")
    (root / "loop.mp4").symlink_to(root / "loop.mp4")
    locked = root / "locked"
    write_clip(locked, 4, 110)
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads it anyway: refuse as the file system would refuse another user
        real_iterdir = Path.iterdir

        def iterdir(path: Path):
            if path == locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_iterdir(path)

        monkeypatch.setattr(Path, "iterdir", iterdir)
    try:
        train = FrameClips(str(root), "train", 64, 3, 5)  # before: a traceback from the first broken entry
    finally:
        locked.chmod(0o755)
    assert sorted(clip.name for clip in train.clips) == ["b", "c"]  # "a" is the test clip (every 10th name)
    warnings = "\n".join(drnet_log)
    assert f"video {root / 'dangling.mp4'} is no readable file" in warnings
    assert f"video {root / 'loop.mp4'} is no readable file (a symbolic link to nothing, or one that loops)" in warnings
    assert f"cannot read folder {locked} (Permission denied): skipped" in warnings


@pytest.mark.e2e
def test_trains_through_main_with_the_frames_defaults(root, tmp_path, monkeypatch):
    monkeypatch.setattr(train_drnet, "TEST_CLIPS", 8)  # fewer fixed test clips: the same code paths
    run_dir = tmp_path / "run"
    main(dataset_flags("frames", root, run_dir, "--max_step", "5"))
    config = json.loads((run_dir / "config.json").read_text())
    expected = {k: v for k, v in DATASETS["frames"].items() if k != "loader"}
    assert {k: config[k] for k in expected} == expected
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["iteration"] == 2
    assert isinstance(build_dataset(config, "test"), FrameClips)
