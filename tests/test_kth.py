"""KTH: its conversion (datasets/prepare/convert_kth.py), its loader (datasets/kth.py) and its runs through
main.py, on the tiny synthetic KTH of fakes/kth.py (the download: tests/test_kth_download.py).

The fake frames say in their pixels which video and frame they are, so the tests below can tell from a loaded
batch where every image came from. Batches decoded on several threads are checked against frames read one by
one, as the loader did before it decoded in parallel.
"""

import json
import multiprocessing
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes.kth import FAKE_VIDEOS, write_fake_raw
from fakes.runs import check_drnet_run, check_lstm_run, dataset_flags, evaluate_lstm
from PIL import Image

import main
from datasets.kth import KTHClips, missing_data_error
from datasets.prepare import convert_kth
from datasets.prepare.convert_kth import convert_kth as run_conversion
from datasets.prepare.convert_kth import parse_sequence_file, zero_based_segments
from utils import USER_ERROR, DRNetError

REPO_ROOT = Path(__file__).resolve().parent.parent
SIZE = 64
VIDEO_BY_LEVEL = {level: name for name, (_, level) in FAKE_VIDEOS.items()}
EXPECTED_SEGMENTS = {
    "person01_boxing_d1": [[0, 10], [10, 20], [20, 30]],
    "person02_walking_d2": [[0, 12], [12, 24]],
    "person17_walking_d2": [[0, 6], [6, 30]],
    "person18_boxing_d3": [[4, 20]],
    "person16_boxing_d4": [[0, 12]],
}


@pytest.fixture(scope="module")
def fake_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with raw/<class>/*.avi and raw/00sequences.txt, written once per module."""
    root = tmp_path_factory.mktemp("kth_raw")
    write_fake_raw(root)
    return root


@pytest.fixture
def data_root(fake_raw: Path, tmp_path: Path) -> Path:
    """A private copy of the fake raw data, for tests that convert."""
    shutil.copytree(fake_raw, tmp_path / "kth")
    return tmp_path / "kth"


@pytest.fixture(scope="module")
def converted(fake_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root converted once at SIZE, shared by the loader tests (which only read it)."""
    root = tmp_path_factory.mktemp("kth_converted") / "kth"
    shutil.copytree(fake_raw, root)
    report = run_conversion(root, SIZE, workers=2)
    assert not report.failed
    return root


def test_convert_writes_frames_and_index(data_root: Path) -> None:
    report = run_conversion(data_root, SIZE, workers=2)
    assert report.converted == sorted(EXPECTED_SEGMENTS)
    assert report.failed == {}
    assert report.warnings == [
        "00sequences.txt line 1: cannot parse 'Action sequences of the KTH dataset'",
        "00sequences.txt line 9: cannot parse all of 'person04_running_d4\\t\\tframes\\t1-x', kept []",
        "person03_jogging_d1: no entry in 00sequences.txt, skipped",
        "person02_walking_d2: segments clipped to its 24 frames",
    ]

    out = data_root / "processed" / str(SIZE)
    index = json.loads((out / "index.json").read_text())
    assert index["image_size"] == SIZE
    by_name = {video["name"]: video for video in index["videos"]}
    assert sorted(by_name) == sorted(EXPECTED_SEGMENTS)
    assert by_name["person17_walking_d2"] == {
        "name": "person17_walking_d2", "class": "walking", "person": 17, "scenario": 2, "split": "test",
        "num_frames": 30, "segments": [[0, 6], [6, 30]],
    }
    for name, video in by_name.items():
        assert (video["segments"], video["num_frames"]) == (EXPECTED_SEGMENTS[name], FAKE_VIDEOS[name][0])
        assert video["split"] == ("train" if video["person"] <= 16 else "test")
        assert len(list((out / name).glob("*.png"))) == video["num_frames"]
    assert not (out / "person03_jogging_d1").exists()
    assert not list(out.glob(".partial-*"))

    with Image.open(out / "person01_boxing_d1" / "00029.png") as image:
        assert image.mode == "L" and image.size == (SIZE, SIZE)
        pixels = np.array(image)
    # File 00029.png is the 30th frame of the video (1-based frame 30 in 00sequences.txt).
    assert abs(int(np.median(pixels[:, :20])) - 8 * 30) <= 2
    assert abs(int(np.median(pixels[:, 44:])) - 40) <= 2


def test_rerun_converts_nothing_and_touches_nothing(data_root: Path) -> None:
    run_conversion(data_root, SIZE, workers=2)
    out = data_root / "processed" / str(SIZE)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    report = run_conversion(data_root, SIZE, workers=2)
    assert report.converted == [] and report.failed == {}
    assert report.already_done == sorted(EXPECTED_SEGMENTS)
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


@pytest.mark.e2e
def test_corrupt_video_is_reported_and_others_convert(
    data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (data_root / "raw" / "running").mkdir()
    (data_root / "raw" / "running" / "person05_running_d1_uncomp.avi").write_bytes(
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    )
    with open(data_root / "raw" / "00sequences.txt", "a") as sequences:
        sequences.write("person05_running_d1\t\tframes\t1-5\n")
    status = convert_kth.main(["--data_root", str(data_root), "--image_width", str(SIZE), "--workers", "2"])
    assert status == 1
    assert "failed: person05_running_d1:" in capsys.readouterr().err
    out = data_root / "processed" / str(SIZE)
    index = json.loads((out / "index.json").read_text())
    assert sorted(video["name"] for video in index["videos"]) == sorted(EXPECTED_SEGMENTS)
    assert not (out / "person05_running_d1").exists()
    assert not list(out.glob(".partial-*"))


@pytest.mark.e2e
def test_convert_rejects_other_image_sizes_as_a_script(data_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "datasets.prepare.convert_kth", "--data_root", str(data_root), "--image_width", "100"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == USER_ERROR
    assert result.stderr.strip() == "error: --image_width must be one of (64, 128) for KTH, got 100"


def test_sequence_file_parsing_and_frame_base() -> None:
    text = "header\nperson01_boxing_d1 frames 1-95, 96-185\n  186-245\nperson01_boxing_d1 frames 1-2\n"
    segments, problems = parse_sequence_file(text)
    assert segments == {"person01_boxing_d1": [(1, 95), (96, 185), (186, 245)]}
    assert problems == ["line 1: cannot parse 'header'",
                        "line 4: second entry for person01_boxing_d1 ignored"]
    assert zero_based_segments([(1, 95), (96, 185), (300, 310)], 150) == ([[0, 95], [95, 150]], True)
    assert zero_based_segments([(1, 1), (2, 3)], 3) == ([[0, 1], [1, 3]], False)


def identify_clip(images: torch.Tensor) -> tuple[str, list[int], tuple[int, int]]:
    """(video, frames, segment) of images (N, 1, S, S), read from their pixels; all must share one segment."""
    levels = images[:, 0].numpy() * 255
    frames = [round(float(np.median(level[:, : SIZE * 3 // 8])) / 8) - 1 for level in levels]
    videos = {VIDEO_BY_LEVEL[round(float(np.median(level[:, SIZE * 5 // 8:])) / 40) * 40] for level in levels}
    assert len(videos) == 1
    video = videos.pop()
    segments = [(start, end) for start, end in EXPECTED_SEGMENTS[video] if start <= frames[0] < end]
    assert len(segments) == 1 and all(segments[0][0] <= frame < segments[0][1] for frame in frames)
    return video, frames, segments[0]


def test_batch_shapes_range_and_determinism(converted: Path) -> None:
    clips = KTHClips(str(converted), "train", SIZE, 1, max_step=5)
    assert (clips.channels, clips.image_size, clips.num_videos) == (1, SIZE, 3)
    generator = torch.Generator().manual_seed(0)
    for batch, shape in [(clips.drnet_batch(6, generator), (4, 6, 1, SIZE, SIZE)),
                         (clips.sequence_batch(3, 7, generator), (3, 7, 1, SIZE, SIZE))]:
        assert batch.shape == shape and batch.dtype == torch.float32
        assert 0 <= batch.min() and batch.max() <= 1
    first = clips.drnet_batch(8, torch.Generator().manual_seed(3))
    assert torch.equal(first, clips.drnet_batch(8, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, clips.drnet_batch(8, torch.Generator().manual_seed(4)))
    sequences = clips.sequence_batch(4, 5, torch.Generator().manual_seed(3))
    assert torch.equal(sequences, clips.sequence_batch(4, 5, torch.Generator().manual_seed(3)))


def test_drnet_frames_stay_in_one_window_of_one_segment(converted: Path) -> None:
    clips = KTHClips(str(converted), "train", SIZE, 1, max_step=4, cache_frames=16)
    batch = clips.drnet_batch(200, torch.Generator().manual_seed(1))
    segments_seen, frames_seen, clips_frames, clip_videos = set(), set(), [], []
    for clip in range(batch.shape[1]):
        video, frames, segment = identify_clip(batch[:, clip])
        assert max(frames) - min(frames) < 4
        segments_seen.add((video, segment))
        clip_videos.append(video)
        frames_seen.update((video, frame) for frame in frames)
        clips_frames.append(frames)
    assert len(segments_seen) == 6  # every segment of the three train videos
    assert len(frames_seen) == 30 + 24 + 12  # windows reach every frame, up to the segment ends
    # Class first, then video: walking (one train video) gets half the clips, not a third.
    assert 0.4 < clip_videos.count("person02_walking_d2") / len(clip_videos) < 0.6
    # Four independent draws: frames repeat and come in any order.
    assert any(len(set(frames)) < 4 for frames in clips_frames)
    assert any(frames != sorted(frames) for frames in clips_frames)


def test_test_split_and_segments_shorter_than_the_window(converted: Path) -> None:
    clips = KTHClips(str(converted), "test", SIZE, 1, max_step=50)
    batch = clips.drnet_batch(60, torch.Generator().manual_seed(5))
    segments_seen = {identify_clip(batch[:, clip])[::2] for clip in range(60)}
    # Only persons 17-25, and the 6-frame segment is used whole although max_step is 50.
    assert segments_seen == {("person17_walking_d2", (0, 6)), ("person17_walking_d2", (6, 30)),
                             ("person18_boxing_d3", (4, 20))}


def test_sequences_are_consecutive_inside_long_enough_segments(converted: Path) -> None:
    clips = KTHClips(str(converted), "test", SIZE, 1, max_step=4)
    for sequence in clips.sequence_batch(40, 8, torch.Generator().manual_seed(2)):
        _, frames, segment = identify_clip(sequence)
        assert frames == list(range(frames[0], frames[0] + 8))
        # person17's first segment has only 6 frames, so it can never hold an 8-frame sequence.
        assert segment != (0, 6)
    with pytest.raises(DRNetError, match="no KTH test segment has 25 frames"):
        clips.sequence_batch(1, 25, torch.Generator())


def test_probe_batches_hold_two_frames_of_a_window_and_parts_share_no_video(converted: Path) -> None:
    clips = KTHClips(str(converted), "train", SIZE, 1, max_step=4)
    assert clips.num_identities == 3 and clips.label_columns == ("class", "person")
    videos_of_part = {}
    for part in (0, 1, None):
        batch = clips.probe_batch(60, torch.Generator().manual_seed(3), part)
        assert batch.frames.shape == (60, 2, 1, SIZE, SIZE) and batch.labels.shape == (60, 2)
        videos_of_part[part] = set()
        for frames, label, identity in zip(*batch, strict=True):
            video, (first, second), _ = identify_clip(frames)  # both frames in one segment
            assert 0 <= second - first < 4  # the window's first frame, then one of its max_step frames
            assert clips.videos[identity]["name"] == video
            assert label.tolist() == [5 if "walking" in video else 0, int(video[6:8])]
            videos_of_part[part].add(video)
    # The train videos in name order: person01_boxing_d1, person02_walking_d2, person16_boxing_d4.
    assert videos_of_part[0] == {"person01_boxing_d1", "person16_boxing_d4"}
    assert videos_of_part[1] == {"person02_walking_d2"}
    assert videos_of_part[None] == videos_of_part[0] | videos_of_part[1]


def test_missing_data_error_names_both_commands(converted: Path, tmp_path: Path) -> None:
    with pytest.raises(DRNetError) as missing:
        KTHClips(str(tmp_path), "train", SIZE, 1, max_step=10)
    message = str(missing.value)
    assert "\n" not in message
    assert f"sh datasets/prepare/download_kth.sh {tmp_path}" in message
    assert f"python -m datasets.prepare.convert_kth --data_root {tmp_path} --image_width {SIZE}" in message

    half_prepared = tmp_path / "half"
    shutil.copytree(converted / "processed", half_prepared / "processed")
    shutil.rmtree(half_prepared / "processed" / str(SIZE) / "person01_boxing_d1")
    with pytest.raises(DRNetError, match="person01_boxing_d1 not found.*download_kth.sh.*datasets.prepare.convert_kth"):
        KTHClips(str(half_prepared), "train", SIZE, 1, max_step=10)


def test_frame_cache_serves_repeats_and_stays_bounded(converted: Path, tmp_path: Path) -> None:
    shutil.copytree(converted / "processed", tmp_path / "processed")
    roomy = KTHClips(str(tmp_path), "train", SIZE, 1, max_step=3, cache_frames=1000)
    tiny = KTHClips(str(tmp_path), "train", SIZE, 1, max_step=3, cache_frames=2)
    expected = roomy.drnet_batch(10, torch.Generator().manual_seed(7))
    tiny.drnet_batch(10, torch.Generator().manual_seed(7))
    for png in (tmp_path / "processed").rglob("*.png"):
        png.unlink()
    assert torch.equal(roomy.drnet_batch(10, torch.Generator().manual_seed(7)), expected)
    with pytest.raises(DRNetError, match="png not found"):
        tiny.drnet_batch(10, torch.Generator().manual_seed(7))


def test_loader_rejects_colour_and_unknown_split(converted: Path) -> None:
    with pytest.raises(DRNetError, match="channels must be 1"):
        KTHClips(str(converted), "train", SIZE, 3, max_step=10)
    with pytest.raises(DRNetError, match="unknown KTH split"):
        KTHClips(str(converted), "val", SIZE, 1, max_step=10)
    with pytest.raises(DRNetError, match="decode_threads must be positive, got 0"):
        KTHClips(str(converted), "train", SIZE, 1, max_step=10, decode_threads=0)


def read_one_by_one(clips: KTHClips, videos: list[int], frames: torch.Tensor) -> torch.Tensor:
    """The loader's frame reading before parallel decoding: each frame from its file, in order, in this thread."""
    pixels = np.stack([np.stack([clips._read_frame(video, int(index)) for index in row])
                       for video, row in zip(videos, frames, strict=True)])
    return torch.from_numpy(pixels).unsqueeze(2).float().div_(255)


def one_by_one(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> KTHClips:
    """A train loader without cache that reads as the loader did before parallel decoding: the reference."""
    clips = KTHClips(str(data_root), "train", SIZE, 1, max_step=4, cache_frames=0)
    monkeypatch.setattr(clips, "_gather", lambda videos, frames: read_one_by_one(clips, videos, frames))
    return clips


def draw_all(clips: KTHClips, seed: int) -> list[torch.Tensor]:
    """A DRNET, a sequence and a probe batch from one generator, and the generator's state after them."""
    generator = torch.Generator().manual_seed(seed)
    batches = [clips.drnet_batch(50, generator), clips.sequence_batch(10, 8, generator),
               clips.probe_batch(20, generator).frames]
    return [*batches, generator.get_state()]


@pytest.mark.parametrize("cache_frames", [0, 16, 1000])
def test_parallel_decoding_gives_the_batches_of_one_thread(
    converted: Path, monkeypatch: pytest.MonkeyPatch, cache_frames: int
) -> None:
    reference = one_by_one(converted, monkeypatch)
    serial = KTHClips(str(converted), "train", SIZE, 1, max_step=4, cache_frames=cache_frames, decode_threads=1)
    parallel = KTHClips(str(converted), "train", SIZE, 1, max_step=4, cache_frames=cache_frames, decode_threads=4)
    read, decoded_on = parallel._read_frame, set()

    def noting_thread(video: int, index: int) -> np.ndarray:
        decoded_on.add(threading.current_thread().name)
        return read(video, index)

    monkeypatch.setattr(parallel, "_read_frame", noting_thread)
    for seed in range(3):  # later seeds find frames in the cache (when it has room) and evict some (16)
        expected = draw_all(reference, seed)
        for clips in (serial, parallel):
            assert all(torch.equal(got, want) for got, want in zip(draw_all(clips, seed), expected, strict=True))
    # Read on several of the pool's threads (a batch's one missing frame is read by the thread that draws).
    assert len({name for name in decoded_on if name.startswith("kth-decode-4_")}) > 1
    assert len(parallel._cache) <= cache_frames


def test_a_broken_frame_gives_the_error_of_one_thread(
    converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(converted / "processed", tmp_path / "processed")
    frames = tmp_path / "processed" / str(SIZE)
    truncated, missing = frames / "person01_boxing_d1" / "00005.png", frames / "person02_walking_d2" / "00003.png"
    intact = truncated.read_bytes()
    truncated.write_bytes(intact[: len(intact) // 2])
    missing.unlink()
    loaders = [one_by_one(tmp_path, monkeypatch)] + [
        KTHClips(str(tmp_path), "train", SIZE, 1, max_step=4, cache_frames=cache, decode_threads=threads)
        for threads, cache in [(1, 0), (4, 0), (4, 1000)]
    ]
    errors = []
    for clips in loaders:  # 200 clips reach every frame (test_drnet_frames_stay_in_one_window_of_one_segment)
        with pytest.raises(DRNetError) as error:
            clips.drnet_batch(200, torch.Generator().manual_seed(1))
        errors.append(str(error.value))
    # The first broken file in the batch's order, whichever thread meets it first.
    assert errors[1:] == errors[:1] * 3
    assert (errors[0].startswith(f"cannot read KTH frame {truncated}: ")
            or errors[0] == str(missing_data_error(str(tmp_path), SIZE, f"{missing} not found")))
    # A failed read is not cached: repaired files are read again.
    truncated.write_bytes(intact)
    shutil.copy(converted / "processed" / str(SIZE) / missing.parent.name / missing.name, missing)
    assert torch.equal(loaders[3].drnet_batch(200, torch.Generator().manual_seed(1)),
                       loaders[0].drnet_batch(200, torch.Generator().manual_seed(1)))


def test_loaders_share_the_decode_threads(converted: Path) -> None:
    for _ in range(10):  # as the tests and evaluations do: many loaders, none closed
        clips = KTHClips(str(converted), "train", SIZE, 1, max_step=4, cache_frames=0, decode_threads=3)
        clips.drnet_batch(30, torch.Generator().manual_seed(0))
    assert 1 <= sum(thread.name.startswith("kth-decode-3_") for thread in threading.enumerate()) <= 3


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork here")
def test_a_forked_process_decodes_on_threads_of_its_own(converted: Path) -> None:
    clips = KTHClips(str(converted), "train", SIZE, 1, max_step=4, cache_frames=0, decode_threads=2)
    expected = clips.drnet_batch(30, torch.Generator().manual_seed(0))  # the parent's pool now has threads

    def draw_again() -> None:
        # The parent's pool threads do not exist in the child: an inherited pool would wait for them forever.
        # (torch runs one thread in the tests, see conftest.py: its OpenMP threads have the same problem.)
        if not torch.equal(clips.drnet_batch(30, torch.Generator().manual_seed(0)), expected):
            raise SystemExit(3)

    child = multiprocessing.get_context("fork").Process(target=draw_again)
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode == 0


# ---- runs through main.py ----

@pytest.mark.e2e
@pytest.mark.usefixtures("few_test_clips")
def test_kth_trains_at_64_px_then_its_lstm_on_short_segments(converted: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "kth"
    main.main(dataset_flags("kth", converted, run_dir, "--image_width", str(SIZE)))
    check_drnet_run(run_dir, {"image_width": SIZE, "channels": 1, "content_encoder": "vgg16",
                              "pose_encoder": "resnet18", "decoder": "vgg16", "use_skip": True, "pose_dim": 24})
    # The longest fake test segment has 24 frames: the 30-frame rollout's ground truth (and so the
    # step-10 metric) has to come from shorter test clips, and the rollout still runs its full length.
    main.main(dataset_flags("kth", converted, run_dir, "--image_width", str(SIZE), "--rollout_len", "30", lstm=True))
    columns = check_lstm_run(run_dir / "lstm", frames=2 + 30)
    assert columns == ["iteration", "mse_step1", "copy_last_step1", "mse_step10", "copy_last_step10"]
    assert {"class_from_content", "person_from_pose"} <= set(evaluate_lstm(run_dir)["probes"])


@pytest.mark.e2e
def test_kth_missing_data_is_one_line_naming_both_commands(tmp_path: Path, fails_with_one_line) -> None:
    empty = tmp_path / "empty"
    # The run's first log line (its directory and config) may come first; the error is one line, the last.
    line = fails_with_one_line(["--dataset", "kth", "--data_root", str(empty), "--save_dir", str(tmp_path / "run"),
                                "--device", "cpu"])
    assert f"sh datasets/prepare/download_kth.sh {empty}" in line
    assert f"python -m datasets.prepare.convert_kth --data_root {empty} --image_width 128" in line
    assert not (tmp_path / "run" / "config.json").exists()  # nothing was built or written first
