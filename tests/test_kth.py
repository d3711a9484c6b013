"""KTH preparation and loading on a tiny synthetic KTH: download (faked server), conversion, sampling.

The fake videos encode what each frame is in its pixels: the left half has grey level 8 * (frame + 1)
(frame counted from 0), the right half a level that identifies the video. So tests can tell from a
loaded batch which video and frame every image came from.
"""

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.error import HTTPError, URLError

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from datasets import convert_kth, kth_download
from datasets.convert_kth import convert_kth as run_conversion
from datasets.convert_kth import parse_sequence_file, zero_based_segments
from datasets.kth import KTHClips
from utils import DRNetError

REPO_ROOT = Path(__file__).resolve().parent.parent
SIZE = 64
# name -> (frames in the AVI, grey level of its right half)
FAKE_VIDEOS = {
    "person01_boxing_d1": (30, 40),
    "person02_walking_d2": (24, 80),
    "person17_walking_d2": (30, 120),
    "person18_boxing_d3": (20, 160),
    "person03_jogging_d1": (10, 200),  # has no entry in the sequence file
    "person16_boxing_d4": (12, 240),
}
VIDEO_BY_LEVEL = {level: name for name, (_, level) in FAKE_VIDEOS.items()}
# The kinds of irregularity the real file has: a header, an entry broken over two lines (whose last range
# runs past the video's 24 frames), a typo, a video marked missing, and the file's own split declaration.
SEQUENCES = (
    "Action sequences of the KTH dataset\n"
    "\n"
    "person01_boxing_d1\t\tframes\t1-10, 11-20, 21-30\n"
    "person02_walking_d2\t\tframes\t1-12,\n"
    "\t\t13-30\n"
    "person17_walking_d2\t\tframes\t1-6, 7-30\n"
    "person18_boxing_d3\t\tframes\t5-20\n"
    "person16_boxing_d4\t\tframes\t1-12\n"
    "person04_running_d4\t\tframes\t1-x\n"
    "person13_handclapping_d3\t\t*missing*\n"
    "Training:\tperson11, person12\n"
)
EXPECTED_SEGMENTS = {
    "person01_boxing_d1": [[0, 10], [10, 20], [20, 30]],
    "person02_walking_d2": [[0, 12], [12, 24]],
    "person17_walking_d2": [[0, 6], [6, 30]],
    "person18_boxing_d3": [[4, 20]],
    "person16_boxing_d4": [[0, 12]],
}


def write_fake_avi(path: Path, num_frames: int, video_level: int) -> None:
    """A 160x120 grey 25 fps MJPEG AVI whose pixels say which video and frame they belong to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path), (160, 120), pix_fmt_in="gray", pix_fmt_out="yuvj444p", fps=25, codec="mjpeg",
        quality=10, macro_block_size=1, ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in range(num_frames):
        pixels = np.full((120, 160), video_level, dtype=np.uint8)
        pixels[:, :80] = 8 * (frame + 1)
        writer.send(pixels.tobytes())
    writer.close()


@pytest.fixture(scope="module")
def fake_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with raw/<class>/*.avi and raw/00sequences.txt, written once per module."""
    root = tmp_path_factory.mktemp("kth_raw")
    for name, (num_frames, level) in FAKE_VIDEOS.items():
        action = name.split("_")[1]
        write_fake_avi(root / "raw" / action / f"{name}_uncomp.avi", num_frames, level)
    (root / "raw" / "00sequences.txt").write_text(SEQUENCES)
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


def test_corrupt_video_is_reported_and_others_convert(
    data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (data_root / "raw" / "running").mkdir()
    (data_root / "raw" / "running" / "person05_running_d1_uncomp.avi").write_bytes(
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    )
    with open(data_root / "raw" / "00sequences.txt", "a") as sequences:
        sequences.write("person05_running_d1\t\tframes\t1-5\n")
    status = convert_kth.main(["--data_root", str(data_root), "--image_size", str(SIZE), "--workers", "2"])
    assert status == 1
    assert "failed: person05_running_d1:" in capsys.readouterr().err
    out = data_root / "processed" / str(SIZE)
    index = json.loads((out / "index.json").read_text())
    assert sorted(video["name"] for video in index["videos"]) == sorted(EXPECTED_SEGMENTS)
    assert not (out / "person05_running_d1").exists()
    assert not list(out.glob(".partial-*"))


def test_convert_rejects_other_image_sizes_as_a_script(data_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "datasets/convert_kth.py", "--data_root", str(data_root), "--image_size", "100"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --image_size must be one of (64, 128) for KTH, got 100"


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
    sequences, labels = clips.sequence_batch(40, 8, torch.Generator().manual_seed(2), return_labels=True)
    for sequence, label in zip(sequences, labels, strict=True):
        video, frames, segment = identify_clip(sequence)
        assert frames == list(range(frames[0], frames[0] + 8))
        # person17's first segment has only 6 frames, so it can never hold an 8-frame sequence.
        assert segment != (0, 6)
        assert label.tolist() == [5 if "walking" in video else 0, int(video[6:8])]
    with pytest.raises(DRNetError, match="no KTH test segment has 25 frames"):
        clips.sequence_batch(1, 25, torch.Generator())


def test_missing_data_error_names_both_commands(converted: Path, tmp_path: Path) -> None:
    with pytest.raises(DRNetError) as missing:
        KTHClips(str(tmp_path), "train", SIZE, 1, max_step=10)
    message = str(missing.value)
    assert "\n" not in message
    assert f"sh datasets/download_kth.sh {tmp_path}" in message
    assert f"python datasets/convert_kth.py --data_root {tmp_path} --image_size {SIZE}" in message

    half_prepared = tmp_path / "half"
    shutil.copytree(converted / "processed", half_prepared / "processed")
    shutil.rmtree(half_prepared / "processed" / str(SIZE) / "person01_boxing_d1")
    with pytest.raises(DRNetError, match="person01_boxing_d1 not found.*download_kth.sh.*convert_kth.py"):
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


# ---- download ----

URL = "http://example.invalid/file.bin"


class FakeResponse(io.BytesIO):
    """What urlopen returns, serving bytes from memory; the connection drops after `drop_after` bytes."""

    def __init__(self, body: bytes, status: int, drop_after: int | None) -> None:
        super().__init__(body)
        self.status = status
        self.headers = {"Content-Length": str(len(body))}
        self._end = len(body) if drop_after is None else drop_after

    def read(self, size: int = -1) -> bytes:
        if self.tell() >= self._end < len(self.getbuffer()):
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size, self._end - self.tell()))


class FakeServer:
    """A stand-in for urllib's urlopen over a dict of url -> bytes, honouring Range unless told not to."""

    def __init__(self, files: dict[str, bytes], honour_range: bool = True) -> None:
        self.files = files
        self.honour_range = honour_range
        self.drop_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []

    def __call__(self, request, timeout: float) -> FakeResponse:
        assert timeout > 0
        range_header = request.get_header("Range")
        self.requests.append((request.full_url, range_header))
        body = self.files[request.full_url]
        drop_after, self.drop_after = self.drop_after, None
        if not (range_header and self.honour_range):
            return FakeResponse(body, 200, drop_after)
        offset = int(range_header.removeprefix("bytes=").removesuffix("-"))
        if offset >= len(body):
            raise HTTPError(request.full_url, 416, "Range Not Satisfiable",
                            {"Content-Range": f"bytes */{len(body)}"}, None)
        return FakeResponse(body[offset:], 206, drop_after)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A stored (uncompressed) zip holding `members`, names kept exactly as given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def test_download_offline_fails_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unreachable(request, timeout: float) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(kth_download, "urlopen", unreachable)
    assert kth_download.main([str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("error: cannot download http://www.csc.kth.se/cvap/actions/00sequences.txt")
    assert "Temporary failure in name resolution" in error


def test_download_resumes_a_partial_file_then_skips_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = bytes(range(256)) * 400
    server = FakeServer({URL: payload})
    monkeypatch.setattr(kth_download, "urlopen", server)
    destination = tmp_path / "file.bin"
    server.drop_after = 30000
    with pytest.raises(DRNetError, match="interrupted after 30000 bytes.*rerun to resume"):
        kth_download.download_file(URL, destination)
    assert not destination.exists()
    assert (tmp_path / "file.bin.part").read_bytes() == payload[:30000]

    kth_download.download_file(URL, destination)
    assert server.requests[-1] == (URL, "bytes=30000-")
    assert destination.read_bytes() == payload
    assert not (tmp_path / "file.bin.part").exists()

    kth_download.download_file(URL, destination)
    assert len(server.requests) == 2


@pytest.mark.parametrize(("part", "honour_range"), [(b"stale", False), (b"0123456789" * 100, True)])
def test_download_finishes_from_an_unresumable_or_whole_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part: bytes, honour_range: bool
) -> None:
    monkeypatch.setattr(kth_download, "urlopen", FakeServer({URL: b"0123456789" * 100}, honour_range))
    (tmp_path / "file.bin.part").write_bytes(part)
    kth_download.download_file(URL, tmp_path / "file.bin")
    assert (tmp_path / "file.bin").read_bytes() == b"0123456789" * 100


def test_download_kth_extracts_every_class_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {kth_download.KTH_URL + "00sequences.txt": SEQUENCES.encode()}
    for action in kth_download.KTH_CLASSES:
        avi_name = f"person01_{action}_d1_uncomp.avi"
        files[kth_download.KTH_URL + f"{action}.zip"] = zip_bytes({avi_name: b"avi"})
    server = FakeServer(files)
    monkeypatch.setattr(kth_download, "urlopen", server)
    kth_download.download_kth(tmp_path)
    raw = tmp_path / "raw"
    assert (raw / "00sequences.txt").read_text() == SEQUENCES
    for action in kth_download.KTH_CLASSES:
        assert (raw / action / f"person01_{action}_d1_uncomp.avi").read_bytes() == b"avi"
    assert len(server.requests) == 7
    # The zips may be deleted once extracted: a rerun must neither fetch nor extract anything again.
    for archive in raw.glob("*.zip"):
        archive.unlink()
    kth_download.download_kth(tmp_path)
    assert len(server.requests) == 7


@pytest.mark.parametrize(
    ("member", "reason"), [("../evil.avi", "contains '..'"), ("/tmp/evil.avi", "has an absolute path")]
)
def test_extraction_refuses_members_outside_the_target(tmp_path: Path, member: str, reason: str) -> None:
    archive = tmp_path / "boxing.zip"
    archive.write_bytes(zip_bytes({"fine.avi": b"ok", member: b"evil"}))
    target = tmp_path / "data" / "raw" / "boxing"
    with pytest.raises(DRNetError, match=f"member '{member}' {reason}"):
        kth_download.extract_zip(archive, target)
    assert not (target / "fine.avi").exists()
    assert not (target / kth_download.EXTRACTED_MARKER).exists()
    assert not (tmp_path / "data" / "raw" / "evil.avi").exists()


def test_extraction_refuses_corrupt_zips(tmp_path: Path) -> None:
    archive = tmp_path / "boxing.zip"
    archive.write_bytes(zip_bytes({"a.avi": b"original data"}).replace(b"original", b"tampered"))
    with pytest.raises(DRNetError, match="corrupt \\(bad CRC in a.avi\\)"):
        kth_download.extract_zip(archive, tmp_path / "boxing")
    archive.write_bytes(b"not a zip at all")
    with pytest.raises(DRNetError, match="not a valid zip"):
        kth_download.extract_zip(archive, tmp_path / "boxing")


def test_download_script_prints_usage_without_a_folder() -> None:
    result = subprocess.run(["sh", "datasets/download_kth.sh"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "usage: sh datasets/download_kth.sh DIR" in result.stderr
