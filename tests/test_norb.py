"""The smallNORB loader (datasets/norb.py) and its download (datasets/prepare/norb_download.py), on the tiny files
of fakes/norb.py in the real binary-matrix format, plain and gzipped, whose images say what they show."""

import io
import json
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes.norb import CLIP_CODE, ELEVATIONS, LIGHTINGS, OBJECTS, split_arrays, write_matrix, write_split
from fakes.runs import check_drnet_run, check_lstm_run, csv_rows, dataset_flags, evaluate_lstm

import main
from datasets import norb
from datasets.norb import NORB_URL, NorbClips, norb_dir, norb_file_names, read_norb_matrix
from datasets.prepare import norb_download
from datasets.prepare.norb_download import download_norb
from utils import USER_ERROR, DRNetError

# The official files' headers as the dataset's page ("THE small NORB DATASET, V1.0") gives them, spelt out in
# little-endian bytes so that they do not depend on fakes/norb.py's writer: magic, ndim, then at least three sizes.
OFFICIAL_ROWS = 24300
OFFICIAL_HEADERS = {
    "dat": bytes.fromhex("554c3d1e" "04000000" "ec5e0000" "02000000" "60000000" "60000000"),  # 24300 2 96 96 ubyte
    "cat": bytes.fromhex("544c3d1e" "01000000" "ec5e0000" "01000000" "01000000"),  # int, ndim 1: 24300 1 1
    "info": bytes.fromhex("544c3d1e" "02000000" "ec5e0000" "04000000" "01000000"),  # int, ndim 2: 24300 4 1
}
OFFICIAL_SHAPES = {"dat": (OFFICIAL_ROWS, 2, 96, 96), "cat": (OFFICIAL_ROWS,), "info": (OFFICIAL_ROWS, 4)}
OFFICIAL_FILE_BYTES = {"dat": 447_897_624, "cat": 97_220, "info": 388_820}
MAGIC_OF_KIND = {"dat": 0x1E3D4C55, "cat": 0x1E3D4C54, "info": 0x1E3D4C54}  # ubyte matrix, integer matrix


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "gz"])
def norb_root(request, tmp_path_factory):
    """A data root holding both tiny splits, plain or gzipped."""
    root = tmp_path_factory.mktemp("norb_gz" if request.param else "norb_plain")
    write_split(root, "train", gz=request.param)
    write_split(root, "test", gz=request.param)
    return root


@pytest.fixture(scope="module")
def train_clips(norb_root):
    """Train clips at 64 px, grey, max_step 5 (so windows are shorter than the 18 azimuths)."""
    return NorbClips(str(norb_root), "train", 64, 1, 5)


def azimuth_index(frames: torch.Tensor) -> torch.Tensor:
    """Azimuth index (0..17) encoded in the top-left pixel of (..., C, S, S) frames."""
    return ((frames[..., 0, 0, 0] * 255).round().long() - 5) // 10


def clip_code(frames: torch.Tensor) -> torch.Tensor:
    """Clip code encoded in the bottom-right pixel of (..., C, S, S) frames."""
    return (frames[..., 0, -1, -1] * 255).round().long()


def test_reader_returns_arrays_with_padded_header(tmp_path):
    # A 1-d file stores three sizes, so its data starts at byte 20: a reader that skipped only
    # ndim sizes would be 8 bytes off and fail the size check.
    dat, cat, info = split_arrays("train")
    for name, array, magic in [("c.mat", cat, norb.MAGIC_INT32), ("i.mat.gz", info, norb.MAGIC_INT32),
                               ("d.mat", dat, norb.MAGIC_UINT8)]:
        write_matrix(tmp_path / name, array, magic)
        read = read_norb_matrix(tmp_path / name, magic)
        assert read.shape == array.shape
        np.testing.assert_array_equal(read, array)
    assert (tmp_path / "c.mat").stat().st_size == 20 + 4 * len(cat)


def test_official_file_names_and_magic_numbers():
    assert norb_file_names("train") == {kind: f"smallnorb-5x46789x9x18x6x2x96x96-training-{kind}.mat"
                                        for kind in ("dat", "cat", "info")}
    assert norb_file_names("test") == {kind: f"smallnorb-5x01235x9x18x6x2x96x96-testing-{kind}.mat"
                                       for kind in ("dat", "cat", "info")}
    assert (norb.MAGIC_UINT8, norb.MAGIC_INT32) == (MAGIC_OF_KIND["dat"], MAGIC_OF_KIND["cat"])


def test_official_headers_give_the_official_shapes_and_file_sizes():
    for kind, header in OFFICIAL_HEADERS.items():
        dims, header_bytes = norb.parse_norb_header(header, Path(f"official-{kind}.mat"), MAGIC_OF_KIND[kind])
        assert (dims, header_bytes) == (OFFICIAL_SHAPES[kind], len(header))
        item_bytes = 1 if kind == "dat" else 4
        assert header_bytes + np.prod(dims) * item_bytes == OFFICIAL_FILE_BYTES[kind]


def test_official_size_category_and_info_files_read(tmp_path):
    # Full-size -cat and -info files (the -dat is 448 MB) with the official header bytes, values as in the data.
    values = {"cat": np.arange(OFFICIAL_ROWS, dtype="<i4") % 5,
              "info": np.arange(4 * OFFICIAL_ROWS, dtype="<i4").reshape(OFFICIAL_ROWS, 4) % 9}
    for kind, array in values.items():
        path = tmp_path / f"{kind}.mat"
        path.write_bytes(OFFICIAL_HEADERS[kind] + array.tobytes())
        assert path.stat().st_size == OFFICIAL_FILE_BYTES[kind]
        np.testing.assert_array_equal(read_norb_matrix(path, MAGIC_OF_KIND[kind]), array)


def test_test_files_have_the_official_headers(tmp_path):
    paths = write_split(tmp_path, "train", gz=False)
    rows = len(split_arrays("train")[1])
    for kind, path in paths.items():
        official = OFFICIAL_HEADERS[kind]
        # The official header with this file's row count in place of 24300.
        assert path.read_bytes()[:len(official)] == official[:8] + struct.pack("<i", rows) + official[12:], kind


def test_header_padded_with_other_than_ones_is_corrupt(tmp_path):
    path = tmp_path / "cat.mat"
    path.write_bytes(struct.pack("<5i", norb.MAGIC_INT32, 1, 4, 2, 1) + bytes(16))
    with pytest.raises(DRNetError, match=r"gives 1 dimensions and pads the sizes \(4, 2, 1\) with \(2, 1\)"):
        read_norb_matrix(path, norb.MAGIC_INT32)


def test_clips_hold_left_camera_azimuths_in_order(train_clips):
    labels = train_clips.clip_labels()
    expected = sorted((c, i, e, light) for c, i in OBJECTS["train"] for e in ELEVATIONS for light in LIGHTINGS)
    assert labels.dtype == torch.int64
    assert labels.tolist() == [list(key) for key in expected]
    assert train_clips.num_clips == len(expected) == 12
    for clip in range(train_clips.num_clips):
        frames = train_clips.clip_sequence(clip, 0, 18)
        assert frames.shape == (18, 1, 64, 64) and frames.dtype == torch.float32
        assert azimuth_index(frames).tolist() == list(range(18))
        assert (clip_code(frames) == CLIP_CODE[tuple(labels[clip].tolist())]).all()
        assert frames.max() < 1.0  # the right camera (255) is never used


def test_test_split_reads_the_testing_files(norb_root, train_clips):
    test_clips = NorbClips(str(norb_root), "test", 64, 1, 20)
    instances = set(test_clips.clip_labels()[:, 1].tolist())
    assert instances == {0, 5}
    assert instances.isdisjoint(train_clips.clip_labels()[:, 1].tolist())


def test_drnet_batch_draws_four_frames_of_one_window(train_clips):
    batch = train_clips.drnet_batch(400, torch.Generator().manual_seed(1))
    assert batch.shape == (4, 400, 1, 64, 64) and batch.dtype == torch.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    codes = clip_code(batch)
    assert (codes == codes[0]).all()  # the four frames of a row come from one clip
    azimuths = azimuth_index(batch)
    # All four lie in one cyclic window of max_step = 5 azimuths: some cyclic rotation of the
    # four fits within a span of 4.
    spans = torch.stack([(azimuths - azimuths[k]) % 18 for k in range(4)]).amax(dim=1).amin(dim=0)
    assert spans.max() == 4
    assert ((azimuths.amax(dim=0) - azimuths.amin(dim=0)) > 4).any()  # windows wrap from 17 to 0


def test_drnet_batch_repeats_with_the_same_seed(train_clips):
    first = train_clips.drnet_batch(8, torch.Generator().manual_seed(3))
    again = train_clips.drnet_batch(8, torch.Generator().manual_seed(3))
    other = train_clips.drnet_batch(8, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_sequence_batch_is_consecutive_and_wraps_round(train_clips):
    frames = train_clips.sequence_batch(6, 25, torch.Generator().manual_seed(5))
    assert frames.shape == (6, 25, 1, 64, 64)
    azimuths = azimuth_index(frames)
    assert (torch.diff(azimuths, dim=1) % 18 == 1).all()
    assert (clip_code(frames) == clip_code(frames[:, :1])).all()
    again = train_clips.sequence_batch(6, 25, torch.Generator().manual_seed(5))
    assert torch.equal(frames, again)


def test_probe_batches_hold_two_views_of_a_window_and_parts_share_no_toy(train_clips):
    assert train_clips.num_identities == 3 and train_clips.label_columns == ("category", "elevation", "lighting")
    key_of_code = {code: key for key, code in CLIP_CODE.items()}
    toys = {}
    for part in (0, 1, None):
        batch = train_clips.probe_batch(80, torch.Generator().manual_seed(1), part)
        assert batch.frames.shape == (80, 2, 1, 64, 64)
        codes = clip_code(batch.frames)
        assert (codes[:, 0] == codes[:, 1]).all()  # two views of one clip
        azimuths = azimuth_index(batch.frames)
        assert ((azimuths[:, 1] - azimuths[:, 0]) % 18 < 5).all()  # the window's first view, then one of max_step
        keys = [key_of_code[code] for code in codes[:, 0].tolist()]
        assert batch.labels.tolist() == [[category, elevation, lighting] for category, _, elevation, lighting in keys]
        toy_of_identity = {identity: key[:2] for identity, key in zip(batch.identities.tolist(), keys, strict=True)}
        assert len(set(toy_of_identity.values())) == len(toy_of_identity)  # one identity per toy
        toys[part] = set(toy_of_identity.values())
    # Toys in sorted order (0, 4), (0, 6), (3, 7): even ranks in part 0, odd in part 1.
    assert toys[0] == {(0, 4), (3, 7)} and toys[1] == {(0, 6)} and toys[None] == toys[0] | toys[1]


def test_three_channels_repeat_the_grey(norb_root):
    clips = NorbClips(str(norb_root), "train", 32, 3, 20)
    frames = clips.sequence_batch(2, 3, torch.Generator().manual_seed(0))
    assert frames.shape == (2, 3, 3, 32, 32)
    assert torch.equal(frames[:, :, 0], frames[:, :, 2])
    with pytest.raises(DRNetError, match="channels"):
        NorbClips(str(norb_root), "train", 32, 2, 20)


def test_wrong_magic_names_the_file(tmp_path):
    paths = write_split(tmp_path, "train", gz=False)
    dat, _, _ = split_arrays("train")
    write_matrix(paths["dat"], dat.astype(np.int32), norb.MAGIC_INT32)
    with pytest.raises(DRNetError, match=r"magic number 0x1e3d4c54, expected 0x1e3d4c55") as error:
        NorbClips(str(tmp_path), "train", 64, 1, 20)
    assert str(paths["dat"]) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_truncated_file_names_the_file(tmp_path, gz):
    paths = write_split(tmp_path, "train", gz=gz)
    paths["dat"].write_bytes(paths["dat"].read_bytes()[:-100])
    with pytest.raises(DRNetError, match="truncated" if not gz else "cannot read") as error:
        NorbClips(str(tmp_path), "train", 64, 1, 20)
    assert str(paths["dat"]) in str(error.value)


def test_extra_bytes_are_corrupt(tmp_path):
    paths = write_split(tmp_path, "train", gz=False)
    paths["info"].write_bytes(paths["info"].read_bytes() + b"\0" * 8)
    with pytest.raises(DRNetError, match="extra bytes") as error:
        NorbClips(str(tmp_path), "train", 64, 1, 20)
    assert str(paths["info"]) in str(error.value)


def test_incomplete_azimuth_sweep_is_reported(tmp_path):
    paths = write_split(tmp_path, "train", gz=False)
    _, _, info = split_arrays("train")
    info[0, 2] = (info[0, 2] + 2) % 36  # its clip now has one azimuth twice and misses another
    write_matrix(paths["info"], info, norb.MAGIC_INT32)
    with pytest.raises(DRNetError, match="exactly once") as error:
        NorbClips(str(tmp_path), "train", 64, 1, 20)
    assert str(paths["info"]) in str(error.value)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DRNetError) as error:
        NorbClips(str(tmp_path), "test", 64, 1, 20)
    message = str(error.value)
    assert str(tmp_path / "norb") in message and NORB_URL in message and "testing-dat.mat" in message
    assert f"`python -m datasets.prepare.norb_download {tmp_path}`" in message
    assert "\n" not in message


@pytest.mark.e2e
def test_download_command_offline_fails_with_one_line(tmp_path, monkeypatch, capsys):
    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert norb_download.main([str(tmp_path)]) == USER_ERROR
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and message.startswith("error: could not download")
    assert NORB_URL in message and "name resolution" in message
    assert list(norb_dir(str(tmp_path)).iterdir()) == []  # no partial file left behind


def test_download_fetches_missing_gz_files_then_loads(tmp_path, monkeypatch):
    served = {}
    for split in ("train", "test"):
        for path in write_split(tmp_path / "server", split, gz=True).values():
            served[NORB_URL + path.name] = path.read_bytes()
    write_split(tmp_path / "root", "train", gz=False)  # already present: must not be fetched again
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(served[url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    directory = download_norb(str(tmp_path / "root"))
    assert sorted(requested) == sorted(url for url in served if "testing" in url)
    assert sorted(p.name for p in directory.glob("*testing*")) == sorted(
        f"{name}.gz" for name in norb_file_names("test").values())
    clips = NorbClips(str(tmp_path / "root"), "test", 64, 1, 20)
    assert clips.num_clips == 8


# Runs through main.py.

@pytest.fixture(scope="module")
def plain_root(tmp_path_factory) -> Path:
    """A data root holding both tiny splits, plain, for the runs."""
    root = tmp_path_factory.mktemp("norb_runs_data")
    write_split(root, "train", gz=False)
    write_split(root, "test", gz=False)
    return root


@pytest.fixture(scope="module")
def norb_run(plain_root, few_test_clips, tmp_path_factory) -> Path:
    """A two-iteration smallNORB DRNET run, batches drawn in the training loop."""
    run_dir = tmp_path_factory.mktemp("norb_runs") / "straight"
    main.main(dataset_flags("norb", plain_root, run_dir))
    return run_dir


@pytest.mark.e2e
def test_norb_trains_with_its_defaults(norb_run):
    check_drnet_run(norb_run, {"image_width": 64, "channels": 1, "content_encoder": "resnet18",
                               "pose_encoder": "resnet18", "decoder": "dcgan", "use_skip": False, "pose_dim": 10,
                               "data_threads": 0})


@pytest.mark.e2e
def test_norb_resumed_with_a_loader_thread_equals_one_run(plain_root, norb_run, tmp_path):
    run_dir = tmp_path / "resumed"
    main.main(dataset_flags("norb", plain_root, run_dir, "--max_iter", "1", "--data_threads", "3"))
    main.main(dataset_flags("norb", plain_root, run_dir, "--resume", "True"))  # keeps --data_threads 3
    assert json.loads((run_dir / "config.json").read_text())["data_threads"] == 3
    straight = torch.load(norb_run / "checkpoint.pt", weights_only=True)
    resumed = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert torch.equal(straight["rng"]["data"], resumed["rng"]["data"])
    assert csv_rows(run_dir / "metrics.csv") == csv_rows(norb_run / "metrics.csv")


@pytest.mark.e2e
def test_norb_lstm_rolls_out_past_the_18_azimuths(plain_root, norb_run):
    main.main(dataset_flags("norb", plain_root, norb_run, "--rollout_len", "20", lstm=True))
    columns = check_lstm_run(norb_run / "lstm", frames=2 + 20)
    assert "mse_step10" in columns  # clips are cyclic: 12 frames of ground truth exist
    probes = evaluate_lstm(norb_run)["probes"]
    assert {"category_from_content", "category_new_instances_from_content", "category_new_instances_from_pose",
            "category_new_instances_chance"} <= set(probes)
