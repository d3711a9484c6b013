"""The SUNCG chairs loader (datasets/suncg.py) on the tiny trees of fakes/suncg.py, whose views say what they show:
the real set's elevation folder names, whose name order differs from their value order, and a tree with integer
names (2 and 10, where a name sort puts 10 first)."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes.runs import check_drnet_run, check_lstm_run, dataset_flags, evaluate_lstm
from fakes.suncg import (
    ELEVATION_VALUES,
    ELEVATIONS,
    OBJECTS,
    SORTED_OBJECTS,
    VIEWS,
    elevation_code,
    object_code,
    write_tree,
)
from PIL import Image

import main
from datasets import suncg
from datasets.suncg import SuncgClips, elevation_value, split_objects, suncg_chair_dir, view_file_name
from utils import DRNetError


@pytest.fixture(scope="module")
def suncg_root(tmp_path_factory):
    """A data root holding the tiny chair tree."""
    root = tmp_path_factory.mktemp("suncg")
    write_tree(root)
    return root


@pytest.fixture(scope="module")
def train_clips(suncg_root):
    """Train clips at 64 px, RGB, max_step 5 (windows shorter than the 36 views)."""
    return SuncgClips(str(suncg_root), "train", 64, 3, 5)


def encoded(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(view 1..36, object code, elevation code) read from the top-left pixel of (..., 3, S, S) frames."""
    pixel = (frames[..., :, 0, 0] * 255).round().long()
    return pixel[..., 0] // 7, pixel[..., 1], pixel[..., 2]


def expected_codes(clips: SuncgClips, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Object and elevation codes of (N, 2) label rows (object index, elevation rank)."""
    objects = torch.tensor([object_code(clips.objects[index]) for index in labels[:, 0].tolist()])
    return objects, torch.tensor([elevation_code(clips.elevations[rank]) for rank in labels[:, 1].tolist()])


def test_split_is_sorted_deterministic_and_disjoint(suncg_root, train_clips):
    test_clips = SuncgClips(str(suncg_root), "test", 64, 3, 5)
    assert train_clips.objects == SORTED_OBJECTS[:6]  # floor(0.85 * 8) = 6
    assert test_clips.objects == SORTED_OBJECTS[6:]
    assert SuncgClips(str(suncg_root), "train", 64, 3, 5).objects == train_clips.objects
    names = [f"object_{i:02d}" for i in range(20)]
    assert split_objects(names[::-1], "train") == names[:17]
    assert split_objects(names, "test") == names[17:]
    with pytest.raises(DRNetError, match="at least 2 objects"):
        split_objects(["only"], "train")


def test_elevation_folder_names_are_signed_decimals_or_integers():
    for name, value in [("elevation_1.25", 1.25), ("elevation_-1.00", -1.0), ("elevation_0.50", 0.5),
                        ("elevation_2.00", 2.0), ("elevation_-0.25", -0.25), ("elevation_2", 2.0),
                        ("elevation_10", 10.0), ("elevation_+0.5", 0.5), ("elevation_-.5", -0.5)]:
        assert elevation_value(name) == value, name
    for name in ("elevation_", "elevation_abc", "elevation_1e3", "elevation_nan", "elevation_inf", "elevation_1.",
                 "elevation_1.2.3", "elevation_ 1", "Elevation_1", "elevation_1.25.bak", "notes.txt"):
        assert elevation_value(name) is None, name


def test_clips_are_object_elevation_pairs_with_views_in_order(train_clips):
    # Labels are the elevations' ranks by value (logistic-regression probes need classes); the values
    # themselves are in `elevations`, and the blue code of every frame is checked against them.
    assert train_clips.elevations == ELEVATION_VALUES
    labels = train_clips.clip_labels()
    assert labels.dtype == torch.int64
    assert labels.tolist() == [[index, rank] for index in range(6) for rank in range(5)]
    assert train_clips.num_clips == 30
    object_codes, elevation_codes = expected_codes(train_clips, labels)
    for clip in range(train_clips.num_clips):
        frames = train_clips.clip_sequence(clip, 0, 36)
        assert frames.shape == (36, 3, 64, 64) and frames.dtype == torch.float32
        views, objects, elevations = encoded(frames)
        assert views.tolist() == list(VIEWS)
        assert (objects == object_codes[clip]).all() and (elevations == elevation_codes[clip]).all()


def test_clip_sequence_wraps_round_the_circle(train_clips):
    views, _, _ = encoded(train_clips.clip_sequence(3, 30, 10))
    assert views.tolist() == [31, 32, 33, 34, 35, 36, 1, 2, 3, 4]


def test_drnet_batch_draws_four_frames_of_one_window(train_clips):
    batch = train_clips.drnet_batch(300, torch.Generator().manual_seed(1))
    assert batch.shape == (4, 300, 3, 64, 64) and batch.dtype == torch.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    views, objects, elevations = encoded(batch)
    assert (objects == objects[0]).all() and (elevations == elevations[0]).all()
    # All four lie in one cyclic window of max_step = 5 views: some rotation fits a span of 4.
    spans = torch.stack([(views - views[k]) % 36 for k in range(4)]).amax(dim=1).amin(dim=0)
    assert spans.max() == 4
    assert ((views.amax(dim=0) - views.amin(dim=0)) > 4).any()  # windows wrap from view 36 to 1


def test_batches_repeat_with_the_same_seed(train_clips):
    first = train_clips.drnet_batch(6, torch.Generator().manual_seed(3))
    assert torch.equal(first, train_clips.drnet_batch(6, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, train_clips.drnet_batch(6, torch.Generator().manual_seed(4)))
    sequence = train_clips.sequence_batch(3, 7, torch.Generator().manual_seed(3))
    assert torch.equal(sequence, train_clips.sequence_batch(3, 7, torch.Generator().manual_seed(3)))


def test_sequence_batch_is_consecutive_in_one_clip(train_clips):
    frames = train_clips.sequence_batch(5, 40, torch.Generator().manual_seed(5))
    assert frames.shape == (5, 40, 3, 64, 64)
    views, objects, elevations = encoded(frames)
    assert (torch.diff(views, dim=1) % 36 == 1).all()
    assert (objects == objects[:, :1]).all() and (elevations == elevations[:, :1]).all()


def test_probe_batches_hold_two_views_of_a_window_and_parts_share_no_chair(train_clips, tmp_path):
    assert train_clips.num_identities == 6 and train_clips.label_columns == ("elevation",)
    chairs = {}
    for part in (0, 1, None):
        batch = train_clips.probe_batch(60, torch.Generator().manual_seed(1), part)
        assert batch.frames.shape == (60, 2, 3, 64, 64) and batch.labels.shape == (60, 1)
        views, objects, elevations = encoded(batch.frames)
        assert (objects[:, 0] == objects[:, 1]).all() and (elevations[:, 0] == elevations[:, 1]).all()
        assert ((views[:, 1] - views[:, 0]) % 36 < 5).all()  # the window's first view, then one of max_step
        identity_rows = torch.stack([batch.identities, batch.labels[:, 0]], dim=1)  # (object index, elevation)
        object_codes, elevation_codes = expected_codes(train_clips, identity_rows)
        assert torch.equal(objects[:, 0], object_codes) and torch.equal(elevations[:, 0], elevation_codes)
        chairs[part] = {train_clips.objects[index] for index in batch.identities.tolist()}
    # The six train chairs in sorted order: even indices in part 0, odd in part 1.
    assert chairs[0] == set(SORTED_OBJECTS[0:6:2]) and chairs[1] == set(SORTED_OBJECTS[1:6:2])
    assert chairs[None] == chairs[0] | chairs[1]
    write_tree(tmp_path, objects=SORTED_OBJECTS[:3], elevations=("0.50",))
    lone = SuncgClips(str(tmp_path), "test", 64, 3, 5)  # one chair: no two parts
    assert lone.num_identities == 1
    with pytest.raises(DRNetError, match="no clip in probe part 1"):
        lone.probe_batch(4, torch.Generator(), 1)


def test_cache_is_bounded_and_reused(suncg_root, monkeypatch):
    reads = []
    original = suncg.read_view

    def counting_read_view(path, image_size, channels):
        reads.append(path.name)
        return original(path, image_size, channels)

    monkeypatch.setattr(suncg, "read_view", counting_read_view)
    cached = SuncgClips(str(suncg_root), "train", 64, 3, 5, cache_frames=3)
    cached.clip_sequence(0, 0, 3)  # reads views 1, 2, 3
    cached.clip_sequence(0, 0, 3)  # served from the cache
    cached.clip_sequence(0, 0, 1)  # view 1 becomes the most recently used
    cached.clip_sequence(0, 3, 1)  # reads view 4 and drops the least recently used, view 2
    cached.clip_sequence(0, 0, 1)
    cached.clip_sequence(0, 2, 1)
    cached.clip_sequence(0, 1, 1)  # view 2 was dropped: read again
    assert reads == [view_file_name(view) for view in (1, 2, 3, 4, 2)]
    assert len(cached._cache) == 3


def test_grey_and_resized_frames(suncg_root):
    grey = SuncgClips(str(suncg_root), "train", 32, 1, 5)
    frames = grey.clip_sequence(0, 0, 2)
    assert frames.shape == (2, 1, 32, 32)
    colour = (7, object_code(SORTED_OBJECTS[0]), elevation_code(ELEVATION_VALUES[0]))  # clip 0: the lowest
    expected = Image.new("RGB", (1, 1), colour).convert("L").getpixel((0, 0))
    assert torch.allclose(frames[0], torch.full((1, 32, 32), expected / 255))
    with pytest.raises(DRNetError, match="channels"):
        SuncgClips(str(suncg_root), "train", 64, 2, 5)


def test_missing_folder_explains_the_dataset_is_gone(tmp_path):
    with pytest.raises(DRNetError) as error:
        SuncgClips(str(tmp_path), "train", 64, 3, 20)
    message = str(error.value)
    assert "no longer distributed" in message and "--data_root" in message
    assert str(suncg_chair_dir(str(tmp_path))) in message and "p200-64_<i>.png" in message
    assert "\n" not in message


def test_missing_and_corrupt_views_name_the_file(tmp_path):
    write_tree(tmp_path, objects=SORTED_OBJECTS[:2], elevations=("-1.00",))
    folder = suncg_chair_dir(str(tmp_path)) / SORTED_OBJECTS[0] / "elevation_-1.00"  # clip 0 of "train"
    (folder / view_file_name(5)).unlink()
    (folder / view_file_name(6)).write_bytes(b"\x89PNG\r\n\x1a\n" + np.arange(50, dtype=np.uint8).tobytes())
    clips = SuncgClips(str(tmp_path), "train", 64, 3, 5)
    for view in (5, 6):
        with pytest.raises(DRNetError, match="cannot read SUNCG view") as error:
            clips.clip_sequence(0, view - 1, 1)
        assert str(folder / view_file_name(view)) in str(error.value)


def test_integer_folder_names_still_load_in_value_order(tmp_path):
    write_tree(tmp_path, objects=SORTED_OBJECTS[:2], elevations=(10, 2))
    clips = SuncgClips(str(tmp_path), "train", 64, 3, 5)
    assert clips.elevations == [2.0, 10.0]  # by value: a name sort would put 10 first
    assert clips.clip_labels().tolist() == [[0, 0], [0, 1]]
    _, elevations = expected_codes(clips, clips.clip_labels())
    assert elevations.tolist() == [elevation_code(2), elevation_code(10)]
    for clip in range(2):
        assert encoded(clips.clip_sequence(clip, 0, 1))[2].item() == elevations[clip]


def test_missing_elevations_load_what_is_there_and_are_logged(tmp_path, caplog, monkeypatch):
    # setup_logging (run by other tests) stops the drnet logger from propagating to caplog's handler.
    monkeypatch.setattr(logging.getLogger("drnet"), "propagate", True)
    caplog.set_level(logging.INFO, logger="drnet")
    write_tree(tmp_path, objects=SORTED_OBJECTS[:3])  # two train chairs, one test chair
    chair_dir = suncg_chair_dir(str(tmp_path))
    for name, elevation in [(SORTED_OBJECTS[0], "0.50"), (SORTED_OBJECTS[0], "2.00"), (SORTED_OBJECTS[2], "-1.00")]:
        for view in VIEWS:
            (chair_dir / name / f"elevation_{elevation}" / view_file_name(view)).unlink()
        (chair_dir / name / f"elevation_{elevation}").rmdir()
    train = SuncgClips(str(tmp_path), "train", 64, 3, 5)
    assert train.clip_labels().tolist() == [[0, 0], [0, 1], [0, 3]] + [[1, rank] for rank in range(5)]
    assert (f"SUNCG chairs train: 1 of 2 chairs lack some elevation (the first: {SORTED_OBJECTS[0]}); their 2 "
            "missing clips are skipped") in caplog.text
    _, elevations = expected_codes(train, train.clip_labels())
    assert [encoded(train.clip_sequence(clip, 0, 1))[2].item() for clip in range(8)] == elevations.tolist()
    # The test chair has no elevation -1.00: the ranks still count it, so a rank names one value in both splits.
    test = SuncgClips(str(tmp_path), "test", 64, 3, 5)
    assert test.elevations == ELEVATION_VALUES and test.clip_labels().tolist() == [[0, 1], [0, 2], [0, 3], [0, 4]]
    assert "SUNCG chairs test: 1 of 1 chairs lack some elevation" in caplog.text


def test_object_without_elevation_folders_is_reported(tmp_path):
    write_tree(tmp_path, objects=SORTED_OBJECTS[:3], elevations=("0.50",))
    empty = suncg_chair_dir(str(tmp_path)) / "0_empty_chair"  # sorts first, so it is in "train"
    (empty / "elevation_high").mkdir(parents=True)  # neither a number
    (empty / "elevation_1.25").write_text("")  # nor a folder
    with pytest.raises(DRNetError, match="no elevation_<e> folders") as error:
        SuncgClips(str(tmp_path), "train", 64, 3, 5)
    assert str(empty) in str(error.value) and "signed decimal" in str(error.value)
    assert "\n" not in str(error.value)


def test_two_folders_for_one_elevation_are_reported(tmp_path):
    write_tree(tmp_path, objects=SORTED_OBJECTS[:3], elevations=("2.00",))
    (suncg_chair_dir(str(tmp_path)) / SORTED_OBJECTS[2] / "elevation_2").mkdir()  # a test chair: both splits fail
    for split in ("train", "test"):
        with pytest.raises(DRNetError, match="two folders for elevation 2 in") as error:
            SuncgClips(str(tmp_path), split, 64, 3, 5)
        assert "elevation_2 and elevation_2.00" in str(error.value) and "\n" not in str(error.value)


# Runs through main.py.

@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    """A tiny SUNCG chair tree with the real folder names: seven chairs (five train, two test: the probes' two
    parts) at the five elevations elevation_-1.00 .. elevation_2.00, one of the train chairs lacking one."""
    root = tmp_path_factory.mktemp("suncg_runs_data")
    write_tree(root, objects=OBJECTS[:7])
    missing = suncg_chair_dir(str(root)) / sorted(OBJECTS[:7])[0] / f"elevation_{ELEVATIONS[0]}"
    for view in VIEWS:
        (missing / view_file_name(view)).unlink()
    missing.rmdir()
    return root


@pytest.mark.e2e
@pytest.mark.usefixtures("few_test_clips")
def test_suncg_trains_resumes_then_its_lstm_with_the_real_folder_names(run_root, tmp_path, capsys):
    run_dir = tmp_path / "suncg"
    main.main(dataset_flags("suncg", run_root, run_dir, "--data_threads", "1", "--max_iter", "1"))
    assert "SUNCG chairs train: 1 of 5 chairs lack some elevation" in capsys.readouterr().err
    main.main(dataset_flags("suncg", run_root, run_dir, "--resume", "True"))
    check_drnet_run(run_dir, {"image_width": 64, "channels": 3, "content_encoder": "resnet18",
                              "pose_encoder": "resnet18", "decoder": "dcgan", "use_skip": False, "pose_dim": 10,
                              "data_threads": 1})
    main.main(dataset_flags("suncg", run_root, run_dir, "--rollout_len", "40", lstm=True))
    columns = check_lstm_run(run_dir / "lstm", frames=2 + 40)
    assert "mse_step10" in columns
    probes = evaluate_lstm(run_dir)["probes"]
    assert {"elevation_from_content", "elevation_from_pose"} <= set(probes)
    assert probes["elevation_chance"] < 1  # the probes met several elevations, not one
